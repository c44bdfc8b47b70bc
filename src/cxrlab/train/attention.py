"""A differentiable Grad-CAM and the attention loss built on it (guided attention, GAIN-style).

Hand-written because the explanation library (pytorch-grad-cam) detaches its gradients: here
the map stays in the autograd graph (``create_graph=True``), so a loss on *where* the evidence
lies trains the network, as in Li et al.'s guided attention inference network (GAIN). Total
loss = classification loss + α · :func:`attention_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrlab.models.classifier import CxrClassifier

EPS = 1e-6


def differentiable_gradcam(features: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of class ``target`` on ``features``, kept in the graph.

    Args:
        features: ``(B, C, h, w)`` feature maps the logits were computed from.
        logits: ``(B, K)``.
        target: ``(B,)`` class index per image.

    Returns:
        ``(B, h, w)``: ReLU of the channel sum of the features weighted by the spatial mean of the
        target score's gradient (Selvaraju et al.), not normalised.
    """
    score = logits.gather(1, target[:, None].long()).sum()
    grads = torch.autograd.grad(score, features, create_graph=True)[0]
    return F.relu((grads.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1))


def attention_loss(cam: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean share of each map's evidence outside the lungs.

    Args:
        cam: ``(B, h, w)`` non-negative maps.
        masks: ``(B, H, W)`` lung masks (0/1), any size: each map cell takes the share of its
            area inside the lungs.

    Returns:
        A scalar in [0, 1]: 0 when every map lies inside the lungs (an all-zero map counts as 0).
    """
    inside = F.interpolate(masks[:, None].float(), size=cam.shape[-2:], mode="area")[:, 0]
    outside = (cam * (1 - inside)).sum(dim=(1, 2))
    return (outside / (cam.sum(dim=(1, 2)) + EPS)).mean()


def guided_forward(model: CxrClassifier, x: torch.Tensor, target: torch.Tensor,
                   masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving the logits and the attention loss of the true class's Grad-CAM
    on the last block's features (before the lung attention of a model that has it)."""
    features = model.forward_features(x)
    logits = model.head(model.attend(features, masks))
    return logits, attention_loss(differentiable_gradcam(features, logits, target), masks)
