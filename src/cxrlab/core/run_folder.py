"""A run's folder, written the same way by every job that makes one (a training run, a segmenter,
the runs of studies and searches): ``config.yaml`` first, ``summary.json`` last and atomically, so
that its presence (with ``status: ok``) marks a finished run that a rerun reuses, with the wall
time of the whole job in ``timing.seconds_total``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text

# The one place a run folder's file names are written: train, train --folds, study cells and their
# ensembles, tune trials, refits, the segmenter, and every reader of them use these.
CONFIG = "config.yaml"  # every setting, resolved, in its section; written first
SOURCES = "config_sources.json"  # where each setting came from (default, recipe, file, command line)
SUMMARY = "summary.json"  # written last: its presence with status ok marks a finished run
FAILED = "failed.json"  # a study run that failed, with its error
MODEL = "model.pt"  # the self-contained model file every command reads
SEGMENTER = "segmenter.pt"  # a lung segmenter's file
SPLITS = "splits.csv"  # the run's split (the leakage guard reads it back)
SPLITS_INFO = "splits.json"  # how that split was made
METRICS = "metrics.csv"  # one row per epoch
CURVES = "curves.png"  # the training curves
CHECKPOINTS = "checkpoints"  # last.ckpt: where a stopped run resumes (removed when the run ends)
LAST_CHECKPOINT = "last.ckpt"
PREPARED = "prepared"  # the run's prepared shards, unless a shared folder is named
TRACKING_DB = "mlflow.db"  # the default MLflow store, beside the run folder
TEST_PREDICTIONS = "test_predictions.csv"  # a run's probabilities on a test side (cached)
VAL_PREDICTIONS = "val_predictions.csv"  # a study run's probabilities on its validation fold (cached)
OOF_PREDICTIONS = "oof_predictions.csv"  # train --folds: every image's out-of-fold probabilities
BASELINE_OOF_PREDICTIONS = "baseline_oof_predictions.csv"  # the linear probe's, on the same folds
TEST_LUNG_EVIDENCE = "test_lung_evidence.csv"  # a run's Grad-CAM in-lung shares on the test side (cached)
TEST_ROAD = "test_road.csv"  # a run's ROAD scores on the test side (cached)
ORIGIN = "origin.json"  # an exported model's origin (study, cell, runs, test figures)
ENSEMBLE_RUNS = "runs.json"  # which runs an ensemble folder holds; written last
FOLDS = "folds"  # train --folds: folds/fold<k>/, one run per fold


def test_predictions_file(views: str = "none") -> str:
    """A run's cached test-side predictions with test-time ``views`` (``none``: :data:`TEST_PREDICTIONS`)."""
    return TEST_PREDICTIONS if views == "none" else TEST_PREDICTIONS.replace(".csv", f"-{views}.csv")


def fold_folder(out: str | Path, fold: int) -> Path:
    """``OUT/folds/fold<k>``: fold ``k``'s run of cross-validated training."""
    return Path(out) / FOLDS / f"fold{fold}"


def model_file(run: str | Path) -> Path:
    """The model file of ``run``: ``RUN/model.pt`` for a run folder, else ``run`` itself.

    Raises:
        ConfigError: neither a run folder with a model file nor a file.
    """
    run = Path(run)
    path = run / MODEL if run.is_dir() else run
    if not path.is_file():
        raise ConfigError(f"{run}: no model found (expected a run folder with {MODEL}, or a model file)")
    return path


class RunFolder:
    """Start a run in ``out`` (created) with its resolved ``config`` (a JSON-ready mapping); ``write=False``
    (a data-parallel run's other ranks) only reads it."""

    def __init__(self, out: str | Path, config: dict, write: bool = True) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        if write:
            atomic_write_text(self.out / CONFIG, yaml.safe_dump(config, sort_keys=False))

    def finish(self, summary: dict) -> dict:
        """Write ``summary.json`` (with ``timing.seconds_total``, the time since the start) and return it."""
        summary["timing"] = {**summary.get("timing", {}), "seconds_total": round(time.perf_counter() - self.start, 2)}
        atomic_write_text(self.out / SUMMARY, json.dumps(summary, indent=2) + "\n")
        return summary


def finished_summary(run_dir: str | Path) -> dict | None:
    """The run's summary when it finished well (``status: ok``), else ``None`` (not run, interrupted or failed)."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("status") == "ok" else None
