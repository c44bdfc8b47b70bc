"""Per-class galleries of true/false positives and negatives with their heatmaps and confidence.

The papers' "what does the model think" panels: for each class, the model's most confident
hits and its mistakes, with where it looked and how its confidence spread over the classes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cxrlab.core.errors import InvalidImageError  # noqa: E402
from cxrlab.data.images import read_image, read_mask  # noqa: E402
from cxrlab.explain.gradcam import CamMethod, GradCamExplainer  # noqa: E402
from cxrlab.explain.overlay import cam_to_original, overlay  # noqa: E402
from cxrlab.models.classifier import CxrClassifier  # noqa: E402
from cxrlab.preprocess import PreprocessConfig, Preprocessor  # noqa: E402

log = logging.getLogger(__name__)
KINDS = ("true positive", "false positive", "false negative")


def select_examples(predictions: pd.DataFrame, class_name: str, per_kind: int = 3) -> dict[str, pd.DataFrame]:
    """For one class (or finding: ``label`` and ``predicted`` may list several, ``|``-joined): its most
    confident true positives, false positives and false negatives."""
    truth = predictions["label"].astype(str).str.split("|").map(lambda names: class_name in names)
    predicted = predictions["predicted"].astype(str).str.split("|").map(lambda names: class_name in names)
    picks = {"true positive": predictions[truth & predicted].sort_values(class_name, ascending=False),
             "false positive": predictions[~truth & predicted].sort_values(class_name, ascending=False),
             "false negative": predictions[truth & ~predicted].sort_values(class_name)}
    return {kind: rows.head(per_kind) for kind, rows in picks.items()}


def plot_gallery(model: CxrClassifier, preprocess: PreprocessConfig, predictions: pd.DataFrame, class_name: str,
                 path: Path, per_kind: int = 3, method: CamMethod = "gradcam", layer: str | None = None) -> Path | None:
    """One figure for ``class_name``: a row per kind, each tile the heatmap and the class confidences.

    Returns:
        The figure's path, or ``None`` when there is nothing to show.
    """
    examples = select_examples(predictions, class_name, per_kind)
    if all(rows.empty for rows in examples.values()):
        return None
    pre = Preprocessor(preprocess)
    names = list(model.class_names)
    fig, axes = plt.subplots(len(KINDS), per_kind * 2, figsize=(3.2 * per_kind, 3.1 * len(KINDS)),
                             gridspec_kw={"width_ratios": [3, 1.4] * per_kind}, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    with GradCamExplainer(model, method, layer) as cam:
        for r, kind in enumerate(KINDS):
            axes[r, 0].set_title(f"{kind}s", loc="left", fontsize=10, fontweight="bold")
            for c, row in enumerate(examples[kind].itertuples()):
                lung_path = str(getattr(row, "mask", "") or "")
                try:
                    processed = pre(row.image, lung_path or None)
                    original = read_image(row.image, max_pixels=preprocess.max_pixels, reduce_to=256).pixels
                    lungs = read_mask(lung_path, original.shape) if preprocess.lung_crop and lung_path else None
                except InvalidImageError as err:
                    log.warning("gallery: %s", err)
                    continue
                # the evidence for the prediction; a multi-label model's for this finding
                target = names.index(class_name if model.multilabel else row.predicted)
                heatmap, _ = cam.explain_image(processed.pixels, target, processed.mask)
                image_ax, bar_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
                image_ax.imshow(overlay(original, cam_to_original(heatmap, original.shape, preprocess, lungs)))
                image_ax.set_xlabel(Path(row.image).name[:28], fontsize=6)
                image_ax.text(2, 10, f"true {row.label}\npred {row.predicted}", fontsize=6, color="white",
                              va="top", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1})
                bar_ax.axis("on")
                values = [float(predictions.loc[row.Index, n]) for n in names]
                bar_ax.barh(range(len(names)), values, color=["tab:red" if n == class_name else "tab:blue" for n in names])
                bar_ax.set_yticks(range(len(names)), names, fontsize=6)
                bar_ax.set_xlim(0, 1)
                bar_ax.tick_params(axis="x", labelsize=6)
    fig.suptitle(f"{class_name}: where the model looked (Grad-CAM) and how confident it was", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
