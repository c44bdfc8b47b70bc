"""``CxrClassifier``: a timm backbone split into blocks, a head, and a fine-tuning degree k."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from cxrlab.core.errors import ConfigError
from cxrlab.models.heads import ClassifierHead, HeadSpec
from cxrlab.models.outputs import to_probabilities
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


def _run_group(group: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in group:
        x = module(x)
    return x


class CxrClassifier(nn.Module):
    """Backbone (feature maps) + head, with the last ``fine_tune`` blocks trainable.

    Frozen blocks keep their BatchNorm layers in eval mode (running statistics fixed) even
    when the model is in training mode, as Keras does for frozen layers.

    With ``lung_attention`` (guided attention), the last block's feature maps are multiplied by
    the lung mask resized to their grid (the share of each cell inside the lungs), scaled so the
    weights average 1 per image: the head's global average pooling becomes an average over the
    lungs. The mask travels as a last input channel (``to_model_input(..., mask=)``), so every
    caller that runs ``model(x)`` (evaluation, Grad-CAM, the shortcut checks) works unchanged.

    Args:
        spec: Backbone metadata (partition, normalisation, input size).
        backbone: The timm model without its classifier.
        num_classes: Output classes.
        head: Head layout.
        class_names: Class names in output order (stored with checkpoints).
        lung_attention: Multiply the last feature maps by the lung mask (see above).

    Shapes:
        input ``(B, in_chans, H, W) float32`` normalised with ``spec.mean/std`` (``in_chans + 1``
        channels with lung attention, the last a 0/1 lung mask); output ``(B, num_classes)`` logits.
    """

    def __init__(self, spec: BackboneSpec, backbone: nn.Module, num_classes: int, head: HeadSpec,
                 class_names: tuple[str, ...] = (), lung_attention: bool = False, multilabel: bool = False) -> None:
        super().__init__()
        self.spec, self.head_spec, self.class_names = spec, head, tuple(class_names)
        self.lung_attention = lung_attention
        self.multilabel = multilabel  # independent findings (sigmoid per output) instead of one class of several
        self.backbone = backbone
        self.group_names = spec.partition(backbone)
        modules = dict(backbone.named_modules())
        self._groups = [[modules[n] for n in names] for names in self.group_names]  # not re-registered
        self.head = ClassifierHead(backbone.num_features, num_classes, head)
        self.freeze_batchnorm = False
        self.recompute = False  # gradient checkpointing of the trainable blocks (:meth:`forward_blocks`)
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

    def param_groups(self, lr: float, decay: float = 1.0) -> list[dict]:
        """Optimizer parameter groups with discriminative learning rates: the head at ``lr``, the last
        trainable block at ``lr * decay``, the one before it at ``lr * decay**2``, and so on (ULMFiT's
        and timm's layer-wise decay, over this model's own block partition, which timm's
        ``param_groups_layer_decay`` does not know). ``decay`` 1: one rate for everything."""
        groups = [{"params": [p for p in self.head.parameters() if p.requires_grad], "lr": lr}]
        for depth, group in enumerate(reversed(self._groups[self.num_blocks - self.fine_tune:]), start=1):
            params = [p for module in group for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr * decay**depth})
        return [g for g in groups if g["params"]]

    @property
    def frozen_blocks(self) -> int:
        """Number of leading frozen blocks."""
        return self.num_blocks - self.fine_tune

    def set_freeze_batchnorm(self, frozen: bool) -> CxrClassifier:
        """Keep every BatchNorm layer of the backbone in inference mode while training (running
        statistics stay the pretrained ones; the affine parameters of trainable blocks still learn)."""
        self.freeze_batchnorm = frozen
        return self.train(self.training)

    def train(self, mode: bool = True) -> CxrClassifier:
        super().train(mode)
        if mode:
            for group in self._groups[: self.frozen_blocks]:
                for module in group:
                    module.eval()
            if self.freeze_batchnorm:
                for module in self.backbone.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def forward_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run blocks ``start..end-1`` (sequential backbones only)."""
        if not self.spec.sequential:
            raise ConfigError(f"{self.spec.name}: its blocks do not run in sequence; use forward_features")
        recompute = self.recompute and self.training and torch.is_grad_enabled()
        for index, group in enumerate(self._groups[start:end], start=start):
            if recompute and index >= self.frozen_blocks:  # a trainable block
                # keep only the block's input; its inner activations are computed again in the backward
                # pass (measured: 4.3 -> 3.0 GB at batch 32, +30% step time, the same weights)
                x = torch.utils.checkpoint.checkpoint(_run_group, group, x, use_reentrant=False)
            else:
                x = _run_group(group, x)
        return x

    def split_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(image channels, lung mask (B, H, W) or None)`` of a model input: an input with one
        channel more than the backbone takes carries a lung mask last (any model accepts it; only a
        lung-attention model uses it).

        Raises:
            ConfigError: a lung-attention model got an input without the mask channel.
        """
        if x.shape[1] == self.spec.in_chans + 1:
            return x[:, :-1], x[:, -1]
        if self.lung_attention:
            raise ConfigError(f"this model uses lung attention: its input needs {self.spec.in_chans} image channels "
                              f"and a lung-mask channel, got {x.shape[1]} channel(s)")
        return x, None

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` feature map of the last block for image channels only."""
        return self.forward_blocks(image) if self.spec.sequential else self.backbone.forward_features(image)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` feature map of the last block (before any lung attention)."""
        return self.image_features(self.split_input(x)[0])

    def attend(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Features weighted by the lung mask on their grid (unchanged without lung attention or mask).

        An image whose mask covers no cell of the grid keeps its features unweighted.
        """
        if not self.lung_attention or mask is None:
            return features
        inside = F.interpolate(mask[:, None].to(features.dtype), size=features.shape[-2:], mode="area")
        mean = inside.mean(dim=(2, 3), keepdim=True)
        weights = torch.where(mean > 0, inside / mean.clamp_min(1e-6), torch.ones_like(inside))
        return features * weights

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` probabilities of these logits: softmax over classes, or a sigmoid per finding."""
        return to_probabilities(logits, self.multilabel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, mask = self.split_input(x)
        return self.head(self.attend(self.image_features(image), mask))

    def forward_from(self, activations: torch.Tensor, start: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from cached activations entering block ``start`` (frozen-prefix caching); ``mask``:
        the images' lung masks for a lung-attention model."""
        return self.head(self.attend(self.forward_blocks(activations, start), mask))

    def cam_layer(self, level: Literal["last", "fine"] = "last") -> nn.Module:
        """The module whose output a class-activation map uses.

        ``last``: the last block's last module (the usual Grad-CAM choice). ``fine``: the last
        block whose output grid is finer than the last block's (stride 16 instead of 32 for most
        backbones: 14×14 instead of 7×7 at 224 px), found by one forward pass at the native size.
        """
        if level == "last":
            return self._groups[-1][-1]
        if level != "fine":
            raise ConfigError(f"cam layer level: choose 'last' or 'fine', got {level!r}")
        if getattr(self, "_fine_group", None) is None:  # an int: a module attribute would be registered
            self._fine_group = self._find_fine_group()
        return self._groups[self._fine_group][-1]

    def cam_layers(self, level: Literal["last", "fine"] = "last") -> list[nn.Module]:
        """``[cam_layer(level)]``: the list an ensemble gives one per member."""
        return [self.cam_layer(level)]

    def _find_fine_group(self) -> int:
        sizes: dict[int, int] = {}

        def record(i: int):
            def hook(module, args, output) -> None:
                if isinstance(output, torch.Tensor) and output.dim() == 4:
                    sizes.setdefault(i, output.shape[-1])
            return hook

        hooks = [group[-1].register_forward_hook(record(i)) for i, group in enumerate(self._groups)]
        was_training = self.training
        try:
            self.eval()
            side = self.spec.input_size
            with torch.no_grad():
                self.image_features(torch.zeros(1, self.spec.in_chans, side, side, device=next(self.parameters()).device))
        finally:
            for hook in hooks:
                hook.remove()
            self.train(was_training)
        last = sizes.get(self.num_blocks - 1)
        finer = [i for i, size in sizes.items() if last is not None and size > last]
        return max(finer) if finer else self.num_blocks - 1

    def prefix_tensors(self, end: int) -> list[torch.Tensor]:
        """Weights and buffers of blocks ``0..end-1`` (what a cached prefix depends on)."""
        return [t for group in self._groups[:end] for module in group for t in module.state_dict().values()]

    def block_ending_with(self, module: nn.Module) -> int | None:
        """Index of the block whose last module is ``module`` (``None``: no block ends with it)."""
        return next((i for i, group in enumerate(self._groups) if group[-1] is module), None)

    def count_parameters(self, trainable_only: bool = False) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
