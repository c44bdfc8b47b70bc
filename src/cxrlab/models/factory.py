"""``create_classifier``: registry name → ready ``CxrClassifier`` with weights and fine-tuning degree."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import timm
import torch
from torch import nn

from cxrlab.models.classifier import CxrClassifier, FineTune
from cxrlab.models.heads import HeadSpec, get_head_spec
from cxrlab.models.registry import BackboneSpec, get_backbone_spec
from cxrlab.models.weights import load_pretrained

Pretrained = Literal["imagenet", "none"]


def create_backbone(spec: BackboneSpec) -> nn.Module:
    """The timm model of ``spec`` without classifier or pooling (random init)."""
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, global_pool="", in_chans=spec.in_chans)
    for name in spec.drop_modules:
        setattr(model, name, nn.Identity())
    if spec.bn_eps is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = spec.bn_eps
    return model


def create_classifier(name: str, num_classes: int, *, head: str | HeadSpec = "gap-128-64",
                      pretrained: Pretrained = "imagenet", weights: str | Path | None = None,
                      allow_download: bool = False, fine_tune: FineTune = "all",
                      class_names: tuple[str, ...] = (), seed: int | None = None,
                      lung_attention: bool = False, multilabel: bool = False) -> CxrClassifier:
    """Build a classifier from the registry.

    Args:
        name: Registered backbone name (``cxrlab backbones`` lists them).
        num_classes: Output classes.
        head: Head preset name or spec.
        pretrained: ``imagenet`` (offline package, ``weights`` or download) or ``none``.
        weights: Checkpoint file or folder for the backbone (also for ``pretrained="none"``).
        allow_download: Let timm download weights when no offline source exists.
        fine_tune: Trainable trailing blocks k (0: head only) or ``"all"``.
        class_names: Stored on the model for checkpoints and reports.
        seed: Seed for the randomly initialised parts (head, and backbone without weights);
            the global RNG state is restored afterwards.
        lung_attention: Multiply the last feature maps by the lung mask (guided attention; the
            input then carries the mask as a last channel).
        multilabel: Outputs are independent findings (a sigmoid each), not one class of several.

    Raises:
        ConfigError: unknown backbone, head or k. WeightsUnavailableError: no weights offline.

    Example:
        >>> model = create_classifier("efficientnet_lite0", 3, fine_tune=2)  # doctest: +SKIP
    """
    spec = get_backbone_spec(name)
    head_spec = get_head_spec(head)
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        backbone = create_backbone(spec)
        model = CxrClassifier(spec, backbone, num_classes, head_spec, class_names, lung_attention, multilabel)
    model.weights_origin = "random"
    if pretrained == "imagenet" or weights is not None:
        model.weights_origin = load_pretrained(backbone, spec, weights, allow_download)
    model.set_fine_tune(fine_tune)
    return model
