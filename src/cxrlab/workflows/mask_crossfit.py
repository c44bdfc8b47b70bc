"""Cross-fitted lung masks: every image's mask predicted by a segmenter that never trained on its patient.

A study moves patients between training, validation and test sides from fold to fold, so no one
segmenter can be kept off every held-out patient; and hand-drawn masks cover some classes far more
than others. ``crossfit_lung_masks`` splits the patients into folds (stratified by class and by
whether the image has a hand-drawn mask), trains one segmenter on the masks of the other folds,
and predicts the masks of every image of the fold with it (``--replace``): one origin for every
mask, none in-sample, and the overlap with the hand-drawn masks measured on images the segmenter
never saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.run_folder import SUMMARY
from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.data import load_source, write_table
from cxrlab.data.duplicates import regroup_duplicates
from cxrlab.data.manifest import read_table, resolve_paths
from cxrlab.data.mask_provenance import PREDICTED
from cxrlab.data.splits import assign_folds
from cxrlab.evaluate.lung_masks import DICE_TABLE, dice_summary, predict_lung_masks
from cxrlab.train.segmentation import SegmentConfig, train_segmenter

VALIDATION_FOLDS = 5  # a segmenter's validation side: one fifth of the patients it may see


def _folds(frame: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Patient folds stratified by class and by whether the image has a given mask; patients joined by
    near-duplicate images share a fold (a segmenter never masks a copy of an image it trained on)."""
    has_mask = frame.get("mask", pd.Series("", index=frame.index)).fillna("").astype(str) != ""
    grouped, _ = regroup_duplicates(frame.reset_index(drop=True))
    strata = grouped.assign(split="train", label=grouped["label"].astype(str) + "|" + has_mask.to_numpy().astype(str))
    return assign_folds(strata, folds, seed, group_column="group_id").to_numpy()


def crossfit_lung_masks(data: str | Path, out: str | Path, folds: int = 3, settings: dict | None = None,
                        progress: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, dict]:
    """Write ``out/manifest.csv`` (``data`` with every mask predicted out of sample), ``out/fold<k>/``
    (segmenter ``k``'s run and masks) and ``out/summary.json``. Resumable: a fold whose masks are
    written is reused. An image that cannot be read is left out of the manifest and named with its
    reason in ``summary.json`` (``skipped``); every other image is still masked.

    Args:
        data: Any source ``load_source`` reads; its hand-drawn masks train the segmenters.
        out: Output folder.
        folds: Patient folds (at least 2).
        settings: :class:`SegmentConfig` fields (size, epochs, lr, backbone, seed, ...).

    Raises:
        ConfigError: too few folds, or a fold's segmenter has no masks to train or validate on.
    """
    if folds < 2:
        raise ConfigError(f"folds: cross-fitted masks need at least 2 folds, got {folds}")
    out, settings = Path(out), dict(settings or {})
    seed = int(settings.get("seed", 0))
    source = load_source(data)
    frame = source.table.reset_index(drop=True)
    fold = _folds(frame, folds, seed)
    parts, runs, skipped = [], [], [(item.image, item.reason) for item in source.skipped]
    for k in range(folds):
        if progress:
            progress(f"fold {k + 1}/{folds}")
        run = out / f"fold{k}"
        done = run / "masks" / "manifest.csv"
        if not done.exists():
            others = frame[fold != k].assign(split="train")
            val = _folds(others, VALIDATION_FOLDS, seed + 1 + k) == 0
            others.loc[val, "split"] = "val"
            write_table(pd.concat([others, frame[fold == k].assign(split="test")]), run / "input.csv")
            try:
                train_segmenter(SegmentConfig(**{**settings, "splits": str(run / "input.csv"), "out": str(run),
                                                 "progress_bar": False}))
            except ConfigError as err:
                raise ConfigError(f"fold {k}: {err}") from err
            _, predicted = predict_lung_masks(run, frame[fold == k], run / "masks", replace=True)
            atomic_write_text(run / "masks" / "skipped.json", json.dumps(predicted["skipped"]) + "\n")
        part = resolve_paths(read_table(done), done.parent)  # its paths are relative to its own folder
        failed = run / "masks" / "skipped.json"
        skipped += [tuple(item) for item in json.loads(failed.read_text())] if failed.exists() else []
        parts.append(part[part["mask_source"] == PREDICTED])  # an image it could not read keeps no mask: left out
        summary = json.loads((run / SUMMARY).read_text())
        runs.append({"fold": k, "images": int((fold == k).sum()), "segmenter_images": summary["images"],
                     "held_out_dice": summary["test"].get("dice_clean_mean"), "best_epoch": summary["best_epoch"]})
    order = {image: i for i, image in enumerate(frame["image"])}
    table = pd.concat(parts, ignore_index=True).sort_values("image", key=lambda c: c.map(order)).reset_index(drop=True)
    write_table(table, out / "manifest.csv")
    scored = [(r["held_out_dice"], r["segmenter_images"]["test"]) for r in runs if r["held_out_dice"] is not None]
    tables = [out / f"fold{k}" / "masks" / DICE_TABLE for k in range(folds)]
    # every predicted mask against the hand-drawn one of the same image, by a segmenter that never saw the patient
    dice = pd.concat([pd.read_csv(t) for t in tables if t.exists()] or [pd.DataFrame(columns=["source", "label", "dice"])])
    result = {"folds": folds, "images": len(frame), "masks": int((table["mask"] != "").sum()),
              "held_out_dice": float(np.average([d for d, _ in scored], weights=[n for _, n in scored])) if scored else None,
              "dice_vs_given": dice_summary(dice, frame), "skipped": [list(item) for item in skipped], "runs": runs}
    atomic_write_text(out / SUMMARY, json.dumps(result, indent=2) + "\n")
    return table, result
