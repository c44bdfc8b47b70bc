"""Grad-CAM, Grad-CAM++, HiResCAM and LayerCAM through the ``grad-cam`` package (pytorch-grad-cam).

This wrapper adds what every cxrlab model needs: the target layer chosen from the backbone's
block partition (the last block's output, or ``fine``: the last block with a finer grid;
overridable by module name), gradients even where
the backbone is frozen (the target layer's output asks for them), correct targets for multi-class and
single-logit heads, a backward pass through the head only, hooks released and train/eval
mode and ``requires_grad`` flags restored on exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget
from torch import nn

from cxrlab.core.errors import ConfigError
from cxrlab.core.device import current_policy
from cxrlab.models.ensemble import cam_layers, named_layers
from cxrlab.models.inference import FrozenPrefix
from cxrlab.preprocess.transforms import to_model_input

CamMethod = Literal["gradcam", "gradcam++", "hirescam", "layercam"]
_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "layercam": LayerCAM}
LAYER_LEVELS = ("last", "fine")


def resolve_target_layers(model: nn.Module, layer: str | None = None) -> list[nn.Module]:
    """The modules Grad-CAM hooks: ``model.cam_layer()`` (``None`` or ``last``), ``model.cam_layer("fine")``,
    or the named module; one per member of an ensemble (the library averages their maps).

    Raises:
        ConfigError: no module of that name (the message lists a few candidates).
    """
    if layer is None or layer in LAYER_LEVELS:
        return cam_layers(model, layer or "last")  # type: ignore[arg-type]
    return named_layers(model, layer)


def _require_grad(module: nn.Module, inputs, output):
    if isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.detach().requires_grad_(True)
    return None


class _SplitClassifier(nn.Module):
    """The classifier as (compiled, gradient-free prefix up to the target layer) → anchor → eager rest.

    The anchor (an identity) stands in for the target layer, so the library's hooks see the same
    activations while the prefix runs without autograd.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module) -> None:
        super().__init__()
        end = model.block_ending_with(target_layer) if hasattr(model, "block_ending_with") else None
        if end is None or not model.spec.sequential:
            raise ConfigError("cam compile: needs a backbone whose blocks run in sequence and a target layer at the "
                              "end of a block (layer 'last' or 'fine')")
        self.model, self.start = model, end + 1
        self.prefix = FrozenPrefix(model, self.start)
        self.anchor = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, mask = self.model.split_input(x)
        return self.model.forward_from(self.anchor(self.prefix(image)), self.start, mask)


