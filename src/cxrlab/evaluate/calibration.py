"""Calibration: expected calibration error, reliability-diagram data, temperature scaling."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict:
    """Top-label reliability data: per equal-width confidence bin, mean confidence, accuracy, count."""
    y_true = np.asarray(y_true)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(index, confidence, n_bins) / counts
        acc = np.bincount(index, correct, n_bins) / counts
    return {"edges": edges.tolist(), "confidence": np.where(counts, conf, np.nan).tolist(),
            "accuracy": np.where(counts, acc, np.nan).tolist(), "count": counts.tolist()}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over top-label confidence bins."""
    bins = reliability_bins(y_true, probs, n_bins)
    counts = np.asarray(bins["count"], dtype=float)
    gaps = np.abs(np.nan_to_num(np.asarray(bins["accuracy"])) - np.nan_to_num(np.asarray(bins["confidence"])))
    return float((gaps * counts).sum() / max(counts.sum(), 1))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T > 0 minimising the negative log-likelihood of ``softmax(logits / T)``.

    Fit it on validation logits; apply it with :func:`apply_temperature` to test logits.
    """
    y_true = np.asarray(y_true)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y_true)), y_true].mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)``."""
    return softmax(np.asarray(logits) / temperature, axis=1)
