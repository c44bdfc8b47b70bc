"""Training augmentation on ``(H, W) uint8`` images (and their lung masks), on torchvision.transforms.v2.

Random draws come from torch's generator: in the main process the run's seed (``train`` seeds
torch), in a DataLoader worker the seed PyTorch gives each worker (the loader's seeded generator
plus the worker id, drawn anew each epoch). So every epoch and every worker draws its own
augmentations, and the same seed replays the same run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cxrlab.train.config import AugmentConfig


class RandomGamma(v2.Transform):
    """A gamma of ``exp(U(-gamma, gamma))`` on images; masks pass through (torchvision has
    ``adjust_gamma`` but no random transform around it)."""

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.gamma = gamma

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": math.exp(float(torch.empty(1).uniform_(-self.gamma, self.gamma)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return inpt if isinstance(inpt, tv_tensors.Mask) else TF.adjust_gamma(inpt, params["gamma"])


class Augmenter:
    """Random resized crop (area share ``crop_scale``, the image's aspect ratio), rotation
    (±``rotation`` degrees) and shift (±``translate`` of the side), horizontal flip, then
    brightness (a factor 1 ± ``brightness``), contrast around the mean (1 ± ``contrast``) and gamma
    (``exp(±gamma)``) of the grey levels: what varies between X-ray exposures and scanners.

    Takes ``(H, W)`` or ``(H, W, 2)`` arrays: in the second, image and lung mask (0/255) move together
    (the mask with nearest-neighbour interpolation) and the grey-level changes touch the image only.
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        self._pipelines: dict[tuple[int, int], v2.Compose] = {}

    def _pipeline(self, h: int, w: int) -> v2.Compose:
        cfg = self.config
        steps: list[v2.Transform] = []
        if tuple(cfg.crop_scale) != (1.0, 1.0):
            steps.append(v2.RandomResizedCrop((h, w), scale=tuple(cfg.crop_scale), ratio=(w / h, w / h)))
        if cfg.rotation or cfg.translate:
            steps.append(v2.RandomAffine(degrees=cfg.rotation, translate=(cfg.translate, cfg.translate),
                                         interpolation=v2.InterpolationMode.BILINEAR))  # masks: nearest regardless
        if cfg.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if cfg.brightness or cfg.contrast:
            steps.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None))
        if cfg.gamma:
            steps.append(RandomGamma(cfg.gamma))
        return v2.Compose(steps)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if (h, w) not in self._pipelines:
            self._pipelines[h, w] = self._pipeline(h, w)
        pipeline = self._pipelines[h, w]
        if image.ndim == 2:
            return pipeline(tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image))[None]))[0].numpy()
        moved, mask = pipeline(tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image[..., 0]))[None]),
                               tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(image[..., 1]))[None]))
        return np.dstack([moved[0].numpy(), mask[0].numpy()])
