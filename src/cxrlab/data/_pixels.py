"""Pixel-depth helpers shared by the image and DICOM decoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlab.core.errors import InvalidImageError

# the window of a >8-bit image leaves out its 0.01% darkest and brightest pixels, and at least 4 at
# each end, so that a few extreme pixels (one saturated pixel, a float sentinel such as 3e38) cannot
# squeeze the radiograph into a handful of grey levels; they are clipped to black or white
CLIPPED_SHARE = 1e-4
MIN_CLIPPED = 4
_SAMPLE = 1 << 22  # pixels the window is estimated from (a strided sample of larger images)


def scale_to_uint8(arr: np.ndarray, path: str | Path = "<pixels>") -> np.ndarray:
    """Window any numeric array robustly to ``uint8`` [0, 255]: from its ``k``-th smallest to its ``k``-th
    largest value, ``k`` = max(0.01% of the pixels, 4) (:data:`CLIPPED_SHARE`, :data:`MIN_CLIPPED`);
    a constant array → zeros; when the two coincide (a nearly blank image), its minimum and maximum.
    Computed in float64, so values near the float32 limits do not overflow.

    Raises:
        InvalidImageError: NaN or infinite values (naming ``path``): a window over them is meaningless.
    """
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InvalidImageError(path, f"{bad} pixel(s) are NaN or infinite (a float image with undefined values)")
    flat = arr.ravel()
    sample = flat[:: max(1, flat.size // _SAMPLE)]
    lo = hi = 0.0
    if sample.size:
        k = min(max(MIN_CLIPPED, int(sample.size * CLIPPED_SHARE)), (sample.size - 1) // 2)
        ordered = np.partition(sample, (k, sample.size - 1 - k))
        lo, hi = float(ordered[k]), float(ordered[sample.size - 1 - k])
    if hi <= lo:
        lo, hi = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((np.clip(arr, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
