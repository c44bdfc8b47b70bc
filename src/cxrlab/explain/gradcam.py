"""Grad-CAM and Grad-CAM++ through the ``grad-cam`` package (pytorch-grad-cam).

This wrapper adds what every cxrlab model needs: the target layer chosen from the backbone's
block partition (the last block's output; overridable by module name), gradients even where
the backbone is frozen (the input asks for them), correct targets for multi-class and
single-logit heads, hooks released and train/eval mode restored on exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget
from torch import nn

from cxrlab.core.errors import ConfigError

CamMethod = Literal["gradcam", "gradcam++"]
_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


def resolve_target_layer(model: nn.Module, layer: str | None = None) -> nn.Module:
    """The module Grad-CAM hooks: ``model.cam_layer()`` or the named module.

    Raises:
        ConfigError: no module of that name (the message lists a few candidates).
    """
    if layer is None:
        return model.cam_layer()
    modules = dict(model.named_modules())
    if layer not in modules:
        tail = [n for n in modules if n][-5:]
        raise ConfigError(f"cam layer: no module {layer!r}; last modules are {', '.join(tail)}")
    return modules[layer]


class GradCamExplainer:
    """Class-activation maps for a classifier; use as a context manager (hooks are removed on exit).

    Args:
        model: A :class:`cxrlab.models.CxrClassifier` (or any module with ``cam_layer()`` when
            ``layer`` is not given).
        method: ``gradcam`` or ``gradcam++``.
        layer: Module name to hook instead of the default (e.g. ``backbone.blocks.5``).

    Example:
        >>> with GradCamExplainer(model) as cam:  # doctest: +SKIP
        ...     maps, probs = cam.explain(x)
    """

    def __init__(self, model: nn.Module, method: CamMethod = "gradcam", layer: str | None = None) -> None:
        if method not in _METHODS:
            raise ConfigError(f"cam method: choose one of {sorted(_METHODS)}, got {method!r}")
        self.model, self.method = model, method
        self.target_layer = resolve_target_layer(model, layer)
        self._was_training = model.training
        self._cam = None

    def __enter__(self) -> GradCamExplainer:
        self._cam = _METHODS[self.method](model=self.model, target_layers=[self.target_layer])
        # the subclasses do not pass this on to BaseCAM; it makes gradients reach the target
        # layer when the blocks before it (or all of them) are frozen
        self._cam.compute_input_gradient = True
        return self

    def __exit__(self, *exc) -> None:
        if self._cam is not None:
            self._cam.activations_and_grads.release()
            self._cam = None
        self.model.zero_grad(set_to_none=True)
        self.model.train(self._was_training)

    def explain(self, x: torch.Tensor, target: int | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Maps and probabilities for a batch.

        Args:
            x: ``(B, C, H, W) float32`` normalised model input.
            target: Class index (or one per image) to explain; default: the predicted class.

        Returns:
            ``(maps (B, H, W) float32 in [0, 1], probabilities (B, num_classes))``.
        """
        if self._cam is None:
            raise ConfigError("GradCamExplainer: use it inside a 'with' block")
        with torch.no_grad():
            logits = self.model(x)
        single_logit = logits.shape[1] == 1
        probs = torch.sigmoid(logits) if single_logit else logits.softmax(1)
        if target is None:
            chosen = [int(p > 0.5) for p in probs[:, 0]] if single_logit else probs.argmax(1).tolist()
        else:
            chosen = [target] * len(x) if isinstance(target, int) else list(target)
        targets = [BinaryClassifierOutputTarget(c) if single_logit else ClassifierOutputTarget(c) for c in chosen]
        maps = self._cam(input_tensor=x, targets=targets)
        return maps.astype(np.float32), probs.detach().numpy()
