"""Right for the right reason: how much of the Grad-CAM evidence lies inside the lungs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cxrlab.explain.gradcam import CamMethod  # noqa: E402
from cxrlab.explain.masked_maps import maps_with_masks, rows_with  # noqa: E402
from cxrlab.explain.overlay import in_mask_share  # noqa: E402
from cxrlab.models.classifier import CxrClassifier  # noqa: E402
from cxrlab.preprocess import PreprocessConfig  # noqa: E402

OUTSIDE_THRESHOLD = 0.5  # below this share, most of the evidence lies outside the lungs


def lung_evidence(model: CxrClassifier, preprocess: PreprocessConfig, frame: pd.DataFrame,
                  method: CamMethod = "gradcam", layer: str | None = None) -> pd.DataFrame:
    """Share of Grad-CAM mass inside the lung mask for every row of ``frame`` that has a mask.

    Args:
        model: The classifier.
        preprocess: Its preprocessing.
        frame: Rows with ``image``, ``mask``, ``label`` and ``predicted``.
        method: CAM method.
        layer: Target layer (``last``, ``fine`` or a module name; default: the model's).

    Returns:
        ``image, label, predicted, correct, in_lung_share, lung_area, even_share`` per image with a
        readable mask (explaining the predicted class); ``lung_area`` is the share of the image the
        lungs cover; ``even_share`` is this model's own baseline, what a map spread evenly over the
        region it sees would score: ``lung_area`` for a whole-image model, the lungs' share of the
        crop box for a lung-cropping one (its map is 0 outside the box, so ``lung_area`` would flatter it).
    """
    index = {c: i for i, c in enumerate(model.class_names)}
    out = []
    for row, heatmap, mask, region in maps_with_masks(model, preprocess, rows_with(frame, "mask"), "mask",
                                                      lambda row: index[row.predicted], method, layer):
        share = in_mask_share(heatmap, mask)
        out.append({"image": row.image, "label": row.label, "predicted": row.predicted,
                    "correct": row.label == row.predicted,
                    "in_lung_share": float("nan") if share is None else share,  # None: an all-zero map
                    "lung_area": float(mask.mean()), "even_share": float(mask[region].mean()) if region.any() else 0.0})
    return pd.DataFrame(out, columns=["image", "label", "predicted", "correct", "in_lung_share", "lung_area",
                                      "even_share"])


def summarise_lung_evidence(table: pd.DataFrame) -> dict:
    """Median in-lung share per true class and per correct/incorrect prediction, and the images
    whose evidence lies mostly outside the lungs."""
    no_evidence = int(table["in_lung_share"].isna().sum())
    table = table.dropna(subset=["in_lung_share"])
    if table.empty:
        return {"n": 0, "no_evidence": no_evidence}
    groups = {}
    for (label, correct), part in table.groupby(["label", "correct"]):
        groups[f"{label} / {'correct' if correct else 'wrong'}"] = {
            "n": int(len(part)), "median": float(part["in_lung_share"].median()),
            "below_half": int((part["in_lung_share"] < OUTSIDE_THRESHOLD).sum())}
    outside = table[table["in_lung_share"] < OUTSIDE_THRESHOLD].sort_values("in_lung_share")
    return {"n": int(len(table)), "median": float(table["in_lung_share"].median()),
            "median_lung_area": float(table["lung_area"].median()),
            "median_even_share": float(table["even_share"].median()) if "even_share" in table else None,
            "median_excess": float((table["in_lung_share"] - table["even_share"]).median()) if "even_share" in table else None,
            "no_evidence": no_evidence, "groups": groups,
            "mostly_outside": outside[["image", "label", "predicted", "in_lung_share"]].to_dict("records")}


def plot_lung_evidence(table: pd.DataFrame, path: Path) -> Path:
    """Histogram of the in-lung share, correct vs wrong predictions."""
    fig, axis = plt.subplots(figsize=(6, 3.6))
    bins = [i / 20 for i in range(21)]
    for correct, colour in ((True, "tab:green"), (False, "tab:red")):
        part = table[table["correct"] == correct]["in_lung_share"].dropna()
        if len(part):
            axis.hist(part, bins=bins, alpha=0.6, color=colour, label=f"{'correct' if correct else 'wrong'} ({len(part)})")
    axis.axvline(OUTSIDE_THRESHOLD, color="grey", linestyle=":")
    axis.set(xlabel="share of Grad-CAM evidence inside the lung mask", ylabel="images",
             title="right for the right reason?")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
