"""Report figures (PNG): confusion matrices, ROC and PR curves, reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, precision_recall_curve, roc_curve  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """Counts and row-normalised confusion matrices side by side (rows = true class)."""
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for axis, matrix, title, fmt in ((axes[0], cm, "counts", "{:.0f}"), (axes[1], normalised, "row-normalised", "{:.2f}")):
        axis.imshow(matrix, cmap="Blues", vmin=0)
        axis.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
        axis.set_yticks(range(len(class_names)), class_names)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"confusion matrix ({title})")
        limit = matrix.max() / 2 if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            axis.text(j, i, fmt.format(value), ha="center", va="center", color="white" if value > limit else "black")
    return _save(fig, path)


def plot_roc_pr(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC and precision-recall curves per class, with AUC / AP in the legend; for
    multi-label ``(N, F)`` targets (NaN: unknown) one curve per finding on the images that know it."""
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    y_true = np.asarray(y_true)
    for i, name in enumerate(class_names):
        known = ~np.isnan(y_true[:, i]) if y_true.ndim == 2 else np.ones(len(y_true), bool)
        positives = (y_true[:, i] == 1)[known] if y_true.ndim == 2 else y_true == i
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[known, i])
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(positives, probs[known, i])
        pr_ax.plot(recall, precision, label=f"{name} (AP {-np.sum(np.diff(recall) * precision[:-1]):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc_ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (one vs rest)")
    pr_ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="precision-recall", ylim=(0, 1.02))
    roc_ax.legend(loc="lower right")
    pr_ax.legend(loc="lower left")
    return _save(fig, path)


def plot_reliability(bins: dict, ece: float, path: Path, title: str = "reliability") -> Path:
    """Reliability diagram: accuracy vs confidence per bin, with bin counts."""
    edges = np.asarray(bins["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    accuracy = np.asarray(bins["accuracy"], dtype=float)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.bar(centers, np.nan_to_num(accuracy), width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy")
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    top.set(ylabel="accuracy", title=f"{title} (ECE {ece:.3f})", ylim=(0, 1))
    top.legend(loc="upper left")
    bottom.bar(centers, bins["count"], width=edges[1] - edges[0], color="grey")
    bottom.set(xlabel="confidence (top class)", ylabel="images")
    return _save(fig, path)
