"""Composable image transforms on ``(H, W) uint8`` arrays, each optionally carrying a lung mask.

OpenCV does the pixel work (its CLAHE is 10-20x faster than scikit-image's). Transforms are
registered by name so configs can list them; :class:`Compose` chains them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import cv2
import numpy as np

from cxrlab.core.errors import ConfigError

log = logging.getLogger(__name__)

Mask = np.ndarray | None
_TRANSFORMS: dict[str, type] = {}


def register_transform(cls: type) -> type:
    """Class decorator: make a transform creatable by its snake-case ``name``."""
    _TRANSFORMS[cls.name] = cls
    return cls


def list_transforms() -> list[str]:
    """Names of the registered transforms."""
    return sorted(_TRANSFORMS)


def create_transform(name: str, **options: object) -> Callable:
    """Instantiate a registered transform.

    Raises:
        ConfigError: unknown name (the message lists the valid ones).
    """
    try:
        return _TRANSFORMS[name](**options)
    except KeyError:
        raise ConfigError(f"transform: unknown name {name!r}; valid: {', '.join(list_transforms())}") from None


@register_transform
class Clahe:
    """Contrast-limited adaptive histogram equalisation (OpenCV)."""

    name = "clahe"

    def __init__(self, clip_limit: float = 2.0, tile_grid: int = 8) -> None:
        self.clip_limit = clip_limit
        self.tile_grid = tile_grid
        self._clahe = None

    def __getstate__(self) -> dict:  # OpenCV objects do not pickle; rebuild in each process
        return {**self.__dict__, "_clahe": None}

    def __call__(self, image: np.ndarray, mask: Mask = None) -> tuple[np.ndarray, Mask]:
        if self._clahe is None:
            self._clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile_grid, self.tile_grid))
        return self._clahe.apply(image), mask


@register_transform
class Equalize:
    """Global histogram equalisation (OpenCV)."""

    name = "equalize"

    def __call__(self, image: np.ndarray, mask: Mask = None) -> tuple[np.ndarray, Mask]:
        return cv2.equalizeHist(image), mask


@register_transform
class LungCrop:
    """Crop image and mask to the mask's bounding box plus a margin; no mask → unchanged."""

    name = "lung_crop"

    def __init__(self, margin: float = 0.05) -> None:
        self.margin = margin

    def box(self, mask: np.ndarray) -> tuple[int, int, int, int] | None:
        """``(y0, y1, x0, x1)`` of the crop on ``mask``'s grid, or ``None`` for an empty mask."""
        if not mask.any():
            return None
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        dy, dx = int((y1 - y0) * self.margin), int((x1 - x0) * self.margin)
        return max(0, y0 - dy), min(mask.shape[0], y1 + dy), max(0, x0 - dx), min(mask.shape[1], x1 + dx)

    def __call__(self, image: np.ndarray, mask: Mask = None) -> tuple[np.ndarray, Mask]:
        if mask is None or not mask.any():
            return image, mask
        if mask.shape != image.shape:
            mask = cv2.resize(mask.astype(np.uint8), image.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
        y0, y1, x0, x1 = self.box(mask)
        return image[y0:y1, x0:x1], mask[y0:y1, x0:x1]


@register_transform
class Resize:
    """Resize to ``size x size``: ``stretch``, or ``letterbox`` (keep aspect, pad black, centred)."""

    name = "resize"

    def __init__(self, size: int, mode: Literal["stretch", "letterbox"] = "stretch") -> None:
        self.size = size
        self.mode = mode

    def _resize(self, array: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
        h, w = shape
        if array.shape == (h, w):
            return array
        shrink = h < array.shape[0] and w < array.shape[1]
        interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return cv2.resize(array, (w, h), interpolation=interp)

    def __call__(self, image: np.ndarray, mask: Mask = None) -> tuple[np.ndarray, Mask]:
        if self.mode == "stretch":
            shape = (self.size, self.size)
            new_mask = None if mask is None else self._resize(mask.astype(np.uint8), shape, True) > 0
            return self._resize(image, shape, False), new_mask
        h, w = image.shape
        scale = self.size / max(h, w)
        shape = (max(1, round(h * scale)), max(1, round(w * scale)))
        top, left = (self.size - shape[0]) // 2, (self.size - shape[1]) // 2
        out = np.zeros((self.size, self.size), np.uint8)
        out[top:top + shape[0], left:left + shape[1]] = self._resize(image, shape, False)
        if mask is None:
            return out, None
        new_mask = np.zeros((self.size, self.size), bool)
        new_mask[top:top + shape[0], left:left + shape[1]] = self._resize(mask.astype(np.uint8), shape, True) > 0
        return out, new_mask


class Compose:
    """Apply transforms in order to ``(image, mask)``."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, mask: Mask = None) -> tuple[np.ndarray, Mask]:
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose([{', '.join(type(t).__name__ for t in self.transforms)}])"


def to_model_input(image: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   in_chans: int = 3, mask: np.ndarray | None = None) -> np.ndarray:
    """Scale to [0, 1], replicate to ``in_chans`` channels and normalise per channel.

    Args:
        image: ``(H, W) uint8``.
        mean: Per-channel mean (length ``in_chans`` or 1), e.g. ImageNet's.
        std: Per-channel standard deviation.
        in_chans: Output channels (3 for ImageNet backbones, 1 for grayscale models).
        mask: ``(H, W)`` lung mask, appended as a last 0/1 channel (the input of a model with
            lung attention, which splits it off again).

    Returns:
        ``(in_chans, H, W) float32``, ``(x / 255 - mean) / std`` (``in_chans + 1`` channels with a mask).
    """
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ConfigError(f"to_model_input: expected (H, W) uint8, got {image.shape} {image.dtype}")
    if len(mean) not in (1, in_chans) or len(std) not in (1, in_chans):
        raise ConfigError(f"to_model_input: mean/std need 1 or {in_chans} values, got {len(mean)} and {len(std)}")
    mean_a = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std_a = np.asarray(std, np.float32).reshape(-1, 1, 1)
    x = image.astype(np.float32)[None] * (1.0 / 255.0)
    x = (np.repeat(x, in_chans, axis=0) - mean_a) / std_a
    if mask is None:
        return x
    if mask.shape != image.shape:
        raise ConfigError(f"to_model_input: mask {mask.shape} does not match the image {image.shape}")
    return np.concatenate([x, (np.asarray(mask) > 0).astype(np.float32)[None]])
