"""Predicted lung masks for the images of a table: masks on each image's own geometry, a manifest
that points to them, and their overlap with the masks a data set already has."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxrlab.core.errors import InvalidImageError
from cxrlab.data.images import read_mask
from cxrlab.data.manifest import write_table
from cxrlab.data.mask_provenance import IN_SAMPLE, PREDICTED
from cxrlab.data.seen import split_seen
from cxrlab.models.predictor import mask_file_name
from cxrlab.models.registry import get_backbone_spec
from cxrlab.models.segmenter import load_segmenter
from cxrlab.preprocess import Preprocessor
from cxrlab.preprocess.masks import dice_iou
from cxrlab.models.segmenter import lung_mask_from_probability, predict_probabilities

log = logging.getLogger(__name__)
BATCH = 16


DICE_TABLE = "dice_vs_given.csv"  # per image with a given mask: its Dice against the predicted one


def _dice_stats(values: pd.Series) -> dict:
    return {"n": int(len(values)), "mean": float(values.mean()), "median": float(values.median()),
            "p05": float(values.quantile(0.05))}


def dice_summary(scored: pd.DataFrame, frame: pd.DataFrame | None = None) -> dict:
    """Dice of predicted against given masks over ``scored`` (``dice``, ``source``, ``label``), pooled, per
    source and per class; with ``frame`` (all rows), the sources and classes with no given mask to
    score against are named (``unmeasured``): there the masks' quality is unknown."""
    if scored.empty:
        out: dict = {"n": 0}
    else:
        out = {**_dice_stats(scored["dice"]),
               "per_source": {str(k): _dice_stats(v) for k, v in scored.groupby("source")["dice"]},
               "per_class": {str(k): _dice_stats(v) for k, v in scored.groupby("label")["dice"]}}
    if frame is not None:
        out["unmeasured"] = {key: sorted(set(map(str, frame[key])) - set(map(str, scored[key])))
                             for key in ("source", "label") if key in frame.columns}
    return out


def predict_lung_masks(segmenter: str | Path, frame: pd.DataFrame, out: str | Path, *, replace: bool = False,
                       progress: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, dict]:
    """Segment the lungs of every row of ``frame`` that lacks a mask (every row with ``replace``).

    Writes ``out/masks/*.png`` (cleaned: the two largest components, holes filled, on the image's
    own geometry) and ``out/manifest.csv``: ``frame`` with ``mask`` pointing to the predicted
    masks, ``mask_source`` = ``predicted`` and ``mask_in_sample`` (the segmenter trained on the
    row's patient; training refuses such masks on a validation or test side) for them. Rows that already have a mask are also
    segmented, to report the overlap with it (``dice_vs_given``), but keep their mask unless
    ``replace``.

    Returns:
        ``(the new table, {"predicted", "kept_given", "skipped": [(image, reason)], "dice_vs_given"})``;
        ``dice_vs_given`` (:func:`dice_summary`) is per source and per class, with ``in_sample`` the
        scored images whose patients the segmenter trained on (optimistic); ``out/dice_vs_given.csv``
        lists every scored image.
    """
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    net, preprocess, payload = load_segmenter(segmenter)
    spec = get_backbone_spec(payload["backbone"])
    pre = Preprocessor(preprocess)
    frame = frame.reset_index(drop=True).copy()
    for column in ("mask", "mask_source"):
        frame[column] = frame.get(column, pd.Series("", index=frame.index)).fillna("").astype(str)
    given = frame["mask"] != ""
    _, trained_on = split_seen(frame, (payload.get("extra") or {}).get("seen"))
    trained_on = set(trained_on.index)
    if IN_SAMPLE not in frame.columns:
        frame[IN_SAMPLE] = False
    skipped, overlaps, predicted = [], [], 0
    for start in range(0, len(frame), BATCH):
        rows, pixels = [], []
        for i in range(start, min(start + BATCH, len(frame))):
            try:
                processed = pre(frame.at[i, "image"])
            except InvalidImageError as err:
                skipped.append((frame.at[i, "image"], err.reason))
                log.warning("segment: %s", err)
                continue
            rows.append((i, processed.orig_height, processed.orig_width))
            pixels.append(processed.pixels)
        probs = predict_probabilities(net, np.stack(pixels), spec) if pixels else []
        for (i, height, width), p in zip(rows, probs, strict=True):
            mask = lung_mask_from_probability(p, height, width)
            if given[i]:
                try:
                    overlaps.append((i, dice_iou(mask, read_mask(frame.at[i, "mask"], (height, width)))[0]))
                except InvalidImageError as err:
                    log.warning("segment: given mask unusable: %s", err)
                if not replace:
                    continue
            path = out / "masks" / mask_file_name(frame.at[i, "image"])
            cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
            frame.at[i, "mask"], frame.at[i, "mask_source"] = str(path.resolve()), PREDICTED
            frame.at[i, IN_SAMPLE] = i in trained_on
            predicted += 1
        if progress:
            progress(min(BATCH, len(frame) - start))
    write_table(frame, out / "manifest.csv")
    scored = frame.reindex(columns=["image", "source", "label"]).loc[[i for i, _ in overlaps]].assign(
        dice=[d for _, d in overlaps], in_sample=[i in trained_on for i, _ in overlaps])
    scored.to_csv(out / DICE_TABLE, index=False)
    dice = {**dice_summary(scored, frame), "in_sample": int(scored["in_sample"].sum())}  # optimistic ones
    return frame, {"predicted": predicted, "kept_given": int(given.sum()) if not replace else 0, "skipped": skipped,
                   "dice_vs_given": dice}
