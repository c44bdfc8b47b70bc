"""Guided attention: the differentiable Grad-CAM matches the explanation library's, the attention
loss measures evidence outside the lungs, and its gradient reaches the network."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrlab.models import create_classifier
from cxrlab.train.attention import attention_loss, differentiable_gradcam, guided_forward


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


def test_the_attention_loss_gradient_reaches_the_backbone_and_moves_evidence(model):
    torch.manual_seed(1)
    net = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune="all")
    net.train()
    x, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    masks = torch.zeros(4, 64, 64)
    masks[:, :, :32] = 1.0  # "lungs": the left half
    logits, loss = guided_forward(net, x, target, masks)
    assert logits.shape == (4, 3) and 0 < loss.item() < 1
    loss.backward()
    last_block = [p for n, p in net.named_parameters() if n.startswith("backbone.blocks.6")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in last_block)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    before = loss.item()
    for _ in range(15):  # the attention loss alone, minimised, pulls the evidence into the mask
        optimizer.zero_grad()
        _, loss = guided_forward(net, x, target, masks)
        loss.backward()
        optimizer.step()
    assert loss.item() < before
