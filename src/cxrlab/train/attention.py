"""A differentiable Grad-CAM and two attention losses built on it (``attention_form``).

Hand-written because the explanation library (pytorch-grad-cam) detaches its gradients: here
the map stays in the autograd graph (``create_graph=True``), so a loss on *where* the evidence
lies trains the network. Total loss = classification loss + α · the attention term, one of:

- ``outside_share`` (cxrlab's own variant, the default): the share of the true class's Grad-CAM
  outside the lung mask (:func:`attention_loss`). It is not GAIN: it only moves the map.
- ``gain``: the guided attention inference network of Li et al. (CVPR 2018) with external
  supervision, as the guided-attention CXR paper used it (:func:`gain_loss`): *attention mining*
  — the true class's score on the image with its attended region soft-masked out, which the
  network learns to make small, so the map must cover all the evidence — plus the squared error
  between the normalised map and the lung mask.
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


GAIN_SIGMA, GAIN_OMEGA = 0.5, 10.0  # the soft mask T(A) = sigmoid(omega (A - sigma)), as in Li et al.


def gain_loss(model: CxrClassifier, image: torch.Tensor, features: torch.Tensor, logits: torch.Tensor,
              target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """GAIN's attention-mining term plus its external-supervision term, both in [0, 1].

    Args:
        model: The classifier (a second forward pass runs on the masked images).
        image: ``(B, C, H, W)`` model inputs the features came from (without the mask channel).
        features, logits, target: As :func:`differentiable_gradcam`.
        masks: ``(B, H, W)`` lung masks (0/1).

    Returns:
        ``mean softmax score of the true class on I - T(A) * I`` + ``mean (A - lung mask)^2`` with A
        the Grad-CAM normalised to [0, 1] per image.
    """
    cam = differentiable_gradcam(features, logits, target)
    cam = cam / (cam.flatten(1).max(dim=1).values[:, None, None] + EPS)
    up = F.interpolate(cam[:, None], size=image.shape[-2:], mode="bilinear", align_corners=False)
    erased = image - torch.sigmoid(GAIN_OMEGA * (up - GAIN_SIGMA)) * image
    mined = model.head(model.attend(model.image_features(erased), masks)).float().softmax(1)
    mining = mined.gather(1, target[:, None].long()).mean()
    lungs = F.interpolate(masks[:, None].float(), size=cam.shape[-2:], mode="area")[:, 0]
    return mining + ((cam - lungs) ** 2).mean()
