"""Refit the chosen configuration on all of train+validation and score it on the test side once.

Cross-validation chose the cell and, per fold, the epoch to keep; the refit trains that cell once
more on every train+validation image for the median of those epochs (``select_on: last``: there
is no validation side left to choose on) and is scored on the held-out test side, beside the
cell's fold ensemble on the same images (paired bootstrap over patients on the COVID-19 AUC). One paper built its
final model this way; it uses ~25% more training images than any fold's model, at the price of
having no validation side of its own (its model file carries no screening reference).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.errors import ConfigError, CxrlabError
from cxrlab.core.io import atomic_write_text
from cxrlab.core.run_folder import METRICS, finished_summary
from cxrlab.study.cell_ensemble import cell_model
from cxrlab.study.config import StudyConfig
from cxrlab.study.export import export_run
from cxrlab.study.plan import Cell, run_config
from cxrlab.study.test_side import paired_auc_p, score_test_side
from cxrlab.train.reuse import check_same_config
from cxrlab.workflows.predictions import predict_test_side

log = logging.getLogger(__name__)
TrainOne = Callable[[str, Path, pd.DataFrame, dict], tuple[dict | None, str | None]]


def refit_settings(config: StudyConfig, cell: Cell, runs: pd.DataFrame, out: Path) -> dict:
    """The settings a refit changes: per phase, the median over ``runs`` (the cell's finished runs) of
    the epochs that phase ran up to the kept one (from each run's ``metrics.csv``; phases after the
    kept one are dropped), as ``epochs`` for a one-phase run or as cut ``phases``; the last epoch
    kept. The learning-rate schedule is rebuilt over the shorter run (a plateau schedule watches the
    training loss), so it is the folds' recipe replayed, not their exact path."""
    counts = []
    for _, row in runs.iterrows():
        metrics = pd.read_csv(out / "runs" / cell.id / row["run"] / METRICS)
        upto = metrics[metrics["epoch"] <= int(row["best_epoch"])]
        counts.append(upto.groupby("phase").size())
    per_phase = pd.DataFrame(counts).fillna(0).median().round().astype(int)  # phase -> epochs
    last = max([p for p, n in per_phase.items() if n > 0], default=0)
    probe = run_config(config, cell, out / "runs" / cell.id / "refit", out / "shared", {})
    settings: dict = {"select_on": "last", "select_smoothing": 1, "min_epochs": 1}
    if not probe.schedule.phases:
        return {**settings, "epochs": max(1, int(per_phase.get(0, 1)))}
    return {**settings, "phases": [{**phase.model_dump(mode="json"), "epochs": max(1, int(per_phase.get(i, 0)))}
                                   for i, phase in enumerate(probe.schedule.phases) if i <= last]}


def refit_best(config: StudyConfig, out: Path, frame: pd.DataFrame, cell: Cell, table: pd.DataFrame,
               summary: pd.DataFrame, train_one: TrainOne) -> dict:
    """Train ``cell`` on all of train+validation (or reuse that run), score it and the cell's fold ensemble
    on the test side, export it to ``out/refit-model`` and write ``out/refit.json``.

    Returns:
        ``{"cell", "settings", "train_images", "status", "test", "fold_model_test", "p_vs_fold_model"}``
        (``error`` instead of the test figures when training or scoring failed).
    """
    ok = table[(table["cell"] == cell.id) & (table["status"] == "ok")]
    settings = refit_settings(config, cell, ok, out)
    run_dir = out / "runs" / cell.id / "refit"
    split = frame.assign(split=np.where(frame["split"] == "test", "test", "train"))
    result: dict = {"cell": cell.id, "settings": settings, "train_images": int((split["split"] == "train").sum())}
    reuse = finished_summary(run_dir) is not None
    if reuse:
        try:  # the settings are derived (more runs may change the median epoch): retrain when they moved
            check_same_config(run_dir, run_config(config, cell, run_dir, out / "shared", {}, 0, settings))
        except ConfigError:
            reuse = False
    error = None if reuse else train_one("refit", run_dir, split, settings)[1]
    test = frame[frame["split"] == "test"]
    if error is None and test.empty:
        error = "the split has no test side"
    if error is None:
        try:
            predictions = predict_test_side(run_dir, test, out / "shared" / "prepared-test")
            result["test"] = score_test_side(config, test, run_dir, predictions)
            fold_model = cell_model(out, cell.id, ok)
            fold_predictions = predict_test_side(fold_model, test, out / "shared" / "prepared-test")
            row = summary.set_index("cell").loc[cell.id]
            result["fold_model_test"] = {"run": fold_model.name, **{
                k: float(row[f"test_{k}"]) for k in ("accuracy", "auc_macro", "auc_covid") if f"test_{k}" in row}}
            result["p_vs_fold_model"] = paired_auc_p(predictions, fold_predictions, test.set_index("image")["patient_id"],
                                                     config.n_boot, config.seed)
            export_run(run_dir, out / "refit-model", {"cell": cell.id, "part": "refit", "study": str(out),
                                                      "test": {k: v for k, v in result["test"].items()
                                                               if not (isinstance(v, float) and math.isnan(v))}})
        except CxrlabError as err:
            error = f"{type(err).__name__}: {err}"
    result["status"] = "ok" if error is None else "failed"
    if error is not None:
        log.warning("study: the refit of %s failed: %s", cell.label(), error)
        result["error"] = error
    atomic_write_text(out / "refit.json", json.dumps(result, indent=2, default=str) + "\n")
    return result
