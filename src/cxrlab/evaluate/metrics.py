"""What the evaluation adds to the metrics table (:func:`cxrlab.train.metrics.compute_metrics`, defined
once for training and evaluation): the fast figures a bootstrap replicate needs, and the
COVID-19-vs-rest view."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from cxrlab.data.classes import POSITIVE_CLASS
from cxrlab.train.metrics import PER_CLASS_KEYS, compute_metrics, safe_div

__all__ = ["PER_CLASS_KEYS", "accuracy_and_macro_auc", "binary_auc", "binary_view", "compute_metrics",
           "interval_metrics"]

def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic from mid-ranks (ties count half, as in scikit-learn)."""
    n_pos = int(positive.sum())
    if not 0 < n_pos < len(positive):
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(positive) - n_pos)))


def _average_precision(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision as scikit-learn's ``average_precision_score``: precision at each distinct
    threshold, weighted by the recall it adds."""
    if not 0 < positive.sum() < len(positive):
        return None
    order = np.argsort(-scores, kind="mergesort")
    ends = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]  # last row of each tied score
    tps = np.cumsum(positive[order])[ends]
    precision, recall = tps / (ends + 1), tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def accuracy_and_macro_auc(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """``{"accuracy", "auc_macro"}`` as :func:`compute_metrics` defines them (macro AUC: the mean of the
    one-vs-rest AUCs defined on these rows), without the rest of the table: what a bootstrap
    replicate needs. The AUC is the Mann-Whitney statistic from mid-ranks (a test checks it
    against scikit-learn's): 100x faster than ``roc_auc_score``'s validated path, which made 1000
    replicates take seconds per configuration."""
    y_true = np.asarray(y_true, dtype=int)
    aucs = [a for i in range(probs.shape[1]) if (a := binary_auc(y_true == i, probs[:, i])) is not None]
    return {"accuracy": float((probs.argmax(axis=1) == y_true).mean()) if len(y_true) else None,
            "auc_macro": float(np.mean(aucs)) if aucs else None}


def interval_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """The figures ``evaluate`` puts intervals on, as :func:`compute_metrics` defines them, without
    the rest of the table: ``{"accuracy", "macro_roc_auc", "macro_f1", "per_class": {name:
    {"sensitivity", "specificity", "roc_auc", "pr_auc"}}}`` (``None`` where undefined). A bootstrap replicate of 53
    images took 6 ms through :func:`compute_metrics` (scikit-learn's validated paths) and takes
    0.2 ms here; a test checks both agree."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    k = probs.shape[1]
    cm = np.bincount(y_true * k + probs.argmax(axis=1), minlength=k * k).reshape(k, k)
    per_class, f1s = {}, []
    for i, name in enumerate(class_names):
        tp, fn, fp = cm[i, i], cm[i].sum() - cm[i, i], cm[:, i].sum() - cm[i, i]
        tn = cm.sum() - tp - fn - fp
        positive = y_true == i
        per_class[name] = {"sensitivity": safe_div(tp, tp + fn), "specificity": safe_div(tn, tn + fp),
                           "roc_auc": binary_auc(positive, probs[:, i]),
                           "pr_auc": _average_precision(positive, probs[:, i])}
        if 2 * tp + fp + fn:  # undefined for a class neither present nor predicted, as in compute_metrics
            f1s.append(2 * tp / (2 * tp + fp + fn))
    aucs = [m["roc_auc"] for m in per_class.values() if m["roc_auc"] is not None]
    return {"accuracy": float(np.trace(cm) / cm.sum()) if len(y_true) else None,
            "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
            "macro_f1": float(np.mean(f1s)) if f1s else None, "per_class": per_class}


def binary_view(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str],
                positive: str = POSITIVE_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """The COVID-vs-rest view of multi-class predictions: ``(is_positive, P(positive))``.

    Raises:
        KeyError: ``positive`` is not a class.
    """
    index = list(class_names).index(positive)
    return (np.asarray(y_true) == index).astype(int), np.asarray(probs)[:, index]
