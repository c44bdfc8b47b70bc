"""Evaluation with explanations: composes the evaluate and explain layers (which never import
each other) into the one report ``cxrlab evaluate`` writes."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxrlab.core.defaults import DEFAULT_N_BOOT
from cxrlab.core.run_folder import model_file
from cxrlab.data.mask_provenance import mask_problem
from cxrlab.evaluate.runner import evaluate_run, write_report
from cxrlab.explain import (
    CamMethod,
    lesion_evidence,
    lung_evidence,
    plot_first_layer_filters,
    plot_gallery,
    plot_lung_evidence,
    summarise_lesion_evidence,
    summarise_lung_evidence,
)
from cxrlab.models import WeightsUnavailableError, create_classifier, load_model

log = logging.getLogger(__name__)


def evaluate_and_explain(run: str | Path, out: str | Path, *, data: str | Path | None = None,
                         splits: str | Path | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                         explanations: bool = True, method: CamMethod = "gradcam", layer: str | None = None,
                         segmenter: str | Path | None = None, allow_mixed_masks: bool = False) -> dict:
    """:func:`cxrlab.evaluate.runner.evaluate_run`, then :func:`add_explanations` (unless disabled)."""
    results = evaluate_run(run, out, data=data, splits=splits, n_boot=n_boot, seed=seed, segmenter=segmenter,
                           allow_mixed_masks=allow_mixed_masks)
    return add_explanations(results, Path(run), Path(out), method, layer, allow_mixed_masks) if explanations else results


def guidance(payload: dict) -> dict | None:
    """How a model was steered towards the lungs (``lung_attention``, ``attention_loss``), from its file;
    ``None`` for an unguided model. Its in-lung share then measures what it was trained on (circular)."""
    steered = (payload.get("extra") or {}).get("guidance") or {}
    return steered if steered.get("lung_attention") or steered.get("attention_loss") else None


def add_explanations(results: dict, run: Path, out: Path, method: CamMethod = "gradcam", layer: str | None = None,
                     allow_mixed_masks: bool = False) -> dict:
    """Add the Grad-CAM sections to an evaluation: in-lung evidence, the pointing game on lesion
    masks, galleries, first-layer filters.

    The in-lung share needs masks that pass the provenance rule (every image masked, one origin:
    :func:`cxrlab.data.mask_provenance.mask_problem`); otherwise it is left out with the reason,
    or with ``allow_mixed_masks`` computed and marked. A guided model's share is marked circular.

    Returns:
        ``results`` with ``lung_evidence``, ``lesion_evidence`` (images with lesion masks),
        ``extra_tables`` and more ``figures``; the report files are rewritten once.
    """
    out = Path(out)
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    model, preprocess, payload = load_model(model_file(run))
    figures = results.setdefault("figures", {})
    masked = "mask" in predictions.columns and (predictions["mask"] != "").any()
    problem = masked and mask_problem(predictions.assign(split="test"), "the in-lung share", "the evaluated images",
                                      "give every image a mask of one origin (cxrlab evaluate --segmenter, or a "
                                      "manifest from cxrlab segment crossfit)")
    if problem and not allow_mixed_masks:
        results["lung_evidence"] = {"n": 0, "left_out": problem}
        results.setdefault("warnings", []).append(f"in-lung share not computed: {problem}")
    elif masked:
        table = lung_evidence(model, preprocess, predictions, method, layer)
        table.to_csv(out / "lung_evidence.csv", index=False)
        summary = summarise_lung_evidence(table)
        if problem:
            summary["mask_problem"] = problem
            results.setdefault("warnings", []).append(f"in-lung share on masks that fail the provenance rule "
                                                      f"(--allow-mixed-masks): {problem}")
        if steered := guidance(payload):
            summary["circular"] = steered
            results.setdefault("warnings", []).append(
                "this model was trained to put its evidence inside the lung masks (" + ", ".join(
                    f"{k} {v}" for k, v in steered.items()) + "): its in-lung share measures what it was trained "
                "on (circular), not a check; compare faithfulness (ROAD) instead")
        results["lung_evidence"] = summary
        if summary["n"]:
            results["extra_tables"] = _lung_tables(summary)
            figures["Grad-CAM evidence inside the lungs"] = str(plot_lung_evidence(table, out / "lung_evidence.png"))
        else:
            log.warning("Grad-CAM gave no evidence (all-zero maps) for the images with masks")
    if "lesion" in predictions.columns and (predictions["lesion"] != "").any():
        results["lesion_evidence"] = _pointing_game(model, preprocess, predictions, out, method, layer)
        if results["lesion_evidence"][0]["n"]:
            results.setdefault("extra_tables", []).append(_lesion_table(results["lesion_evidence"]))
    for name in model.class_names:
        path = plot_gallery(model, preprocess, predictions, name, out / f"gallery_{name.replace('/', '-')}.png",
                            method=method, layer=layer)
        if path is not None:
            figures[f"{name}: true/false positives and false negatives"] = str(path)
    try:  # the starting weights, when they can be had offline
        reference = create_classifier(payload["backbone"], len(model.class_names))
    except WeightsUnavailableError:
        reference = None
    figures["first-layer filters: fine-tuned vs pretrained"] = str(
        plot_first_layer_filters(model, reference, out / "first_layer_filters.png"))
    write_report(results, out)
    return results


def _lung_tables(summary: dict) -> list[dict]:
    rows = [[group, str(v["n"]), f"{v['median']:.2f}", str(v["below_half"])] for group, v in summary["groups"].items()]
    return [
        {"title": f"Grad-CAM evidence inside the lungs ({summary['n']} test images with lung masks; median share "
                  f"{summary['median']:.2f}; evidence spread evenly over what the model sees would score a median "
                  f"{summary['median_even_share']:.2f}: the lungs' share of the image, or of a lung-cropping model's "
                  "crop box)" + (". CIRCULAR: this model was trained to put its evidence inside these masks, so the "
                                 "share is what it was trained on, not a check" if summary.get("circular") else "")
                  + (f". MASKS FAIL THE PROVENANCE RULE: {summary['mask_problem']}" if summary.get("mask_problem") else ""),
         "header": ["true class / prediction", "images", "median in-lung share", "mostly outside (< 0.5)"], "rows": rows},
        {"title": "Images whose evidence lies mostly outside the lungs (text, markers, devices, borders?)",
         "header": ["image", "true", "predicted", "in-lung share"],
         "rows": [[Path(r["image"]).name, r["label"], r["predicted"], f"{r['in_lung_share']:.2f}"]
                  for r in summary["mostly_outside"][:30]]},
    ]


def _pointing_game(model, preprocess, predictions: pd.DataFrame, out: Path, method: CamMethod,
                   layer: str | None) -> list[dict]:
    """The pointing game with the report's maps and, for contrast, with LayerCAM on the finer grid
    (which localised the phantoms' opacities far better than Grad-CAM on the last block)."""
    settings = [(method, layer or "last")]
    if settings[0] != ("layercam", "fine"):
        settings.append(("layercam", "fine"))
    summaries, frames = [], []
    for cam_method, cam_layer in settings:
        table = lesion_evidence(model, preprocess, predictions, cam_method, cam_layer)
        frames.append(table.assign(method=cam_method, layer=cam_layer))
        summaries.append({**summarise_lesion_evidence(table), "method": cam_method, "layer": cam_layer})
    pd.concat(frames).to_csv(out / "lesion_evidence.csv", index=False)
    return summaries


def _lesion_table(summaries: list[dict]) -> dict:
    rows = [[f"{s['method']} @ {s['layer']}", label, str(v["n"]), f"{v['hit_rate']:.2f}", f"{v['median_lesion_share']:.3f}",
             f"{v['median_lesion_area']:.3f}"] for s in summaries for label, v in s["per_class"].items()]
    return {"title": f"Does the heatmap fall on the finding? Pointing game on {summaries[0]['n']} test images with lesion "
                     f"masks: a hit is a map peak within {summaries[0]['tolerance']:.3f} of the image side of the "
                     "lesion. A low hit rate with high accuracy means the map does not show where the model looks, "
                     "or the model looks elsewhere.",
            "header": ["map", "true class", "images", "hit rate", "median share of the map on the lesion",
                       "median lesion area (share of image)"], "rows": rows}
