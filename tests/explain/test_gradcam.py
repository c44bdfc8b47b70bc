from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.core import ConfigError
from cxrlab.explain import GradCamExplainer, cam_to_original, in_mask_share, overlay, peak_in_mask
from cxrlab.models import create_classifier, list_backbones
from cxrlab.preprocess import PreprocessConfig


class BrightnessNet(nn.Module):
    """Class 1's logit grows with the image's brightness: its Grad-CAM must follow the bright pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    def cam_layer(self) -> nn.Module:
        return self.conv

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_known_answer_on_a_hand_built_network():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 2:6, 9:13] = 1.0  # a bright square
    net = BrightnessNet()
    with GradCamExplainer(net) as cam:
        maps, probs = cam.explain(x, target=1)
    square = np.zeros((16, 16), bool)
    square[2:6, 9:13] = True
    assert maps.shape == (1, 16, 16) and probs[0, 1] > probs[0, 0]
    assert peak_in_mask(maps[0], square) and in_mask_share(maps[0], square) > 0.95
    with GradCamExplainer(net) as cam:
        against, _ = cam.explain(x, target=0)  # the other class's evidence is negative: ReLU'd away
    assert against.max() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_gives_a_map_and_releases_hooks(name):
    model = create_classifier(name, 3, pretrained="none", fine_tune=0, seed=0)  # frozen backbone on purpose
    model.train()
    x = torch.randn(2, model.spec.in_chans, 96, 96, generator=torch.Generator().manual_seed(0))
    explainer = GradCamExplainer(model, "gradcam++" if name.startswith("dense") else "gradcam")
    with explainer as cam:
        maps, probs = cam.explain(x)
    assert maps.shape == (2, 96, 96) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert not explainer.target_layers[0]._forward_hooks and not explainer.target_layers[0]._backward_hooks
    assert model.training and all(p.grad is None for p in model.parameters())


def test_layer_override_and_errors():
    model = create_classifier("resnet50", 3, pretrained="none", seed=0)
    with GradCamExplainer(model, layer="backbone.layer3") as cam:
        maps, _ = cam.explain(torch.randn(1, 3, 64, 64))
    assert maps.shape == (1, 64, 64)
    with pytest.raises(ConfigError, match="no module"):
        GradCamExplainer(model, layer="backbone.layer9")
    with pytest.raises(ConfigError, match="cam method"):
        GradCamExplainer(model, method="scorecam")


def test_overlay_and_letterbox_mapping():
    cam = np.zeros((32, 32), np.float32)
    cam[8:24, :] = 1.0  # letterboxed content of a wide 50 x 100 image occupies rows 8..23
    back = cam_to_original(cam, (50, 100), PreprocessConfig(size=32, resize="letterbox"))
    assert back.shape == (50, 100) and back.min() > 0.9
    rgb = overlay(np.full((50, 100), 128, np.uint8), back)
    assert rgb.shape == (50, 100, 3) and rgb.dtype == np.uint8


def test_single_logit_head_explains_the_positive_class():
    net = BrightnessNet()
    net.fc = nn.Linear(1, 1)
    with torch.no_grad():
        net.fc.weight.fill_(1.0)
        net.fc.bias.fill_(-0.05)
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 4:8, 4:8] = 1.0
    with GradCamExplainer(net) as cam:
        maps, probs = cam.explain(x)
    square = np.zeros((16, 16), bool)
    square[4:8, 4:8] = True
    assert probs.shape == (1, 1) and probs[0, 0] > 0.5 and in_mask_share(maps[0], square) > 0.95
    assert all(p.requires_grad for p in net.parameters())  # flags restored after the block


def test_first_layer_filter_figure_states_the_change(tmp_path):
    from cxrlab.explain import first_conv, plot_first_layer_filters

    before = create_classifier("resnet50", 3, pretrained="none", seed=0)
    after = create_classifier("resnet50", 3, pretrained="none", seed=0)
    with torch.no_grad():
        first_conv(after).weight.add_(0.01)
    path = plot_first_layer_filters(after, before, tmp_path / "f.png")
    assert path.stat().st_size > 5_000 and first_conv(after) is after.backbone.conv1


@pytest.mark.parametrize("name", list_backbones())
def test_fine_layer_has_a_finer_grid_and_is_not_registered(name):
    model = create_classifier(name, 3, pretrained="none", fine_tune=0, seed=0)
    keys = list(model.state_dict())
    sizes = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, level=level: sizes.__setitem__(level, out.shape[-1]))
             for level, m in (("last", model.cam_layer()), ("fine", model.cam_layer("fine")))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, model.spec.in_chans, 224, 224))
    for hook in hooks:
        hook.remove()
    assert sizes["fine"] > sizes["last"]
    assert list(model.state_dict()) == keys  # the cached choice is not a submodule


@pytest.mark.parametrize("method", ["hirescam", "layercam"])
def test_other_methods_at_the_fine_layer(method):
    model = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune=2, seed=0).eval()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with GradCamExplainer(model, method, layer="fine") as cam:
        maps, probs = cam.explain(x, target=1)
    assert maps.shape == (1, 128, 128) and maps.max() > 0 and np.allclose(probs.sum(), 1, atol=1e-5)
    with pytest.raises(ConfigError, match="'last' or 'fine'"):
        model.cam_layer("middle")  # type: ignore[arg-type]


@pytest.mark.slow
def test_compiled_prefix_gives_the_same_maps():
    model = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune=2, seed=0).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with GradCamExplainer(model, "hirescam", "fine") as cam:
        eager, eager_probs = cam.explain(x, target=0)
    explainer = GradCamExplainer(model, "hirescam", "fine", compile=True)
    with explainer as cam:
        compiled, probs = cam.explain(x, target=0)
    assert np.allclose(probs, eager_probs, atol=1e-4) and np.abs(compiled - eager).max() < 0.01
    assert not explainer._split.anchor._forward_hooks and all(p.grad is None for p in model.parameters())


def test_compiled_prefix_needs_a_block_end():
    model = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune=2, seed=0)
    with pytest.raises(ConfigError, match="end of a block"):
        GradCamExplainer(model, layer="backbone.blocks.4.0", compile=True)
