"""Lung masks: image/mask pairs for segmentation, clean-up of predicted masks, overlap measures."""

from __future__ import annotations

import logging
from collections.abc import Callable

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from cxrlab.core.errors import ConfigError, InvalidImageError
from cxrlab.data.images import read_mask
from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.preprocess.pipeline import Preprocessor

log = logging.getLogger(__name__)


def image_mask_pairs(frame: pd.DataFrame, preprocess: PreprocessConfig,
                     progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, list]:
    """Preprocess every row's image and its lung mask (``mask`` column) to ``(size, size)``.

    The image goes through the model's preprocessing; the mask is resized the same way (nearest),
    so pixel (i, j) of both shows the same place.

    Returns:
        ``(images (N, S, S) uint8, masks (N, S, S) bool, rows kept, skipped [(image, reason)])``.

    Raises:
        ConfigError: the preprocessing changes geometry in a way a mask cannot follow (lung crop,
            letterbox).
    """
    if preprocess.lung_crop or preprocess.resize != "stretch":
        raise ConfigError("segmentation needs preprocessing without lung crop and with resize 'stretch'")
    pre, size = Preprocessor(preprocess), preprocess.size
    images, masks, kept, skipped = [], [], [], []
    for i, row in enumerate(frame.itertuples()):
        try:
            processed = pre(row.image)
            mask = read_mask(row.mask, (processed.orig_height, processed.orig_width))
        except InvalidImageError as err:
            skipped.append((str(row.image), err.reason))
            log.warning("segmentation data: %s", err)
            continue
        images.append(processed.pixels)
        masks.append(cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0)
        kept.append(i)
        if progress:
            progress(1)
    if not images:
        return (np.zeros((0, size, size), np.uint8), np.zeros((0, size, size), bool), frame.iloc[[]], skipped)
    return np.stack(images), np.stack(masks), frame.iloc[kept].reset_index(drop=True), skipped


def clean_lung_mask(mask: np.ndarray, keep: int = 2) -> np.ndarray:
    """Keep the ``keep`` largest connected components (the two lungs) and fill their holes.

    Components smaller than a tenth of the largest are dropped too (specks next to one lung).
    """
    mask = np.asarray(mask, bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1][:keep]
    chosen = [i + 1 for i in order if areas[i] >= 0.1 * areas[order[0]]]
    return ndimage.binary_fill_holes(np.isin(labels, chosen))


def dice_iou(predicted: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks (both empty: 1.0, 1.0)."""
    predicted, target = np.asarray(predicted, bool), np.asarray(target, bool)
    inter = float(np.logical_and(predicted, target).sum())
    total = float(predicted.sum() + target.sum())
    union = total - inter
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / union
