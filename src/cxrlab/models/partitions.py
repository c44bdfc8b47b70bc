"""Block partitions: each backbone family's ordered groups of top-level timm modules.

Fine-tuning degree k unfreezes the last k groups (issue 3: VGG's 5 conv blocks, ResNet's stem +
4 stages, DenseNet's stem + 4 dense blocks with their transitions, EfficientNet/MobileNet's
stem + 7 stages, Inception/Xception's module groups). For the "sequential" families, running the
groups' modules in order is exactly timm's ``forward_features`` (checked by a contract test);
that lets the frozen prefix be computed once and cached.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Partition = Callable[[nn.Module], list[list[str]]]


def vgg_groups(model: nn.Module) -> list[list[str]]:
    """VGG: the five conv blocks of ``features``, each ending at its max-pool."""
    groups, current = [], []
    for name, module in model.features.named_children():
        current.append(f"features.{name}")
        if isinstance(module, nn.MaxPool2d):
            groups.append(current)
            current = []
    if current:
        groups[-1].extend(current)
    return groups


def resnet_groups(model: nn.Module) -> list[list[str]]:
    """ResNet (v1): stem, then layer1..layer4."""
    return [["conv1", "bn1", "act1", "maxpool"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


def resnetv2_groups(model: nn.Module) -> list[list[str]]:
    """ResNet v2 (pre-activation): stem, then the four stages (the last with the final norm)."""
    return [["stem"], ["stages.0"], ["stages.1"], ["stages.2"], ["stages.3", "norm"]]


def densenet_groups(model: nn.Module) -> list[list[str]]:
    """DenseNet: stem, then each dense block with its transition (the last with norm5)."""
    names = [n for n, _ in model.features.named_children()]
    stem = [f"features.{n}" for n in names if not n.startswith(("denseblock", "transition", "norm5"))]
    groups = [stem]
    for n in names:
        if n.startswith("denseblock"):
            groups.append([f"features.{n}"])
        elif n.startswith(("transition", "norm5")):
            groups[-1].append(f"features.{n}")
    return groups


def efficientnet_groups(model: nn.Module) -> list[list[str]]:
    """EfficientNet / MobileNet-V2: stem, then each of the block stages (the last with the head conv)."""
    groups = [["conv_stem", "bn1"]] + [[f"blocks.{i}"] for i in range(len(model.blocks))]
    groups[-1] += ["conv_head", "bn2"]
    return groups


def inception_v3_groups(model: nn.Module) -> list[list[str]]:
    """Inception-V3: stem convolutions, Mixed_5 (35x35), Mixed_6 (17x17), Mixed_7 (8x8)."""
    return [["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Pool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Pool2"],
            ["Mixed_5b", "Mixed_5c", "Mixed_5d"],
            ["Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
            ["Mixed_7a", "Mixed_7b", "Mixed_7c"]]


def inception_resnet_v2_groups(model: nn.Module) -> list[list[str]]:
    """Inception-ResNet-V2: stem, block35 group, block17 group, block8 group with the final conv."""
    return [["conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a"],
            ["mixed_5b", "repeat"], ["mixed_6a", "repeat_1"], ["mixed_7a", "repeat_2", "block8", "conv2d_7b"]]


def xception_groups(model: nn.Module) -> list[list[str]]:
    """Xception: stem, entry flow (blocks 1-3), middle flow (4-11), exit flow (12 and the last convs)."""
    return [["conv1", "bn1", "act1", "conv2", "bn2", "act2"],
            [f"block{i}" for i in range(1, 4)], [f"block{i}" for i in range(4, 12)],
            ["block12", "conv3", "bn3", "act3", "conv4", "bn4", "act4"]]


def nasnet_groups(model: nn.Module) -> list[list[str]]:
    """NASNet-A Large: stem cells, then the three cell stacks split at the reduction cells."""
    return [["conv0", "cell_stem_0", "cell_stem_1"], [f"cell_{i}" for i in range(6)],
            ["reduction_cell_0"] + [f"cell_{i}" for i in range(6, 12)],
            ["reduction_cell_1"] + [f"cell_{i}" for i in range(12, 18)] + ["act"]]
