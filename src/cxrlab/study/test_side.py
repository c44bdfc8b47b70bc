"""The held-out test side of a study: each complete cell's model (the ensemble of its runs) with
confidence intervals and its Grad-CAM in-lung share, and its COVID-19 AUC against the best cell's (paired bootstrap over
patients, Holm-corrected across the cells).

Only the best cell is chosen on validation folds; the test side reports how the choice holds
up and whether the cells' test AUCs differ beyond noise.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.run_folder import MODEL, TEST_LUNG_EVIDENCE, TEST_ROAD
from cxrlab.core.defaults import DEFAULT_N_BOOT
from cxrlab.core.errors import CxrlabError
from cxrlab.core.io import atomic_write_text
from cxrlab.data.classes import POSITIVE_CLASS
from cxrlab.data.mask_provenance import mask_problem
from cxrlab.evaluate.bootstrap import bootstrap_ci, bootstrap_cis, holm
from cxrlab.evaluate.compare import paired_differences
from cxrlab.evaluate.metrics import accuracy_and_macro_auc, compute_metrics
from cxrlab.explain import lung_evidence
from cxrlab.explain.faithfulness import road_scores
from cxrlab.explain.masked_maps import rows_with
from cxrlab.models import load_model
from cxrlab.models.checkpoint import FORMAT, read_payload
from cxrlab.study.config import StudyConfig
from cxrlab.study.results import ALPHA
from cxrlab.workflows.predictions import predict_test_side

log = logging.getLogger(__name__)


def _targets_and_probs(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class indices, probabilities and class names of a table of ``image``, ``label`` and one
    probability column per class."""
    names = [c for c in predictions.columns if c not in ("image", "label")]
    return np.array([names.index(v) for v in predictions["label"]]), predictions[names].to_numpy(), names


def prediction_metrics(predictions: pd.DataFrame) -> tuple[dict, list[str]]:
    """:func:`compute_metrics` of a prediction table, and the class names (column order)."""
    y, probs, names = _targets_and_probs(predictions)
    return compute_metrics(y, probs, names), names


