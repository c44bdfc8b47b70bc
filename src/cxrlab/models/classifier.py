"""``CxrClassifier``: a timm backbone split into blocks, a head, and a fine-tuning degree k."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cxrlab.core.errors import ConfigError
from cxrlab.models.heads import ClassifierHead, HeadSpec
from cxrlab.models.registry import BackboneSpec

FineTune = int | Literal["all"]


def check_fine_tune(fine_tune: FineTune, num_blocks: int, name: str) -> int:
    """Resolve ``"all"`` to ``num_blocks`` and validate an integer k.

    Raises:
        ConfigError: k outside 0..num_blocks (names the maximum).
    """
    if fine_tune == "all":
        return num_blocks
    if isinstance(fine_tune, bool) or not isinstance(fine_tune, int) or not 0 <= fine_tune <= num_blocks:
        raise ConfigError(f"fine_tune: {name} has {num_blocks} blocks; choose 0..{num_blocks} or 'all', got {fine_tune!r}")
    return fine_tune


class CxrClassifier(nn.Module):
    """Backbone (feature maps) + head, with the last ``fine_tune`` blocks trainable.

    Frozen blocks keep their BatchNorm layers in eval mode (running statistics fixed) even
    when the model is in training mode, as Keras does for frozen layers.

    Args:
        spec: Backbone metadata (partition, normalisation, input size).
        backbone: The timm model without its classifier.
        num_classes: Output classes.
        head: Head layout.
        class_names: Class names in output order (stored with checkpoints).

    Shapes:
        input ``(B, in_chans, H, W) float32`` normalised with ``spec.mean/std``;
        output ``(B, num_classes)`` logits.
    """

    def __init__(self, spec: BackboneSpec, backbone: nn.Module, num_classes: int, head: HeadSpec,
                 class_names: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.spec, self.head_spec, self.class_names = spec, head, tuple(class_names)
        self.backbone = backbone
        self.group_names = spec.partition(backbone)
        modules = dict(backbone.named_modules())
        self._groups = [[modules[n] for n in names] for names in self.group_names]  # not re-registered
        self.head = ClassifierHead(backbone.num_features, num_classes, head)
        self.fine_tune = self.num_blocks
        self.set_fine_tune("all")

    @property
    def num_blocks(self) -> int:
        """Number of blocks in the partition."""
        return len(self.group_names)

    def resolve_k(self, fine_tune: FineTune) -> int:
        """``"all"`` → number of blocks; validate an integer k (see :func:`check_fine_tune`)."""
        return check_fine_tune(fine_tune, self.num_blocks, self.spec.name)

    def set_fine_tune(self, fine_tune: FineTune) -> CxrClassifier:
        """Make exactly the last k blocks (and the head) trainable; freeze the rest."""
        k = self.resolve_k(fine_tune)
        self.fine_tune = k
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        for group in self._groups[self.num_blocks - k:]:
            for module in group:
                for p in module.parameters():
                    p.requires_grad_(True)
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.train(self.training)
        return self

    @property
    def frozen_blocks(self) -> int:
        """Number of leading frozen blocks."""
        return self.num_blocks - self.fine_tune

    def train(self, mode: bool = True) -> CxrClassifier:
        super().train(mode)
        if mode:
            for group in self._groups[: self.frozen_blocks]:
                for module in group:
                    module.eval()
        return self

    def forward_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run blocks ``start..end-1`` (sequential backbones only)."""
        if not self.spec.sequential:
            raise ConfigError(f"{self.spec.name}: its blocks do not run in sequence; use forward_features")
        for group in self._groups[start:end]:
            for module in group:
                x = module(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` feature map of the last block."""
        return self.forward_blocks(x) if self.spec.sequential else self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_from(self, activations: torch.Tensor, start: int) -> torch.Tensor:
        """Logits from cached activations entering block ``start`` (frozen-prefix caching)."""
        return self.head(self.forward_blocks(activations, start))

    def cam_layer(self) -> nn.Module:
        """The module whose output Grad-CAM uses by default: the last block's last module."""
        return self._groups[-1][-1]

    def count_parameters(self, trainable_only: bool = False) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
