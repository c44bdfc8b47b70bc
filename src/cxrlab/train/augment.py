"""Training augmentation on ``(H, W) uint8`` images with its own seeded generator."""

from __future__ import annotations

import cv2
import numpy as np

from cxrlab.train.config import AugmentConfig


class Augmenter:
    """Rotation (±``rotation`` degrees), random resized crop and horizontal flip.

    The generator is the augmenter's own (seeded), so the same seed gives the same
    augmented images without touching global random state. Takes ``(H, W)`` or ``(H, W, C)``
    arrays: channels (an image and its lung mask) move together.
    """

    def __init__(self, config: AugmentConfig, seed: int = 0) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        cfg = self.config
        angle = self.rng.uniform(-cfg.rotation, cfg.rotation) if cfg.rotation else 0.0
        scale = self.rng.uniform(*cfg.crop_scale)
        side_h, side_w = int(round(h * np.sqrt(scale))), int(round(w * np.sqrt(scale)))
        top = int(self.rng.integers(0, h - side_h + 1))
        left = int(self.rng.integers(0, w - side_w + 1))
        out = cv2.resize(image[top:top + side_h, left:left + side_w], (w, h), interpolation=cv2.INTER_LINEAR)
        if angle:
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            out = cv2.warpAffine(out, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if cfg.hflip and self.rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)
