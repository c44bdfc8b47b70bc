"""Pixel-depth helpers shared by the image and DICOM decoders."""

from __future__ import annotations

import numpy as np


def scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric array to ``uint8`` [0, 255] (constant arrays → zeros)."""
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
