"""Validation metrics logged while training: accuracy, per-class sensitivity/specificity/AUC.

The full evaluation report (CIs, calibration, ROC/PR curves) is issue 4's ``evaluate`` layer;
these are the numbers early stopping and the run summary need, from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score


def auc_interval(auc: float, positives: int, negatives: int) -> tuple[float, float]:
    """Approximate 95% interval of an ROC AUC from Hanley & McNeil's standard error (Radiology 1982).

    Hand-written because scikit-learn gives no AUC uncertainty; it is the quick, image-level figure a
    training summary needs to say how well a small validation side can rank epochs (the evaluation
    reports use patient-bootstrap intervals instead).
    """
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives)
    half = 1.96 * float(np.sqrt(max(variance, 0.0)))
    return max(0.0, auc - half), min(1.0, auc + half)


def classification_summary(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, macro AUC and, per class, sensitivity, specificity and one-vs-rest AUC.

    Args:
        y_true: ``(N,)`` int class indices.
        probs: ``(N, C)`` probabilities (rows sum to 1).
        class_names: ``C`` names in column order.

    Returns:
        ``{"accuracy", "auc_macro", "f1_macro", "per_class": {name: {"sensitivity", "specificity", "auc",
        "support"}}, "confusion_matrix"}``; an AUC is ``None`` when the class is absent or alone in
        ``y_true``; ``auc_interval`` its approximate 95% interval (:func:`auc_interval`); macro-F1
        averages every class (an absent class scores 0, as scikit-learn's).
    """
    y_true = np.asarray(y_true)
    pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    cm = confusion_matrix(y_true, pred, labels=labels)
    per_class, aucs = {}, []
    for i, name in enumerate(class_names):
        tp, fn = cm[i, i], cm[i].sum() - cm[i, i]
        fp = cm[:, i].sum() - tp
        tn = cm.sum() - tp - fn - fp
        positives = y_true == i
        auc = float(roc_auc_score(positives, probs[:, i])) if 0 < positives.sum() < len(y_true) else None
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {"sensitivity": float(tp / (tp + fn)) if tp + fn else None,
                           "specificity": float(tn / (tn + fp)) if tn + fp else None,
                           "auc": auc, "support": int(positives.sum())}
        if auc is not None:
            per_class[name]["auc_interval"] = list(auc_interval(auc, int(positives.sum()),
                                                                int((~positives).sum())))
    f1 = f1_score(y_true, pred, labels=labels, average="macro", zero_division=0) if len(y_true) else None
    return {"accuracy": float((pred == y_true).mean()) if len(y_true) else None,
            "auc_macro": float(np.mean(aucs)) if aucs else None,
            "f1_macro": float(f1) if f1 is not None else None, "per_class": per_class,
            "confusion_matrix": cm.tolist()}