def paired_auc_p(a: pd.DataFrame, b: pd.DataFrame, patients: pd.Series, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> float | None:
    """Two-sided p of the difference between the COVID-19 (or first class's) AUCs of two prediction
    tables on the same images, from a paired bootstrap over patients (``patients``: patient id per
    image path); None when the images hold fewer than two of either side."""
    names = [c for c in a.columns if c not in ("image", "label")]
    positive = POSITIVE_CLASS if POSITIVE_CLASS in names else names[0]
    both = a.merge(b, on=["image", "label"], suffixes=("", "_other"))
    y = (both["label"] == positive).to_numpy()
    if min(y.sum(), len(y) - y.sum()) < 2:
        return None
    labels = both["label"].to_numpy()
    correct = [(both[[f"{n}{s}" for n in names]].to_numpy().argmax(1) == [names.index(v) for v in labels])
               for s in ("", "_other")]
    groups = both["image"].map(patients.to_dict()).fillna(both["image"]).astype(str).to_numpy()
    tests = paired_differences(labels, {positive: both[positive].to_numpy(float)},
                               {positive: both[f"{positive}_other"].to_numpy(float)}, *correct, groups, n_boot, seed)
    return tests[positive]["p_value"]


TEST_COLUMNS = ("test_run", "test_accuracy", "test_accuracy_low", "test_accuracy_high", "test_auc_macro",
                "test_auc_macro_low", "test_auc_macro_high", "test_auc_covid", "test_p_vs_best", "test_p_holm", "test_in_lung_share",
                "test_in_lung_share_low", "test_in_lung_share_high", "test_lung_area", "test_even_share", "test_lung_images",
                "test_lung_circular", "test_road", "test_road_low", "test_road_high")


def metric_cis(predictions: pd.DataFrame, patients: pd.Series, n_boot: int, seed: int) -> dict:
    """Patient-bootstrap 95% intervals of accuracy and macro AUC of a prediction table."""
    y, probs, names = _targets_and_probs(predictions)

    return bootstrap_cis(lambda rows: accuracy_and_macro_auc(y[rows], probs[rows]), patients.to_numpy(), n_boot, seed)


def _mean_interval(table: pd.DataFrame, column: str, n_boot: int, seed: int) -> dict:
    """``test_<column>`` (the mean over ``table``'s images) and its patient-bootstrap interval."""
    values = table[column].to_numpy()
    ci = bootstrap_ci(lambda r: float(values[r].mean()), table["patient_id"].to_numpy(), n_boot, seed)
    return {f"test_{column}": ci["value"], f"test_{column}_low": ci["low"], f"test_{column}_high": ci["high"]}


def lung_share(run_dir: Path, test: pd.DataFrame, predictions: pd.DataFrame, n_boot: int, seed: int) -> dict | None:
    """Mean share of the Grad-CAM evidence (for the predicted class) inside the lungs over the test
    images with lung masks, with its patient-bootstrap 95% interval, the lungs' mean share of the
    image, and the model's own baseline (``even_share``: what evidence spread evenly over the region
    it sees would score). Maps are cached in ``test_lung_evidence.csv``.

    Returns ``None`` when no test image has a mask, or the masks fail the provenance rule (some test
    images unmasked, several origins: :func:`cxrlab.data.mask_provenance.mask_problem`; logged).
    ``test_lung_circular``: the model was trained to put its evidence in the masks (guided attention).
    """
    if problem := mask_problem(test, "the in-lung share", "the study's test side",
                               "give the study a manifest whose masks all come from cxrlab segment crossfit"):
        log.warning("in-lung share not computed: %s", problem)
        return None
    names = [c for c in predictions.columns if c not in ("image", "label")]
    rows = rows_with(test, "mask").merge(
        predictions.assign(predicted=predictions[names].idxmax(axis=1))[["image", "predicted"]], on="image")
    if rows.empty:
        return None
    cached = run_dir / TEST_LUNG_EVIDENCE
    table = pd.read_csv(cached) if cached.exists() else None
    if table is None or "even_share" not in table.columns:  # tables from before the own-region baseline: redo
        model, preprocess, payload = load_model(run_dir / MODEL)
        table = lung_evidence(model, preprocess, rows)
        atomic_write_text(cached, table.to_csv(index=False))
    else:  # the maps are cached: the file's record is all that is needed, not a model built from it
        payload = read_payload(run_dir / MODEL, FORMAT, "model")
    circular = bool((payload.get("extra") or {}).get("guidance"))  # trained to put its evidence in these masks
    table = table.dropna(subset=["in_lung_share"]).merge(rows[["image", "patient_id"]], on="image")
    if table.empty:
        return None
    return {**_mean_interval(table, "in_lung_share", n_boot, seed), "test_lung_area": float(table["lung_area"].mean()), "test_even_share": float(table["even_share"].mean()),
            "test_lung_images": int(len(table)), "test_lung_circular": circular}


def faithfulness(run_dir: Path, test: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Mean ROAD score of the run's maps on the test side with its patient-bootstrap interval
    (:func:`cxrlab.explain.faithfulness.road_scores`; cached in ``test_road.csv``)."""
    cached = run_dir / TEST_ROAD
    if cached.exists():
        table = pd.read_csv(cached)
    else:
        model, preprocess, _ = load_model(run_dir / MODEL)
        table = road_scores(model, preprocess, test, seed=seed)
        atomic_write_text(cached, table.to_csv(index=False))
    table = table.merge(test[["image", "patient_id"]], on="image")
    if table.empty:
        return {}
    return _mean_interval(table, "road", n_boot, seed)


def score_test_side(config: StudyConfig, test: pd.DataFrame, run_dir: Path, predictions: pd.DataFrame) -> dict:
    """A run's test-side figures: accuracy and macro AUC with patient-bootstrap intervals, the COVID-19
    AUC, and the Grad-CAM in-lung share (images with masks)."""
    metrics, names = prediction_metrics(predictions)
    positive = POSITIVE_CLASS if POSITIVE_CLASS in names else names[0]
    auc_covid = metrics["per_class"][positive]["roc_auc"]
    patients = predictions.merge(test[["image", "patient_id"]], on="image")["patient_id"]
    cis = metric_cis(predictions, patients, config.n_boot, config.seed)
    row = {"test_accuracy": metrics["accuracy"], "test_auc_macro": metrics["macro"]["roc_auc"],
           "test_auc_covid": auc_covid}
    for key in ("accuracy", "auc_macro"):
        row[f"test_{key}_low"], row[f"test_{key}_high"] = cis[key]["low"], cis[key]["high"]
    try:
        row.update(lung_share(run_dir, test, predictions, config.n_boot, config.seed) or {})
    except CxrlabError as err:  # the metrics above stand without it
        log.warning("study: Grad-CAM lung share of %s failed: %s", run_dir, err)
    if config.faithfulness:
        try:
            row.update(faithfulness(run_dir, test, config.n_boot, config.seed))
        except CxrlabError as err:
            log.warning("study: ROAD scores of %s failed: %s", run_dir, err)
    return {k: (math.nan if v is None else v) for k, v in row.items()}  # None: undefined (one class only)


def evaluate_cells(config: StudyConfig, out: Path, split: pd.DataFrame, summary: pd.DataFrame,
                   models: dict[str, Path], best: str | None) -> pd.DataFrame:
    """Add test-side columns to ``summary`` for each complete cell, scored with its model (``models``:
    cell -> folder, the ensemble of its runs: :func:`cxrlab.study.cell_ensemble.cell_model`):
    accuracy and macro AUC with patient-bootstrap 95% intervals, COVID-19 AUC, the paired
    patient-bootstrap p of that AUC against the best cell's (``test_p_vs_best``) and Holm's adjustment
    across the cells (``test_p_holm``; ``test_within_noise`` follows it), and the Grad-CAM in-lung share
    (mean and interval) on the test images with lung masks."""
    test = split[split["split"] == "test"]
    if test.empty:
        log.warning("study: the split has no test side; no test-set evaluation")
        return summary.assign(**{k: math.nan for k in TEST_COLUMNS}, test_within_noise=None)
    predictions: dict[str, pd.DataFrame] = {}
    rows = []
    for cell in summary["cell"]:
        row = dict.fromkeys(TEST_COLUMNS, math.nan)
        rows.append(row)
        if cell not in models:
            continue
        run_dir = models[cell]
        try:
            predictions[cell] = predict_test_side(run_dir, test, out / "shared" / "prepared-test")
        except CxrlabError as err:
            log.warning("study: test evaluation of %s failed: %s", cell, err)
            continue
        row.update(test_run=run_dir.name, **score_test_side(config, test, run_dir, predictions[cell]))
    columns = {k: [r[k] for r in rows] for k in TEST_COLUMNS}
    out_summary = summary.assign(**{k: v for k, v in columns.items()})
    if best in predictions:
        patients = test.set_index("image")["patient_id"]
        for i, cell in enumerate(out_summary["cell"]):
            if cell != best and cell in predictions:
                p_value = paired_auc_p(predictions[best], predictions[cell], patients, config.n_boot, config.seed)
                out_summary.loc[i, "test_p_vs_best"] = math.nan if p_value is None else p_value
    out_summary["test_p_holm"] = [math.nan if p is None else p for p in holm(list(out_summary["test_p_vs_best"]))]
    out_summary["test_within_noise"] = [None if math.isnan(p) else bool(p >= ALPHA) for p in out_summary["test_p_holm"]]
    return out_summary
