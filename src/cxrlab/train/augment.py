"""Training augmentation on ``(H, W) uint8`` images with its own seeded generator."""

from __future__ import annotations

import cv2
import numpy as np

from cxrlab.train.config import AugmentConfig


class Augmenter:
    """Rotation (±``rotation`` degrees), random resized crop, shift (±``translate`` of the side) and
    horizontal flip, then brightness, contrast and gamma changes of the grey levels (what varies
    between X-ray exposures and scanners).

    The generator is the augmenter's own (seeded), so the same seed gives the same
    augmented images without touching global random state. Takes ``(H, W)`` or ``(H, W, C)``
    arrays: channels (an image and its lung mask) move together; the grey-level changes touch the
    first channel (the image) only.
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
        shift = self.rng.uniform(-cfg.translate, cfg.translate, 2) * (w, h) if cfg.translate else (0.0, 0.0)
        if angle or cfg.translate:
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            matrix[:, 2] += shift
            out = cv2.warpAffine(out, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if cfg.hflip and self.rng.random() < 0.5:
            out = out[:, ::-1]
        out = np.ascontiguousarray(out)
        if cfg.brightness or cfg.contrast or cfg.gamma:
            image = out if out.ndim == 2 else out[..., 0]
            changed = self._grey_levels(image.astype(np.float32))
            if out.ndim == 2:
                out = changed
            else:
                out = out.copy()
                out[..., 0] = changed
        return out

    def _grey_levels(self, image: np.ndarray) -> np.ndarray:
        """``(H, W) float32`` in [0, 255] → ``uint8``: contrast around the mean, brightness, then gamma."""
        cfg = self.config
        if cfg.contrast:
            mean = float(image.mean())
            image = (image - mean) * self.rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
        if cfg.brightness:
            image = image + self.rng.uniform(-cfg.brightness, cfg.brightness) * 255
        image = np.clip(image, 0, 255)
        if cfg.gamma:
            image = 255 * (image / 255) ** np.exp(self.rng.uniform(-cfg.gamma, cfg.gamma))
        return np.rint(image).astype(np.uint8)