class GradCamExplainer:
    """Class-activation maps for a classifier; use as a context manager (hooks are removed on exit).

    Args:
        model: A :class:`cxrlab.models.CxrClassifier` (or any module with ``cam_layer()`` when
            ``layer`` is not given).
        method: ``gradcam``, ``gradcam++``, ``hirescam`` (gradient × activation without Grad-CAM's
            spatial averaging of gradients) or ``layercam`` (positive gradients × activations).
        layer: ``last`` (default: the last block), ``fine`` (the last block with a finer grid), or a
            module name (e.g. ``backbone.blocks.4``). On the phantoms, ``layercam`` at ``fine`` put
            its peak on the planted opacity in 90-97% of images where ``gradcam`` at ``last`` managed
            13-38% (bench/bench_phantom_evidence.py).
        compile: Run the blocks up to the target layer through a compiled, gradient-free
            :class:`cxrlab.models.inference.FrozenPrefix` (sequential backbones, target layer at a
            block's end: ``last`` or ``fine``). Compiling costs 20-40 s once and then roughly halves
            the time per image: for a server or a long batch, not for one image.

    Example:
        >>> with GradCamExplainer(model) as cam:  # doctest: +SKIP
        ...     maps, probs = cam.explain(x)
    """

    def __init__(self, model: nn.Module, method: CamMethod = "gradcam", layer: str | None = None,
                 compile: bool = False) -> None:
        if method not in _METHODS:
            raise ConfigError(f"cam method: choose one of {sorted(_METHODS)}, got {method!r}")
        model = model.to(current_policy().device)  # the command's device (the CPU unless it set another)
        self.device = next(model.parameters()).device
        self.model, self.method = model, method
        self.target_layers = resolve_target_layers(model, layer)
        if compile and len(self.target_layers) > 1:
            raise ConfigError("cam compile: needs a single model, not an ensemble")
        self._was_training = model.training
        self._cam = None
        self._single_logit: bool | None = None
        self._split = _SplitClassifier(model, self.target_layers[0]) if compile else None
        self._activations: dict[int, torch.Tensor] = {}

    def __enter__(self) -> GradCamExplainer:
        # Gradients are needed only from the target layer onwards: freeze every weight for the
        # duration and let the target layer's output ask for gradients, so the backward pass
        # covers the head alone (measured: 85 ms -> ~20 ms per image for EfficientNet-Lite0).
        self._grad_flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self._grad_flags:
            p.requires_grad_(False)
        model, targets = (self._split, [self._split.anchor]) if self._split else (self.model, self.target_layers)
        self._hooks = [target.register_forward_hook(self._capture(i))  # before the library's hooks
                       for i, target in enumerate(targets)]
        self._cam = _METHODS[self.method](model=model, target_layers=targets)
        return self

    def _capture(self, index: int):
        def hook(module: nn.Module, inputs, output):
            if isinstance(output, torch.Tensor):
                self._activations[index] = output.detach()
            return _require_grad(module, inputs, output)
        return hook

    def pooled_activations(self) -> np.ndarray:
        """``(B, C)`` target-layer activations of the last call, averaged over space (an ensemble's
        members' side by side): with the default layer, the pooled features a
        :class:`cxrlab.models.ood.FeatureDistance` scores."""
        if not self._activations:
            raise ConfigError("GradCamExplainer: no activations yet; call explain first")
        pooled = [self._activations[i].float().mean(dim=(2, 3)) for i in sorted(self._activations)]
        return torch.cat(pooled, dim=1).cpu().numpy()

    def __exit__(self, *exc) -> None:
        if self._cam is not None:
            self._cam.activations_and_grads.release()
            self._cam = None
        for hook in self._hooks:
            hook.remove()
        for p, flag in self._grad_flags:
            p.requires_grad_(flag)
            p.grad = None
        self.model.train(self._was_training)

    def explain_image(self, pixels: np.ndarray, target: int | None = None,
                      mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`explain` for one preprocessed ``(H, W) uint8`` image, normalised as the model expects.

        Args:
            pixels: The preprocessed image.
            target: Class to explain (default: the predicted one).
            mask: Its lung mask on the same grid (required by, and only used for, a lung-attention model).

        Returns:
            ``(map (H, W) float32 in [0, 1], probabilities (num_classes,))``.
        """
        spec = self.model.spec
        needs_mask = getattr(self.model, "lung_attention", False)
        if needs_mask and mask is None:
            raise ConfigError("this model uses lung attention: explaining an image needs its lung mask")
        x = torch.from_numpy(to_model_input(pixels, spec.mean, spec.std, spec.in_chans,
                                            mask if needs_mask else None))[None]
        maps, probs = self.explain(x, target)
        return maps[0], probs[0]

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
        x = x.to(self.device)
        if self._single_logit is None:
            with torch.no_grad():
                self._single_logit = self.model(x[:1]).shape[1] == 1
        if target is None:
            targets = None  # the library explains each image's top-scoring output
        else:
            chosen = [target] * len(x) if isinstance(target, int) else list(target)
            targets = [BinaryClassifierOutputTarget(c) if self._single_logit else ClassifierOutputTarget(c)
                       for c in chosen]
        if self._single_logit and targets is None:
            with torch.no_grad():
                targets = [BinaryClassifierOutputTarget(int(v > 0)) for v in self.model(x)[:, 0]]
        tta, averaged = getattr(self.model, "tta", "none"), None
        if tta != "none":  # the probabilities are the model's own, averaged over its views ...
            with torch.no_grad():
                averaged = self.model(x)
            if targets is None:  # ... and the map explains the class they choose
                targets = [ClassifierOutputTarget(int(c)) for c in averaged.argmax(1)]
        self._set_tta("none")  # the map explains the plain view (and the hooks keep its activations, last)
        try:
            maps = self._cam(input_tensor=x, targets=targets)
        finally:
            self._set_tta(tta)
        # without views: the forward pass Grad-CAM just made, no second one
        logits = (averaged if averaged is not None else self._cam.outputs.detach()).float().cpu()
        if self._single_logit:
            probs = torch.sigmoid(logits)
        else:  # the model's own meaning of its outputs (classes or independent findings)
            probs = self.model.probabilities(logits) if hasattr(self.model, "probabilities") else logits.softmax(1)
        return maps.astype(np.float32), probs.numpy()

    def _set_tta(self, mode: str) -> None:
        if hasattr(self.model, "tta"):
            self.model.tta = mode
