"""Operating points for a binary score: chosen on validation data, applied to test data.

Training stores one in the model file (the threshold on P(COVID-19) that screening applies);
``evaluate`` chooses them again on a validation side it is given.

Choosing the threshold on the test set itself would report an optimistic sensitivity and
specificity; cxrlab always picks it on validation predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import roc_curve

from cxrlab.core.errors import ConfigError

Method = Literal["youden", "sensitivity"]


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold on P(positive) and how it was chosen."""

    threshold: float
    method: Method
    target: float | None = None

    def apply(self, y_true: np.ndarray, scores: np.ndarray) -> dict:
        """Sensitivity, specificity, and counts at this threshold (``score >= threshold`` is positive)."""
        y_true = np.asarray(y_true).astype(bool)
        predicted = np.asarray(scores) >= self.threshold
        tp, fn = int((predicted & y_true).sum()), int((~predicted & y_true).sum())
        tn, fp = int((~predicted & ~y_true).sum()), int((predicted & ~y_true).sum())
        return {"threshold": self.threshold, "method": self.method, "target": self.target,
                "sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
                "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def choose_operating_point(y_true: np.ndarray, scores: np.ndarray, method: Method = "youden",
                           target: float = 0.95) -> OperatingPoint:
    """Pick a threshold on validation predictions.

    Args:
        y_true: ``(N,)`` 0/1 labels.
        scores: ``(N,)`` P(positive).
        method: ``youden`` (maximise sensitivity + specificity - 1) or ``sensitivity`` (the
            highest threshold whose sensitivity is at least ``target``).
        target: Target sensitivity for ``method="sensitivity"``.

    Raises:
        ConfigError: one class only, or an unknown method.
    """
    y_true = np.asarray(y_true).astype(int)
    if y_true.min() == y_true.max():
        raise ConfigError("operating point: validation data need both positives and negatives")
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf
    if method == "youden":
        best = int(np.argmax(tpr - fpr))
        return OperatingPoint(float(thresholds[best]), "youden")
    if method == "sensitivity":
        if not 0 < target <= 1:
            raise ConfigError(f"operating point: target sensitivity must be in (0, 1], got {target}")
        best = int(np.argmax(tpr >= target))  # first (highest threshold) reaching the target
        return OperatingPoint(float(thresholds[best]), "sensitivity", target)
    raise ConfigError(f"operating point: method must be youden or sensitivity, got {method!r}")
