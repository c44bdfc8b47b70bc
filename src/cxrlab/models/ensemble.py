"""A fold ensemble: models of one architecture and class list whose probabilities are averaged.

Cross-validated training (``cxrlab train --folds K``) leaves K models, each trained on a different
part of a small data set; their mean probability is steadier than any one of them and is what a
single ``model.pt`` then holds. The ensemble answers the inference side of
:class:`~cxrlab.models.classifier.CxrClassifier`, so ``evaluate``, ``explain``, ``predict``,
``serve`` and ``export --onnx`` take it unchanged:

* ``forward`` returns the logits of the mean probability (its log for classes, its logit per
  finding for a multi-label model), so the model's probabilities of them are the mean;
* ``cam_layers`` lists every member's target layer: Grad-CAM (pytorch-grad-cam) averages the
  members' maps for the ensemble's output;
* ``image_features`` concatenates the members' feature maps (channel after channel), so the
  out-of-distribution reference is fitted on what every member sees;
* ``tta="crops"`` averages each member over the views of :mod:`cxrlab.models.tta` as well (off by
  default: on cxr-real it lowered the out-of-fold COVID-19 AUC slightly); Grad-CAM explains the
  plain view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from cxrlab.core.errors import ConfigError
from cxrlab.models.classifier import CxrClassifier
from cxrlab.models.outputs import to_logits, to_probabilities
from cxrlab.models.tta import TTA_MODES, TtaMode, mean_probabilities


class EnsembleClassifier(nn.Module):
    """The mean of the members' class probabilities.

    Args:
        members: Two or more classifiers with the same backbone, classes and lung attention (one, with
            ``tta``: a single model averaged over its views, as a fold's out-of-fold side is predicted).
        tta: Test-time views each member's probabilities are averaged over (``none`` or ``crops``).

    Raises:
        ConfigError: fewer than two members, members that differ in backbone, classes or inputs, or
            an unknown ``tta``.
    """

    def __init__(self, members: Sequence[CxrClassifier], tta: TtaMode = "none") -> None:
        super().__init__()
        if tta not in TTA_MODES:
            raise ConfigError(f"ensemble: tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self.tta = tta
        if len(members) < (1 if tta != "none" else 2):  # one member with views: a model averaged over its views
            raise ConfigError(f"ensemble: needs at least 2 members (or 1 with test-time views), got {len(members)}")
        first = members[0]
        for i, m in enumerate(members[1:], start=1):
            if (m.spec.name, m.class_names, m.lung_attention, m.multilabel) != (
                    first.spec.name, first.class_names, first.lung_attention, first.multilabel):
                raise ConfigError(f"ensemble: member {i} ({m.spec.name}, {list(m.class_names)}) differs from member 0 "
                                  f"({first.spec.name}, {list(first.class_names)})")
        self.members = nn.ModuleList(members)

    # what the single model's users read
    @property
    def spec(self):
        return self.members[0].spec

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.members[0].class_names

    @property
    def lung_attention(self) -> bool:
        return self.members[0].lung_attention

    @property
    def multilabel(self) -> bool:
        return self.members[0].multilabel

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities of :meth:`forward`'s logits: the members' mean."""
        return to_probabilities(logits, self.multilabel)

    @property
    def head_spec(self):
        return self.members[0].head_spec

    @property
    def fine_tune(self) -> int:
        return self.members[0].fine_tune

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` logits of the members' mean probability (:meth:`probabilities` of them is the mean)."""
        probs = torch.stack([mean_probabilities(m, x, self.tta, self.multilabel) for m in self.members]).mean(0)
        return to_logits(probs, self.multilabel)

    def split_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.members[0].split_input(x)

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, M*C, h, w)``: the members' last-block feature maps, concatenated."""
        return torch.cat([m.image_features(image) for m in self.members], dim=1)

    def cam_layers(self, level: Literal["last", "fine"] = "last") -> list[nn.Module]:
        """Each member's class-activation layer at ``level``."""
        return [m.cam_layer(level) for m in self.members]

    def count_parameters(self, trainable_only: bool = False) -> int:
        return sum(m.count_parameters(trainable_only) for m in self.members)


def cam_layers(model: nn.Module, level: Literal["last", "fine"] = "last") -> list[nn.Module]:
    """The class-activation layers of a model: every member's for an ensemble, else ``[model.cam_layer(level)]``
    (any module with ``cam_layer`` will do)."""
    if hasattr(model, "cam_layers"):
        return model.cam_layers(level)
    return [model.cam_layer() if level == "last" else model.cam_layer(level)]


def named_layers(model: nn.Module, name: str) -> list[nn.Module]:
    """The module called ``name`` in a model (in each member of an ensemble, named as in a single model).

    Raises:
        ConfigError: no module of that name (the message lists a few candidates).
    """
    models = list(model.members) if isinstance(model, EnsembleClassifier) else [model]
    found = []
    for m in models:
        modules = dict(m.named_modules())
        if name not in modules:
            tail = [n for n in modules if n][-5:]
            raise ConfigError(f"cam layer: no module {name!r}; last modules are {', '.join(tail)}")
        found.append(modules[name])
    return found
