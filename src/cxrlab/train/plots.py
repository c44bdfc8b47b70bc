"""Training-curve figure from ``metrics.csv``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss (train, validation) and validation accuracy/AUC per epoch; ``None`` without data."""
    if not Path(metrics_csv).exists():
        return None
    frame = pd.read_csv(metrics_csv)
    if frame.empty:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(frame["epoch"], frame["train_loss"], marker="o", label="train loss")
    left.plot(frame["epoch"], frame["val_loss"], marker="o", label="validation loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(frame["epoch"], frame["val_acc"], marker="o", label="validation accuracy")
    right.plot(frame["epoch"], frame["val_auc"], marker="o", label="validation AUC (macro)")
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
