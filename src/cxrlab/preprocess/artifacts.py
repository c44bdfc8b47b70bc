"""Burned-in text, side markers, arrows and thin frames: find them and paint them out.

One paper removed these by hand in an image editor because models learned from them. Here a
white top-hat (bright structures narrower than a structuring element of ~1/25 of the image side)
finds small, high-contrast components printed near white; those inside the lungs (when a lung mask is given)
or away from the image's outer band (when none is) are kept as anatomy, the rest are artifacts.
Thin uniform bands along the edges (frames, scanner borders) are added. OpenCV's Telea
inpainting fills what was found from its surroundings.

No library does this for radiographs; the detector is hand-written and its limits are tested on
phantoms with planted text (it finds small bright marks; dark text and large labels are missed).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CONTRAST = 45  # top-hat height (grey levels) of a mark against its surroundings
MAX_AREA = 0.01  # a mark covers at most this share of the image
BRIGHT_PERCENTILE = 97.0  # a mark's upper-quartile grey level reaches the image's top 3% (or 80% of its maximum)
EDGE_BAND = 0.2  # without a lung mask, marks are looked for within this share of each edge
MAX_FRAME = 0.05  # uniform bands up to this share of the side count as a frame


@dataclass(frozen=True)
class ArtifactResult:
    """What :func:`remove_artifacts` did: the cleaned pixels and the mask of what it painted out."""

    pixels: np.ndarray
    mask: np.ndarray

    @property
    def touched(self) -> int:
        """Pixels painted out."""
        return int(self.mask.sum())


def _odd(n: int) -> int:
    return n if n % 2 else n + 1


def _frame(pixels: np.ndarray) -> np.ndarray:
    """Uniform rows/columns along each edge (95% of their pixels within 3 grey levels of their
    median; corners may belong to the crossing band), up to :data:`MAX_FRAME` of the side."""
    h, w = pixels.shape
    out = np.zeros_like(pixels, bool)
    for axis, length in ((0, h), (1, w)):
        limit = max(1, int(length * MAX_FRAME))
        lines = pixels.astype(np.int16) if axis == 0 else pixels.T.astype(np.int16)
        uniform = (np.abs(lines - np.median(lines, axis=1, keepdims=True)) <= 3).mean(axis=1) >= 0.95
        for start, step in ((0, 1), (length - 1, -1)):
            n = 0
            while n < limit and uniform[start + step * n]:
                n += 1
            if n:
                index = slice(0, n) if step == 1 else slice(length - n, length)
                if axis == 0:
                    out[index, :] = True
                else:
                    out[:, index] = True
    return out


def detect_artifacts(pixels: np.ndarray, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """``(H, W) bool`` mask of burned-in marks and frames in a ``(H, W) uint8`` radiograph.

    Args:
        pixels: The image.
        lung_mask: Lungs (same shape); marks overlapping them (dilated by 2% of the side) are
            kept as anatomy. Without one, only marks within the outer :data:`EDGE_BAND` of the
            image are taken (where labels and markers sit).
    """
    h, w = pixels.shape
    side = min(h, w)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (_odd(max(3, side // 40)),) * 2)
    tophat = cv2.morphologyEx(pixels, cv2.MORPH_TOPHAT, kernel)
    candidates = (tophat >= CONTRAST).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    if lung_mask is not None:
        grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(max(3, side // 50)),) * 2)
        protected = cv2.dilate(np.asarray(lung_mask, np.uint8), grow) > 0
    else:
        band = int(side * EDGE_BAND)
        protected = np.zeros_like(pixels, bool)
        protected[band:h - band, band:w - band] = True
    bright = max(float(np.percentile(pixels, BRIGHT_PERCENTILE)), 0.8 * float(pixels.max()))
    marks = np.zeros_like(pixels, bool)
    for i in range(1, count):
        area = stats[i, cv2.CC_STAT_AREA]
        if area > MAX_AREA * h * w or area < 3:
            continue
        component = labels == i
        # burned-in marks are printed near white; bone and skin edges are rarely the brightest pixels
        if np.percentile(pixels[component], 75) >= bright and not (component & protected).any():
            marks |= component
    return marks | _frame(pixels)


def remove_artifacts(pixels: np.ndarray, lung_mask: np.ndarray | None = None) -> ArtifactResult:
    """Detect marks (:func:`detect_artifacts`) and inpaint them (OpenCV Telea, 3-px radius); the
    mask is dilated by one pixel so anti-aliased edges go too."""
    found = detect_artifacts(pixels, lung_mask)
    if not found.any():
        return ArtifactResult(pixels, found)
    grown = cv2.dilate(found.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return ArtifactResult(cv2.inpaint(pixels, grown.astype(np.uint8), 3, cv2.INPAINT_TELEA), grown)


def plot_artifact_sample(frame, touched: dict[str, int], config, out_png, limit: int = 6):
    """The ``limit`` images with the most pixels painted out: as decoded with what was found in red,
    and after inpainting. ``None`` when nothing was touched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    from cxrlab.core.io import absolute_path
    from cxrlab.data.images import read_image, read_mask

    by_image = {str(absolute_path(p)): n for p, n in touched.items()}
    rows = [r for r in frame.itertuples() if str(absolute_path(r.image)) in by_image]
    rows = sorted(rows, key=lambda r: -by_image[str(absolute_path(r.image))])[:limit]
    if not rows:
        return None
    fig, axes = plt.subplots(2, len(rows), figsize=(2.6 * len(rows), 5.4), squeeze=False)
    for j, row in enumerate(rows):
        pixels = read_image(row.image, max_pixels=config.max_pixels).pixels
        mask_path = getattr(row, "mask", "") or ""
        lungs = read_mask(mask_path, pixels.shape) if mask_path else None
        result = remove_artifacts(pixels, lungs)
        marked = np.repeat(pixels[..., None], 3, axis=2)
        marked[result.mask] = (255, 0, 0)
        axes[0][j].imshow(marked)
        axes[0][j].set_title(f"{Path(row.image).name[:24]}\n{result.touched:,} px", fontsize=7)
        axes[1][j].imshow(result.pixels, cmap="gray", vmin=0, vmax=255)
        for axis in (axes[0][j], axes[1][j]):
            axis.axis("off")
    fig.suptitle("found (red, top) and painted out (bottom)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
