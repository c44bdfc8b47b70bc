"""The held-out test side of a study: each complete cell's best fold, and DeLong against the best cell.

Only the best cell is chosen on validation folds; the test side reports how the choice holds
up and whether the cells' test AUCs differ beyond noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.errors import CxrlabError
from cxrlab.evaluate.delong import delong_test
from cxrlab.evaluate.metrics import compute_metrics
from cxrlab.evaluate.predictions import predict_frame
from cxrlab.models import load_model
from cxrlab.study.config import StudyConfig
from cxrlab.study.results import ALPHA, POSITIVE

log = logging.getLogger(__name__)


def predict_test_side(run_dir: Path, test: pd.DataFrame, work: Path) -> pd.DataFrame:
    """Class probabilities of a run's model on the test side (cached in the run folder)."""
    cached = run_dir / "test_predictions.csv"
    if cached.exists():
        return pd.read_csv(cached)
    model, preprocess, _ = load_model(run_dir / "model.pt")
    key = hashlib.sha1(json.dumps(preprocess.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    result = predict_frame(model, preprocess, test, work / key)
    frame = result.frame[["image", "label"]].copy()
    for i, name in enumerate(result.class_names):
        frame[name] = result.probs[:, i]
    cached.write_text(frame.to_csv(index=False))
    return frame


def prediction_metrics(predictions: pd.DataFrame) -> tuple[dict, list[str]]:
    """:func:`compute_metrics` of a table of ``image``, ``label`` and one probability column per class,
    and the class names (column order)."""
    names = [c for c in predictions.columns if c not in ("image", "label")]
    y = np.array([names.index(v) for v in predictions["label"]])
    return compute_metrics(y, predictions[names].to_numpy(), names), names


def evaluate_cells(config: StudyConfig, out: Path, split: pd.DataFrame, table: pd.DataFrame, summary: pd.DataFrame,
                   best: str | None) -> pd.DataFrame:
    """Add test-side columns to ``summary``: accuracy, macro AUC, COVID-19 AUC of each complete cell's
    best fold (lowest validation loss), and DeLong's p for its COVID-19 AUC against the best cell's."""
    test = split[split["split"] == "test"]
    columns = {"test_fold": [], "test_accuracy": [], "test_auc_macro": [], "test_auc_positive": [], "test_p_vs_best": []}
    if test.empty:
        log.warning("study: the split has no test side; no test-set evaluation")
        return summary.assign(**{k: math.nan for k in columns})
    predictions: dict[str, pd.DataFrame] = {}
    for cell, complete in zip(summary["cell"], summary["complete"], strict=True):
        ok = table[(table["cell"] == cell) & (table["status"] == "ok")]
        if not complete or ok.empty:
            for key in columns:
                columns[key].append(math.nan)
            continue
        fold = int(ok.sort_values("best_val_loss")["fold"].iloc[0])
        try:
            predictions[cell] = predict_test_side(out / "runs" / cell / f"fold{fold}", test, out / "shared" / "prepared-test")
        except CxrlabError as err:
            log.warning("study: test evaluation of %s failed: %s", cell, err)
            for key in columns:
                columns[key].append(math.nan)
            continue
        metrics, names = prediction_metrics(predictions[cell])
        positive = POSITIVE if POSITIVE in names else names[0]
        columns["test_fold"].append(fold)
        columns["test_accuracy"].append(metrics["accuracy"])
        for key, value in (("test_auc_macro", metrics["macro"]["roc_auc"]),
                           ("test_auc_positive", metrics["per_class"][positive]["roc_auc"])):
            columns[key].append(math.nan if value is None else value)  # None: one class only on the test side
        columns["test_p_vs_best"].append(math.nan)
    out_summary = summary.assign(**{k: v for k, v in columns.items()})
    if best in predictions:
        reference = predictions[best]
        names = [c for c in reference.columns if c not in ("image", "label")]
        positive = POSITIVE if POSITIVE in names else names[0]
        for i, cell in enumerate(out_summary["cell"]):
            if cell == best or cell not in predictions:
                continue
            both = reference.merge(predictions[cell], on=["image", "label"], suffixes=("_best", ""))  # same images
            y = (both["label"] == positive).to_numpy().astype(int)
            if min(y.sum(), len(y) - y.sum()) >= 2:  # DeLong's variance needs two of each
                test = delong_test(y, both[f"{positive}_best"].to_numpy(), both[positive].to_numpy())
                out_summary.loc[i, "test_p_vs_best"] = test["p_value"]
    out_summary["test_within_noise"] = [None if math.isnan(p) else bool(p >= ALPHA) for p in out_summary["test_p_vs_best"]]
    return out_summary
