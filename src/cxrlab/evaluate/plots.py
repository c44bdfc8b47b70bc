"""Figures (PNG): confusion matrices, ROC and PR curves, reliability diagram, training curves, masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import auc, precision_recall_curve, roc_curve  # noqa: E402

from cxrlab.evaluate.registry import current_log_keys, get_metric, log_key  # noqa: E402


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


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss (train, validation) and validation accuracy/AUC per epoch; ``None`` without data."""
    if not Path(metrics_csv).exists():
        return None
    frame = current_log_keys(pd.read_csv(metrics_csv))  # an earlier version's val_acc and the like too
    if frame.empty:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(frame["epoch"], frame["train_loss"], marker="o", label="train loss")
    left.plot(frame["epoch"], frame["val_loss"], marker="o", label="validation loss")
    left.set_xlabel("epoch")
    left.legend()
    for name in ("accuracy", "auc_macro"):
        right.plot(frame["epoch"], frame[log_key(name)], marker="o", label=f"validation {get_metric(name).display}")
    right.set_xlabel("epoch")
    right.set_ylim(0, 1.02)
    right.legend()
    best = frame.loc[frame["val_loss"].idxmin()] if frame["val_loss"].notna().any() else None
    if best is not None:
        left.plot([best["epoch"]], [best["val_loss"]], marker="*", markersize=14, color="black", linestyle="",
                  label=f"best (epoch {int(best['epoch'])})")
        left.legend()
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for boundary in frame.index[frame["phase"].diff().fillna(0) != 0]:
        for axis in (left, right):
            axis.axvline(frame.loc[boundary, "epoch"] - 0.5, color="grey", linestyle=":")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def plot_mask_overlays(images, truth, predicted, titles: list[str], out_png: Path, limit: int = 8) -> Path | None:
    """Up to ``limit`` images with the given lung mask's outline (green) and the predicted one (red)."""
    import cv2
    import numpy as np

    count = min(limit, len(images))
    if count == 0:
        return None
    fig, axes = plt.subplots(1, count, figsize=(2.4 * count, 2.8), squeeze=False)
    for axis, image, t, p, title in zip(axes[0], images, truth, predicted, titles, strict=False):
        rgb = np.repeat(image[..., None], 3, axis=2).copy()
        for mask, colour in ((t, (0, 220, 0)), (p, (230, 0, 0))):
            contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(rgb, contours, -1, colour, max(1, image.shape[0] // 128))
        axis.imshow(rgb)
        axis.set_title(title, fontsize=7)
        axis.axis("off")
    fig.suptitle("test images: given lung mask (green), predicted after clean-up (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
