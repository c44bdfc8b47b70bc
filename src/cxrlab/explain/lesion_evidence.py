"""Does the heatmap fall on the finding? The pointing game on images with lesion masks
(the synthetic phantoms have one for every opacity they plant).

A *hit* is a Grad-CAM peak within a tolerance of the lesion: 15 px at 224 px, i.e. 6.7% of the
image side, as in the pointing game of Zhang et al. (ECCV 2016 / IJCV 2018), because a map
upsampled from a 7×7 grid cannot place its peak more finely than that.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from cxrlab.explain.gradcam import CamMethod
from cxrlab.explain.masked_maps import maps_with_masks, rows_with
from cxrlab.explain.overlay import in_mask_share
from cxrlab.models.classifier import CxrClassifier
from cxrlab.preprocess import PreprocessConfig

POINTING_TOLERANCE = 15 / 224  # share of the image side

COLUMNS = ["image", "label", "predicted", "hit", "peak_distance", "lesion_share", "lesion_area"]


def pointing_hit(cam: np.ndarray, lesion: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> tuple[bool, float]:
    """``(hit, distance)``: whether the map's peak lies within ``tolerance`` × the image side of the
    lesion, and the peak's distance to it in that unit (0 inside the lesion).

    Args:
        cam: ``(H, W)`` map.
        lesion: ``(H, W) bool`` mask with at least one pixel.
    """
    # distance of every pixel to the nearest lesion pixel (distanceTransform measures to zeros)
    distance = cv2.distanceTransform((~lesion).astype(np.uint8), cv2.DIST_L2, 5)
    side = max(lesion.shape)
    d = float(distance.flat[int(np.argmax(cam))]) / side
    return d <= tolerance, d


def lesion_evidence(model: CxrClassifier, preprocess: PreprocessConfig, frame: pd.DataFrame,
                    method: CamMethod = "gradcam", layer: str | None = None,
                    tolerance: float = POINTING_TOLERANCE) -> pd.DataFrame:
    """The pointing game for every row of ``frame`` with a non-empty ``lesion`` mask.

    The map explains the image's *true* class: the question is whether the evidence for the
    finding lies on the finding.

    Args:
        model: The classifier.
        preprocess: Its preprocessing.
        frame: Rows with ``image``, ``lesion``, ``label`` and ``predicted``.
        method: CAM method.
        layer: Target layer (default: the model's).
        tolerance: Hit distance as a share of the image side.

    Returns:
        :data:`COLUMNS` per image: ``hit``, ``peak_distance`` (share of the side), ``lesion_share``
        (share of the map's mass on the lesion) and ``lesion_area`` (share of the image the lesion
        covers: what an evenly spread map would score).
    """
    index = {c: i for i, c in enumerate(model.class_names)}
    out = []
    for row, heatmap, lesion, _ in maps_with_masks(model, preprocess, rows_with(frame, "lesion"), "lesion",
                                                lambda row: index[row.label], method, layer):
        if not lesion.any():  # a Normal phantom's empty lesion mask: nothing to point at
            continue
        hit, distance = pointing_hit(heatmap, lesion, tolerance)
        share = in_mask_share(heatmap, lesion)
        out.append({"image": row.image, "label": row.label, "predicted": row.predicted, "hit": hit,
                    "peak_distance": distance, "lesion_share": float("nan") if share is None else share,
                    "lesion_area": float(lesion.mean())})
    return pd.DataFrame(out, columns=COLUMNS)


def summarise_lesion_evidence(table: pd.DataFrame, tolerance: float = POINTING_TOLERANCE) -> dict:
    """Hit rate, median lesion share and median lesion area, overall and per true class
    (``tolerance``: the one :func:`lesion_evidence` used, recorded with the figures)."""
    def stats(part: pd.DataFrame) -> dict:
        return {"n": int(len(part)), "hit_rate": float(part["hit"].mean()),
                "median_lesion_share": float(part["lesion_share"].median()),
                "median_lesion_area": float(part["lesion_area"].median())}

    if table.empty:
        return {"n": 0}
    return {**stats(table), "tolerance": tolerance,
            "per_class": {label: stats(part) for label, part in table.groupby("label")}}
