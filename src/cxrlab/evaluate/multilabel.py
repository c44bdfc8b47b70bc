"""Evaluation of a multi-label model (independent findings, as ChestX-ray14's and CheXpert's): per
finding ROC AUC and PR AUC with 95% patient-bootstrap intervals, the mean AUC, sensitivity and
specificity at a threshold per finding chosen on validation data (never on the scored images),
and the same per source. Images whose value of a finding is unknown are left out of its figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlab.evaluate.bootstrap import bootstrap_cis
from cxrlab.evaluate.metrics import _average_precision, binary_auc
from cxrlab.evaluate.plots import plot_roc_pr
from cxrlab.models.predictor import Predictions
from cxrlab.evaluate.report import _fmt, html_page, markdown_page
from cxrlab.evaluate.metrics import compute_multilabel_metrics
from cxrlab.evaluate.screening_reference import finding_operating_points

CI_KEYS = ("roc_auc", "pr_auc", "sensitivity", "specificity")


def _interval_statistics(p: Predictions, thresholds: list[float]):
    y, probs = p.y_true.astype(float), p.probs

    def statistics(rows: np.ndarray) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        aucs = []
        for i, name in enumerate(p.class_names):
            known = rows[~np.isnan(y[rows, i])]
            truth, score = y[known, i] == 1, probs[known, i]
            out[f"{name}|roc_auc"] = auc = binary_auc(truth, score)
            out[f"{name}|pr_auc"] = _average_precision(truth, score)
            called = score >= thresholds[i]
            out[f"{name}|sensitivity"] = float(called[truth].mean()) if truth.any() else None
            out[f"{name}|specificity"] = float((~called[~truth]).mean()) if (~truth).any() else None
            if auc is not None:
                aucs.append(auc)
        out["mean_roc_auc"] = float(np.mean(aucs)) if aucs else None
        return out

    return statistics


def _thresholds(val: Predictions | None, payload: dict, names: tuple[str, ...]) -> tuple[list[float], str]:
    """Per-finding thresholds from the validation side, else from the model file, else 0.5."""
    if val is not None:
        chosen = finding_operating_points(val.y_true, val.probs, names, "validation data")
        source = "validation data"
    else:
        chosen = ((payload.get("extra") or {}).get("screening") or {}).get("operating_point") or {}
        source = f"the model's {chosen.get('chosen_on', 'validation')} (kept in its file)" if chosen else "none (0.5)"
    per = chosen.get("per_finding") or {}
    return [float(per[n]) if per.get(n) is not None else 0.5 for n in names], source


def multilabel_results(test: Predictions, val: Predictions | None, payload: dict, n_boot: int, seed: int) -> dict:
    """``metrics`` (per finding at the chosen thresholds), ``ci`` (patient bootstrap), ``per_source``."""
    thresholds, chosen_on = _thresholds(val, payload, test.class_names)
    metrics = compute_multilabel_metrics(test.y_true, test.probs, test.class_names, thresholds)
    cis = bootstrap_cis(_interval_statistics(test, thresholds), test.frame["patient_id"].to_numpy(), n_boot, seed)
    per_source = {}
    for source, rows in test.frame.groupby("source").groups.items():
        idx = np.asarray(list(rows))
        m = compute_multilabel_metrics(test.y_true[idx], test.probs[idx], test.class_names, thresholds)
        per_source[str(source)] = {"n": m["n"], "mean_roc_auc": m["macro"]["roc_auc"],
                                   **{f"{n} roc_auc": m["per_class"][n]["roc_auc"] for n in test.class_names}}
    return {"task": "multilabel", "metrics": metrics, "thresholds_chosen_on": chosen_on, "per_source": per_source,
            "ci": {"mean_roc_auc": cis["mean_roc_auc"],
                   "per_class": {n: {k: cis[f"{n}|{k}"] for k in CI_KEYS} for n in test.class_names}}}


def multilabel_figures(test: Predictions, out: Path) -> dict[str, Path]:
    """ROC and PR curves per finding."""
    return {"ROC and PR curves per finding": plot_roc_pr(test.y_true, test.probs, test.class_names, out / "roc_pr.png")}


def _tables(results: dict) -> list:
    m, ci = results["metrics"], results["ci"]
    rows = []
    for name, pc in m["per_class"].items():
        c = ci["per_class"][name]
        rows.append([name, _fmt(pc["roc_auc"], c["roc_auc"]), _fmt(pc["pr_auc"], c["pr_auc"]), f"{pc['threshold']:.3f}",
                     _fmt(pc["sensitivity"], c["sensitivity"]), _fmt(pc["specificity"], c["specificity"]),
                     str(pc["support"]), str(pc["known"])])
    rows.append(["*mean*", _fmt(m["macro"]["roc_auc"], ci["mean_roc_auc"]), _fmt(m["macro"]["pr_auc"]), "",
                 _fmt(m["macro"]["sensitivity"]), _fmt(m["macro"]["specificity"]), "", str(m["n"])])
    names = list(m["per_class"])
    sources = [[s, str(v["n"]), _fmt(v["mean_roc_auc"]), *(_fmt(v[f"{n} roc_auc"]) for n in names)]
               for s, v in results["per_source"].items()]
    return [(f"Per finding (95% CI by bootstrap over patients; thresholds chosen on {results['thresholds_chosen_on']})",
             ["finding", "ROC AUC", "PR AUC", "threshold", "sensitivity", "specificity", "positives", "known"], rows),
            ("Per source (ROC AUC)", ["source", "images", "mean", *names], sources)]


def _lines(results: dict) -> list[str]:
    m, model = results["metrics"], results["model"]
    lines = [f"Model: `{model['backbone']}` (fine-tuned blocks: {model['fine_tune']}), multi-label over "
             f"{len(m['per_class'])} findings; evaluated on {m['n']} images of {results['patients']} patients "
             f"({results['side']}).",
             f"Mean ROC AUC {_fmt(m['macro']['roc_auc'], results['ci']['mean_roc_auc'])}."]
    return lines + [f"**Warning:** {w}" for w in results["warnings"]]


def render_multilabel(results: dict, figures: dict[str, Path], lists: list) -> tuple[str, str]:
    """``(Markdown, HTML)`` of a multi-label evaluation."""
    title = "Evaluation report (multi-label)"
    return (markdown_page(title, _lines(results), _tables(results), figures, lists),
            html_page(title, _lines(results), _tables(results), figures, lists))
