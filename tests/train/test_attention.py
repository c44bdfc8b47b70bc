"""Guided attention: the differentiable Grad-CAM matches the explanation library's, the attention
loss measures evidence outside the lungs, its gradient reaches the network, and the lung-attention
model option trains (cached or not), saves and loads."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrlab.core import ConfigError
from cxrlab.models import create_classifier, load_model
from cxrlab.preprocess import ShardReader
from cxrlab.train import build_config, train
from cxrlab.train.attention import attention_loss, differentiable_gradcam, gain_loss
from cxrlab.train.module import ClassifierModule


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_classifier("efficientnet_lite0", 3, pretrained="none").eval()


def test_differentiable_gradcam_equals_the_libraries(model):
    x = torch.randn(2, 3, 96, 96)
    target = torch.tensor([0, 2])
    features = model.forward_features(x)
    ours = differentiable_gradcam(features, model.head(features), target).detach().numpy()
    with GradCAM(model=model, target_layers=[model.cam_layer("last")]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    for mine, reference in zip(ours, theirs, strict=True):  # the library min-max scales and resizes; agree within 0.5%
        scaled = (mine - mine.min()) / (mine.max() - mine.min() + 1e-7)
        np.testing.assert_allclose(cv2.resize(scaled, (96, 96)), reference, atol=5e-3)


def test_attention_loss_is_the_share_of_evidence_outside_the_lungs():
    masks = torch.zeros(1, 64, 64)
    masks[:, 16:48, 8:56] = 1.0  # lungs cover grid cells 2..5 × 1..6 of an 8 × 8 map
    inside = torch.zeros(1, 8, 8)
    inside[:, 3:5, 2:6] = 1.0
    assert attention_loss(inside, masks).item() == pytest.approx(0.0, abs=1e-6)
    outside = torch.zeros(1, 8, 8)
    outside[:, 0, :] = 1.0  # top row: above the lungs
    assert attention_loss(outside, masks).item() == pytest.approx(1.0, abs=1e-5)
    half = inside + outside * (inside.sum() / outside.sum())
    assert attention_loss(half, masks).item() == pytest.approx(0.5, abs=1e-5)
    assert attention_loss(torch.zeros(1, 8, 8), masks).item() == 0.0  # no evidence: nothing to penalise


def test_the_training_step_s_attention_term_reaches_the_backbone_and_moves_evidence():
    """The training step itself (ClassifierModule._step, mask as the input's last channel): its loss is
    cross-entropy + alpha x the outside share of the true class's Grad-CAM, and minimising that term
    alone pulls the evidence into the mask."""
    torch.manual_seed(1)
    net = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune="all")
    net.train()
    x, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    masks = torch.zeros(4, 64, 64)
    masks[:, :, :32] = 1.0  # "lungs": the left half
    config = build_config({"data": "x.csv", "attention_loss": 2.0})
    module = ClassifierModule(net, config.optim, config.schedule, 0.05, 1)
    batch = (torch.cat([x, masks[:, None]], 1), target)

    def attention_term() -> tuple[torch.Tensor, torch.Tensor]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*self.log.*")  # no trainer here to log to
            logits, loss, _ = module._step(batch, "train")
        return logits, (loss - F.cross_entropy(logits, target, weight=module.class_weights)) / 2.0

    torch.manual_seed(5)
    logits, term = attention_term()
    torch.manual_seed(5)  # the same dropout draws as the step's
    features = net.image_features(x)
    by_hand = attention_loss(differentiable_gradcam(features, net.head(net.attend(features, masks)), target), masks)
    assert logits.shape == (4, 3) and 0 < term.item() < 1
    assert term.item() == pytest.approx(by_hand.item(), rel=1e-4)
    term.backward()
    last_block = [p for n, p in net.named_parameters() if n.startswith("backbone.blocks.6")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in last_block)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    before = term.item()
    for _ in range(15):  # the attention term alone, minimised, pulls the evidence into the mask
        optimizer.zero_grad()
        _, term = attention_term()
        term.backward()
        optimizer.step()
    assert term.item() < before


def test_gain_mines_the_erased_image_and_matches_the_map_to_the_lungs():
    torch.manual_seed(2)
    net = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune="all").eval()  # no dropout draws
    x, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    masks = torch.zeros(4, 64, 64)
    masks[:, :, :32] = 1.0
    features = net.forward_features(x)
    logits = net.head(features)
    loss = gain_loss(net, x, features, logits, target, masks)
    # by hand: the score of the true class on the image with the normalised map's region soft-erased,
    # plus the mean squared difference between that map and the lung mask on the map's grid
    cam = differentiable_gradcam(features, logits, target)
    cam = cam / (cam.flatten(1).max(1).values[:, None, None] + 1e-6)
    soft = torch.sigmoid(10 * (torch.nn.functional.interpolate(cam[:, None], size=(64, 64), mode="bilinear") - 0.5))
    mined = net(x - soft * x).softmax(1).gather(1, target[:, None]).mean()
    lungs = torch.nn.functional.interpolate(masks[:, None], size=cam.shape[-2:], mode="area")[:, 0]
    assert loss.item() == pytest.approx((mined + ((cam - lungs) ** 2).mean()).item(), rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters()
               if n.startswith("backbone.blocks.6"))


def test_a_gain_run_trains_on_images_and_logs_both_terms(tmp_path, phantoms):
    result = train(_guided_config(tmp_path, phantoms, "gain", lung_attention=False, fine_tune=1,
                                  attention_form="gain", epochs=1))
    assert not result.summary["prefix_cache"]  # mining re-runs the whole network on the erased images
    metrics = pd.read_csv(result.out / "metrics.csv")
    assert metrics["train_attention"].between(0, 2).all() and metrics["val_attention"].between(0, 1).all()


def test_lung_attention_weights_the_feature_maps_by_the_mask():
    torch.manual_seed(2)
    net = create_classifier("efficientnet_lite0", 3, pretrained="none", lung_attention=True).eval()
    image, mask = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64)
    mask[0, :, :32] = 1.0  # left half
    x = torch.cat([image, mask[:, None]], dim=1)
    features = net.image_features(image)
    attended = net.attend(features, mask)
    assert torch.all(attended[0, :, :, 1:] == 0)  # a 2 × 2 grid: the right column lies outside the lungs
    torch.testing.assert_close(attended[0].mean(dim=(1, 2)), features[0, :, :, :1].mean(dim=(1, 2)))  # lung average
    torch.testing.assert_close(attended[1], features[1])  # an empty mask leaves the maps alone
    torch.testing.assert_close(net(x), net.head(attended))
    with pytest.raises(ConfigError, match="lung-mask channel"):
        net(image)
    plain = create_classifier("efficientnet_lite0", 3, pretrained="none").eval()
    torch.testing.assert_close(plain(x), plain(image))  # other models ignore a mask channel


def _guided_config(tmp_path, phantoms, name, **extra):
    values = {"data": str(phantoms), "out": str(tmp_path / name), "size": 64, "epochs": 2, "batch_size": 8,
              "ratios": (0.6, 0.2, 0.2), "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
              "lung_attention": True, "attention_loss": 1.0, **extra}
    return build_config(values)


def test_guided_training_is_the_same_with_and_without_the_prefix_cache(tmp_path, phantoms):
    # The two paths compute the frozen prefix in different batches, so oneDNN rounds them differently
    # (which kernels depends on the processor and the thread count). Adam turns a rounding difference in
    # a near-zero gradient into an update of up to lr (4e-3 apart after two epochs with one thread);
    # SGD keeps it at rounding size (~1e-7 here, with the head moving ~1e-3), so the comparison tests the
    # mechanism, not the kernels.
    # the papers' recipe (plateau, no warm-up or decay): the tolerance below was measured with it
    cached = train(_guided_config(tmp_path, phantoms, "cached", recipe="papers", optimizer="sgd"))
    plain = train(_guided_config(tmp_path, phantoms, "uncached", recipe="papers", cache_prefix=False, optimizer="sgd"))
    assert cached.summary["prefix_cache"] and not plain.summary["prefix_cache"]
    metrics = pd.read_csv(cached.out / "metrics.csv")
    assert metrics["val_attention"].between(0, 1).all() and metrics["train_attention"].between(0, 1).all()
    for a, b in zip(cached.model.state_dict().values(), plain.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    initial = create_classifier("efficientnet_lite0", 3, seed=0, class_names=cached.model.class_names,
                                lung_attention=True, fine_tune=2).state_dict()["head.fc.weight"]
    assert (cached.model.head.fc.weight - initial).abs().max() > 1e-4  # it did train: far beyond the tolerance
    model, preprocess, payload = load_model(cached.out / "model.pt")
    assert model.lung_attention and payload["lung_attention"] and preprocess.keep_mask
    assert ShardReader(cached.out / "prepared").has_masks


def test_attention_loss_alone_keeps_a_mask_free_model_and_augments_masks_with_images(tmp_path, phantoms):
    result = train(_guided_config(tmp_path, phantoms, "loss-only", lung_attention=False, fine_tune=1,
                                  augment={"enabled": True}))
    assert not result.summary["prefix_cache"]
    model, preprocess, _ = load_model(result.out / "model.pt")
    assert not model.lung_attention and not preprocess.keep_mask  # predicting needs no masks


def test_augmentation_moves_image_and_mask_together(tmp_path, phantoms):
    from cxrlab.data import load_source
    from cxrlab.preprocess import PreprocessConfig, ShardDataset, prepare
    from cxrlab.preprocess.transforms import to_model_input
    from cxrlab.train.augment import Augmenter
    from cxrlab.train.config import AugmentConfig

    manifest = load_source(phantoms)
    prepare(manifest, tmp_path / "prep", PreprocessConfig(size=64, keep_mask=True), workers=1)
    settings = AugmentConfig(enabled=True, rotation=30, crop_scale=(0.6, 0.8))
    moved = ShardDataset(tmp_path / "prep", manifest.class_names, transform=Augmenter(settings), with_masks=True)
    torch.manual_seed(3)
    x, _ = moved[0]
    assert x.shape == (4, 64, 64) and set(torch.unique(x[-1]).tolist()) <= {0.0, 1.0}
    reader = moved.reader
    torch.manual_seed(3)
    image = Augmenter(settings)(reader.image(0))  # the same draws, image alone ...
    torch.manual_seed(3)
    blank = np.zeros_like(reader.image(0))  # ... and the mask beside a blank image
    mask = Augmenter(settings)(np.dstack([blank, reader.mask(0) * np.uint8(255)]))[..., 1] > 127
    assert not np.array_equal(mask, reader.mask(0) > 0)  # the augmentation did move things
    np.testing.assert_allclose(x[:3].numpy(), to_model_input(image, moved.mean, moved.std, 3), atol=1e-6)
    assert np.array_equal(x[-1].numpy().astype(bool), mask)  # the same draws moved it, nearest-neighbour
