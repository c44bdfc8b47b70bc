"""A study cell's runs as one model: the mean of their probabilities.

A study's folds validate on different images, so "the run with the best validation score" is partly
the run that drew the easiest validation fold; quoting its test figures, or exporting it, rewards
that luck. A cell is scored on the test side, and exported, as the ensemble of all its runs
(folds × repeats), as ``cxrlab train --folds`` does. A cell of one run is that run.

The ensemble's screening reference is fitted on data its members did not learn, as for ``train
--folds`` (:mod:`cxrlab.workflows.ensemble_reference`): the operating point on the out-of-fold
predictions (each validation fold predicted by the runs that validated on it), the
out-of-distribution and inverted-image checks one per run, fitted on the folds it trained on and
thresholded on the one it validated on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.device import use_policy
from cxrlab.core.run_folder import CONFIG, ENSEMBLE_RUNS, MODEL, SOURCES, SPLITS, SPLITS_INFO, VAL_PREDICTIONS
from cxrlab.core.io import atomic_write_text
from cxrlab.data import write_splits
from cxrlab.data.seen import merge_records
from cxrlab.models import EnsembleClassifier, load_model, save_model
from cxrlab.models.predictor import Predictor
from cxrlab.preprocess import ShardReader
from cxrlab.workflows.ensemble_reference import oof_reference
from cxrlab.workflows.predictions import predict_test_side, preprocess_key
from cxrlab.train import add_screening_reference
from cxrlab.train.runner import run_policy

ENSEMBLE = "ensemble"  # runs/<cell>/ensemble/: never a run's name (runs are fold<k>[...], refit)


def cell_model(out: Path, cell: str, ok: pd.DataFrame) -> Path:
    """The folder of cell ``cell``'s model: its one run's, or ``runs/<cell>/ensemble/`` holding the
    ensemble of its finished runs ``ok`` (rows with ``run``), built once and rebuilt (its cached
    test-side figures with it) when a run is added or trained again."""
    runs = sorted(str(r) for r in ok["run"])
    cell_dir = out / "runs" / cell
    if len(runs) == 1:
        return cell_dir / runs[0]
    folder = cell_dir / ENSEMBLE
    record = folder / ENSEMBLE_RUNS  # written last: a half-built ensemble is rebuilt
    files = {run: _fingerprint(cell_dir / run / MODEL) for run in runs}  # a run trained again is new
    if record.is_file() and json.loads(record.read_text()) == files:
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # older runs' ensemble and everything cached from it
    folder.mkdir(parents=True)
    members, seen, preprocess, guidance = [], [], None, {}
    for run in runs:
        model, preprocess, payload = load_model(cell_dir / run / MODEL)
        members.append(model)
        seen.append((payload.get("extra") or {}).get("seen"))
        guidance = (payload.get("extra") or {}).get("guidance") or guidance  # one cell: the same settings
    save_model(EnsembleClassifier(members).eval(), folder / MODEL, preprocess,
               {"seen": merge_records(*seen), "runs": runs, "guidance": guidance})
    for name in (CONFIG, SOURCES):  # the runs' settings (they differ in their folds and seeds only)
        if (cell_dir / runs[0] / name).exists():
            shutil.copy2(cell_dir / runs[0] / name, folder / name)
    atomic_write_text(record, json.dumps(files, indent=1) + "\n")
    return folder


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def cell_oof_predictions(out: Path, cell: str, ok: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Every train+validation image of the study split ``frame`` predicted by the runs that validated
    on it (the mean over repeats), with its ``fold``; each run's are cached in its ``val_predictions.csv``."""
    parts = []
    for _, row in ok.iterrows():
        fold = int(row["fold"])
        val = frame[(frame["split"] != "test") & (pd.to_numeric(frame["fold"]) == fold)]
        part = predict_test_side(out / "runs" / cell / str(row["run"]), val,
                                 out / "shared" / "prepared-val" / f"fold{fold}", cache=VAL_PREDICTIONS)
        parts.append(part.assign(fold=fold))
    both = pd.concat(parts, ignore_index=True)
    return both.groupby(["image", "label", "fold"], as_index=False, sort=False).mean(numeric_only=True)


def export_ready(folder: Path, out: Path, cell: str, ok: pd.DataFrame, frame: pd.DataFrame, batch_size: int = 32) -> None:
    """Give a cell ensemble's folder what exporting it needs: ``splits.csv`` (the study split with every
    train+validation image on the train side: each trained some member) and a screening reference
    from the cell's out-of-fold predictions; with one split and several seeds, the runs' own split and
    a reference fitted on it. A no-op for a one-run cell or an ensemble that has them."""
    if folder.name != ENSEMBLE:
        return
    model, preprocess, payload = load_model(folder / MODEL)
    extra = payload.get("extra") or {}
    if extra.get("screening"):
        return
    if pd.to_numeric(frame["fold"]).max() < 1:  # one split, several seeds: every member trained on its train
        for name in (SPLITS, SPLITS_INFO):  # side and none on its validation side, which fit the reference
            shutil.copy2(out / "runs" / cell / str(ok["run"].iloc[0]) / name, folder / name)
        add_screening_reference(folder)
        return
    pooled = frame.assign(split=np.where(frame["split"] == "test", "test", "train"))
    write_splits(pooled, {"ensemble_of": extra.get("runs"), "cell": cell}, folder)
    names = list(model.class_names)
    predictions = cell_oof_predictions(out, cell, ok, frame)
    key = preprocess_key(preprocess)
    folds = [out / "shared" / "prepared-val" / f"fold{k}" / key for k in sorted(predictions["fold"].unique())]
    if all((f / "plan.json").exists() for f in folds):  # each image prepared once already, for its fold's runs
        reader = ShardReader(folds)
    else:  # predictions cached by an earlier cxrlab whose folders are gone
        work = out / "shared" / "prepared-ensemble" / key
        Predictor(folder).dataset(frame[frame["image"].isin(set(predictions["image"]))], work)
        reader = ShardReader(work)
    fold_of = {str(run): int(fold) for run, fold in zip(ok["run"], ok["fold"], strict=True)}
    member_folds = [fold_of[run] for run in sorted(fold_of)]  # cell_model's member order: its runs, sorted
    with use_policy(run_policy(folder)):  # the device its runs trained on
        extra["screening"] = oof_reference(model, predictions, names, reader, batch_size, member_folds)
    save_model(model, folder / MODEL, preprocess, extra)
