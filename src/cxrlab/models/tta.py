"""Test-time augmentation: class probabilities averaged over a few views of each input.

``crops``: the image itself and five crops of 90% of its side (four corners and the centre), each
resized back; small shifts and zooms of the kind training augmentation uses, and no flip (a
radiograph's left and right are not interchangeable). A lung-mask channel is cropped with the image.
Plain tensor operations, so an exported ONNX graph carries the views too.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from cxrlab.models.outputs import to_probabilities

TtaMode = Literal["none", "crops"]
TTA_MODES: tuple[str, ...] = ("none", "crops")
CROP = 0.9


def tta_views(x: torch.Tensor, mode: TtaMode) -> torch.Tensor:
    """``(V, B, C, H, W)``: the views of a batch (``none``: the batch itself, V = 1; ``crops``: V = 6)."""
    if mode == "none":
        return x.unsqueeze(0)
    height, width = x.shape[-2:]
    h, w = round(CROP * height), round(CROP * width)
    offsets = [(0, 0), (height - h, 0), (0, width - w), (height - h, width - w), ((height - h) // 2, (width - w) // 2)]
    views = [x] + [F.interpolate(x[..., i:i + h, j:j + w], size=(height, width), mode="bilinear", align_corners=False)
                   for i, j in offsets]
    return torch.stack(views)


def mean_probabilities(logits_of, x: torch.Tensor, mode: TtaMode, multilabel: bool = False) -> torch.Tensor:
    """``(B, num_classes)``: the mean over ``mode``'s views of the probabilities of ``logits_of(view)``
    (softmax, or a sigmoid per finding), the views run as one batch."""
    views = tta_views(x, mode)
    count, batch = views.shape[:2]
    probs = to_probabilities(logits_of(views.flatten(0, 1)).float(), multilabel)
    return probs.unflatten(0, (count, batch)).mean(0)
