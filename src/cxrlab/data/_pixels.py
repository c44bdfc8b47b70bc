"""Pixel-depth helpers shared by the image and DICOM decoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlab.core.errors import InvalidImageError


def scale_to_uint8(arr: np.ndarray, path: str | Path = "<pixels>") -> np.ndarray:
    """Min-max scale any numeric array to ``uint8`` [0, 255] (constant arrays → zeros).

    Raises:
        InvalidImageError: NaN or infinite values (naming ``path``): a min-max over them is meaningless.
    """
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InvalidImageError(path, f"{bad} pixel(s) are NaN or infinite (a float image with undefined values)")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
