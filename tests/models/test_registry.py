"""Contract tests over every registered backbone (random init, small inputs, offline)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrlab.core import ConfigError
from cxrlab.models import create_classifier, get_backbone_spec, list_backbones

PAPERS = {"vgg16", "vgg19", "resnet50", "resnet50v2", "resnet152v2", "densenet121", "densenet201", "inception_v3",
          "inception_resnet_v2", "xception", "mobilenetv2", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
          "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_lite0", "efficientnet_lite1",
          "efficientnet_lite2", "nasnetalarge"}
EXPECTED_BLOCKS = {"vgg": 5, "resnet": 5, "densenet": 5, "efficientnet": 8, "mobilenet": 8, "inception": 4,
                   "xception": 4, "nasnet": 4}


def test_registry_has_the_papers_backbones():
    assert PAPERS <= set(list_backbones())
    with pytest.raises(ConfigError, match="valid: densenet121"):
        get_backbone_spec("alexnet")


@pytest.fixture(scope="module", params=list_backbones())
def model(request):
    return create_classifier(request.param, 3, pretrained="none", seed=0)


def _group_params(model, groups):
    return sum(p.numel() for g in groups for m in g for p in m.parameters())


def test_block_partition_and_exact_trainable_counts(model):
    family = next(f for f in EXPECTED_BLOCKS if model.spec.name.startswith(f))
    assert model.num_blocks == EXPECTED_BLOCKS[family]
    covered = {id(p) for g in model._groups for m in g for p in m.parameters()}
    assert covered == {id(p) for p in model.backbone.parameters()}  # every weight belongs to one block
    head = sum(p.numel() for p in model.head.parameters())
    counts = []
    for k in range(model.num_blocks + 1):
        model.set_fine_tune(k)
        counts.append(model.count_parameters(trainable_only=True))
        assert counts[-1] == head + _group_params(model, model._groups[model.num_blocks - k:])
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # grows strictly with k
    model.set_fine_tune("all")
    assert model.count_parameters(True) == model.count_parameters()
    with pytest.raises(ConfigError, match=f"choose 0..{model.num_blocks}"):
        model.set_fine_tune(model.num_blocks + 1)


def test_forward_backward_frozen_bn_and_cam_layer(model):
    model.set_fine_tune(1)
    model.train()
    frozen_bn = [m for g in model._groups[:-1] for mod in g for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(m.training for m in frozen_bn)  # VGG has none; every other family has some
    assert bool(frozen_bn) == (not model.spec.name.startswith("vgg"))
    before = [m.running_mean.clone() for m in frozen_bn[:3]]
    x = torch.randn(2, model.spec.in_chans, 96, 96)
    logits = model(x)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen_bn[:3]))  # stats untouched
    assert isinstance(model.cam_layer(), nn.Module)
    model.zero_grad(set_to_none=True)
    every_bn = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.set_freeze_batchnorm(True)  # Keras-style: inference-mode BatchNorm in the trainable blocks too
    assert not any(m.training for m in every_bn) and model.head.training
    trainable = model.count_parameters(trainable_only=True)
    model.set_freeze_batchnorm(False)
    assert model.count_parameters(trainable_only=True) == trainable  # scale and shift still learn
    assert all(m.training for g in model._groups[-1:] for mod in g for m in mod.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_sequential_blocks_equal_timm_forward_features(model):
    if not model.spec.sequential:
        pytest.skip(f"{model.spec.name}: blocks are not sequential (no prefix caching)")
    model.eval()
    x = torch.randn(1, model.spec.in_chans, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model.forward_blocks(x), model.backbone.forward_features(x), atol=1e-5)
        middle = model.forward_blocks(x, 0, 2)
        assert torch.allclose(model.forward_from(middle, 2), model(x), atol=1e-5)
