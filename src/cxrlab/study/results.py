"""A study's results: one row per run, mean ± sd per cell, and which differences are noise.

Comparing configurations by their mean over folds alone ranks them on differences smaller than
the noise. Folds share most of their training data, so the plain paired t-test is too
confident; the corrected resampled t-test (Nadeau & Bengio, 2003) inflates the variance by
``n_val / n_train`` to account for it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from cxrlab.data.classes import POSITIVE_CLASS
from cxrlab.evaluate.bootstrap import holm

ALPHA = 0.05


def run_row(cell_id: str, factors: dict, fold: int, summary: dict | None, error: str | None = None,
            repeat: int = 0, run: str | None = None) -> dict:
    """One row of the results table from a run's ``summary.json`` (or its error); ``run`` is the run's
    folder name in its cell's (default ``fold<k>``)."""
    row = {"cell": cell_id, **{f"factor.{k}": str(v) for k, v in factors.items()}, "fold": fold, "repeat": repeat,
           "run": run or f"fold{fold}"}
    if summary is None or summary.get("status") != "ok":
        return {**row, "status": "failed", "error": error or (summary or {}).get("status", "unknown")}
    val = summary.get("val", {})
    per_class = val.get("per_class", {})
    positive = per_class.get(POSITIVE_CLASS, next(iter(per_class.values()), {}))
    return {**row, "status": "ok", "error": "", "accuracy": val.get("accuracy"), "auc_macro": val.get("auc_macro"),
            "sensitivity": positive.get("sensitivity"), "specificity": positive.get("specificity"),
            "best_val_loss": summary.get("best_val_loss"), "best_epoch": summary.get("best_epoch"),
            "selection_score": (summary.get("selection") or {}).get("score"),
            "params": summary.get("params"), "trainable_params": summary.get("trainable_params"),
            "train_images": summary.get("images", {}).get("train"), "val_images": summary.get("images", {}).get("val"),
            "seconds_per_epoch": summary.get("timing", {}).get("seconds_per_epoch")}


METRICS = ("accuracy", "sensitivity", "specificity", "auc_macro")


def best_run(ok: pd.DataFrame) -> pd.Series:
    """The row of the run that scored best by its own selection rule (the highest ``selection_score``;
    runs recorded before it existed: the lowest validation loss)."""
    if "selection_score" in ok.columns and ok["selection_score"].notna().any():
        return ok.sort_values("selection_score", ascending=False, kind="stable").iloc[0]
    return ok.sort_values("best_val_loss", kind="stable").iloc[0]


def aggregate(table: pd.DataFrame, num_runs: int) -> pd.DataFrame:
    """Per cell: mean and sd over its runs (folds × repeats) of each metric and, with repeats, the sd
    over seeds of the per-seed mean over folds; parameters, s/epoch, finished/failed runs."""
    rows = []
    for cell, part in table.groupby("cell", sort=False):
        ok = part[part["status"] == "ok"]
        row = {"cell": cell, **{c: part[c].iloc[0] for c in part.columns if c.startswith("factor.")},
               "folds_ok": int(len(ok)), "folds_failed": int((part["status"] == "failed").sum())}
        repeats = ok["repeat"].nunique() if "repeat" in ok else 1
        for metric in METRICS:
            values = pd.to_numeric(ok[metric], errors="coerce").dropna() if metric in ok else pd.Series(dtype=float)
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            if repeats > 1:
                per_seed = pd.to_numeric(ok[metric], errors="coerce").groupby(ok["repeat"]).mean().dropna()
                row[f"{metric}_sd_seeds"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan
        for column in ("params", "trainable_params"):
            row[column] = int(ok[column].iloc[0]) if len(ok) and column in ok else None
        row["seconds_per_epoch"] = float(ok["seconds_per_epoch"].mean()) if len(ok) and "seconds_per_epoch" in ok else math.nan
        row["complete"] = row["folds_ok"] == num_runs
        rows.append(row)
    return pd.DataFrame(rows)


def corrected_resampled_ttest(a: np.ndarray, b: np.ndarray, test_train_ratio: float) -> dict:
    """Nadeau & Bengio's corrected resampled t-test on paired per-fold scores.

    Args:
        a, b: Scores of two configurations on the same folds.
        test_train_ratio: Validation images / training images of a fold (≈ 1 / (k - 1)).

    Returns:
        ``{"difference", "t", "p_value", "folds"}`` (two-sided; ``p_value`` 1.0 when the
        differences do not vary and are all zero).
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    k = len(d)
    if k < 2:
        return {"difference": float(d.mean()) if k else math.nan, "t": math.nan, "p_value": math.nan, "folds": k}
    var = d.var(ddof=1)
    mean = float(d.mean())
    if var == 0:
        return {"difference": mean, "t": 0.0 if mean == 0 else math.inf, "p_value": 1.0 if mean == 0 else 0.0, "folds": k}
    t = mean / math.sqrt((1 / k + test_train_ratio) * var)
    return {"difference": mean, "t": float(t), "p_value": float(2 * stats.t.sf(abs(t), df=k - 1)), "folds": k}


def compare_to_best(table: pd.DataFrame, summary: pd.DataFrame, metric: str) -> tuple[str | None, pd.DataFrame]:
    """The best complete cell by the mean of ``metric``, and every other cell's test against it
    (``p_vs_best``), Holm-adjusted across the cells (``p_vs_best_holm``; ``within_noise`` follows it)."""
    complete = summary[summary["complete"]].dropna(subset=[f"{metric}_mean"])
    if complete.empty:
        return None, summary.assign(p_vs_best=math.nan, p_vs_best_holm=math.nan, within_noise=None)
    best = str(complete.sort_values(f"{metric}_mean", ascending=False)["cell"].iloc[0])
    ok = table[table["status"] == "ok"]
    scores = ok.pivot_table(index="fold", columns="cell", values=metric, aggfunc="mean")  # repeats: their mean
    ratio = float((ok["val_images"] / ok["train_images"]).mean()) if len(ok) else math.nan
    p_values = []
    for cell in summary["cell"]:
        if cell == best or cell not in scores or best not in scores:
            p_values.append(math.nan)
            continue
        pair = scores[[best, cell]].dropna()
        p_values.append(corrected_resampled_ttest(pair[best].to_numpy(), pair[cell].to_numpy(), ratio)["p_value"])
    adjusted = [math.nan if p is None else p for p in holm(p_values)]  # NaN (untested) stays out of the family
    noise = [None if math.isnan(p) else bool(p >= ALPHA) for p in adjusted]
    return best, summary.assign(p_vs_best=p_values, p_vs_best_holm=adjusted, within_noise=noise)
