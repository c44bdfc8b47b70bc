"""Finding regions given as boxes (RSNA Pneumonia's opacities, VinDr-CXR's findings) rather than
mask files: written in a manifest's ``lesion`` column as ``boxes:x,y,w,h;x,y,w,h`` in the image's
own pixels, and drawn as a mask at whatever size a check reads it (the pointing game)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cxrlab.core.errors import InvalidImageError
from cxrlab.data.images import read_mask

PREFIX = "boxes:"


def format_boxes(boxes: Iterable[tuple[float, float, float, float]]) -> str:
    """``boxes:x,y,w,h;...`` of ``(x, y, width, height)`` boxes in the image's pixels; ``""`` for none."""
    parts = [",".join(f"{float(v):g}" for v in box) for box in boxes]
    return PREFIX + ";".join(parts) if parts else ""


def is_boxes(value: object) -> bool:
    """Whether a ``lesion`` value holds boxes rather than a mask file's path."""
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_boxes(value: str) -> list[tuple[float, float, float, float]]:
    """The boxes of a ``boxes:`` value.

    Raises:
        InvalidImageError: text that is not four finite numbers per box with positive sides.
    """
    boxes = []
    for part in value.removeprefix(PREFIX).split(";"):
        try:
            box = tuple(float(v) for v in part.split(","))
        except ValueError:
            box = ()
        if len(box) != 4 or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
            raise InvalidImageError(value[:60], f"bad box {part!r}: expected x,y,width,height with positive sides")
        boxes.append(box)
    return boxes


def boxes_mask(value: str, original: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """The ``(H, W) bool`` mask of a ``boxes:`` value drawn at ``shape``, the boxes being in the pixels
    of an image of ``original`` ``(height, width)``."""
    mask = np.zeros(shape, dtype=bool)
    sy, sx = shape[0] / original[0], shape[1] / original[1]
    for x, y, w, h in parse_boxes(value):
        top, left = max(0, int(np.floor(y * sy))), max(0, int(np.floor(x * sx)))
        bottom, right = min(shape[0], int(np.ceil((y + h) * sy))), min(shape[1], int(np.ceil((x + w) * sx)))
        mask[top:bottom, left:right] = True
    return mask


def read_region(value: str, original: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A ``mask`` or ``lesion`` value as an ``(H, W) bool`` mask at ``shape``: a mask file read and
    resized, or boxes drawn (``original``: the image's own ``(height, width)``).

    Raises:
        InvalidImageError: an unreadable mask file or malformed boxes.
    """
    return boxes_mask(value, original, shape) if is_boxes(value) else read_mask(value, shape)
