"""Grad-CAM maps on each image's original geometry beside a mask read at the same size: the
shared loop of the in-lung and on-lesion evidence measures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from cxrlab.core.errors import InvalidImageError
from cxrlab.data.boxes import read_region
from cxrlab.data.images import read_mask
from cxrlab.explain.gradcam import CamMethod, GradCamExplainer
from cxrlab.explain.overlay import cam_to_original
from cxrlab.models.classifier import CxrClassifier
from cxrlab.preprocess import PreprocessConfig, Preprocessor

log = logging.getLogger(__name__)
MAX_SIDE = 512  # maps and masks are compared at up to this many pixels on the original geometry


def rows_with(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of ``frame`` whose ``column`` names a file (empty or missing column: none)."""
    values = frame.get(column, pd.Series("", index=frame.index)).fillna("").astype(str)
    return frame[values != ""]


def maps_with_masks(model: CxrClassifier, preprocess: PreprocessConfig, rows: pd.DataFrame, column: str,
                    target: Callable[[object], int], method: CamMethod = "gradcam",
                    layer: str | None = None) -> Iterator[tuple[object, np.ndarray, np.ndarray, np.ndarray]]:
    """For each row: ``(row, map, mask, region)``, the map of class ``target(row)``, the mask in
    ``row.<column>`` and the region the model sees (``bool``: the whole image, or a lung-cropping
    model's crop box, outside which its map is 0 by construction), all ``(h, w)`` on the original
    image's geometry (scaled to at most :data:`MAX_SIDE`).

    Rows whose image or mask cannot be read are skipped with a warning naming the file.
    """
    pre = Preprocessor(preprocess)
    with GradCamExplainer(model, method, layer=layer) as cam:
        for row in rows.itertuples():
            lung_path = str(getattr(row, "mask", "") or "")  # a lung-cropping model crops to it
            try:
                processed = pre(row.image, lung_path or None)
                scale = min(1.0, MAX_SIDE / max(processed.orig_height, processed.orig_width))
                shape = (max(1, round(processed.orig_height * scale)), max(1, round(processed.orig_width * scale)))
                mask = read_region(getattr(row, column), (processed.orig_height, processed.orig_width), shape)
                lungs = read_mask(lung_path, shape) if preprocess.lung_crop and lung_path else None
            except InvalidImageError as err:
                log.warning("%s evidence: %s", column, err)
                continue
            heatmap, _ = cam.explain_image(processed.pixels, target(row), processed.mask)
            region = cam_to_original(np.ones_like(heatmap, dtype=np.float32), shape, preprocess, lungs) > 0.5
            yield row, cam_to_original(heatmap, shape, preprocess, lungs), mask, region
