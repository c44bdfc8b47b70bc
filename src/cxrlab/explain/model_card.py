"""A model card (Mitchell et al., 2019) from a model file and the run folder beside it."""

from __future__ import annotations

import json
from pathlib import Path

from cxrlab.core.run_folder import ORIGIN, SPLITS, SUMMARY
from cxrlab.core.errors import CxrlabError
from cxrlab.data.manifest import read_table

NOTICE = "research use only - not for clinical diagnosis"
INTENDED_USE = ("Research on transfer learning and explanations for chest X-ray classification. Not a medical "
                "device: research use only, not for clinical diagnosis, triage or any decision about a patient.")
LIMITATIONS = ("Public chest X-ray sets confound class with source (hospital, scanner, burned-in text): a model can be "
               "right for the wrong reason. Check the per-source and leave-one-source-out figures and the Grad-CAM "
               "in-lung share before trusting any accuracy. Images unlike the training data are flagged (ood), not "
               "refused; a flag means the probabilities should not be read at all.")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _training_data(folder: Path) -> dict | None:
    """Images per side and class (and per source) from the run's ``splits.csv``."""
    try:
        frame = read_table(folder / SPLITS)
    except (CxrlabError, OSError):
        return None
    if not {"split", "label"} <= set(frame.columns):
        return None
    out = {"images": {side: {str(k): int(v) for k, v in part["label"].value_counts().sort_index().items()}
                      for side, part in frame.groupby("split")}}
    if "source" in frame.columns:
        out["sources"] = sorted(s for s in frame["source"].unique() if s)
    if "patient_id" in frame.columns:
        out["patients"] = int(frame["patient_id"].nunique())
    return out


def model_card(payload: dict, model_path: str | Path, parameters: int | None = None) -> dict:
    """The card as a JSON-ready dict: model, training data, validation and test figures, operating
    point, out-of-distribution check, intended use and limitations.

    Test figures (with patient-bootstrap 95% intervals) come from ``origin.json`` of a study's
    ``best-model`` folder; a model without them says so rather than quoting validation figures as test ones.
    """
    folder = Path(model_path).parent
    summary, origin = _json(folder / SUMMARY), _json(folder / ORIGIN)
    screening = payload.get("extra", {}).get("screening") or {}
    ood, fine, polarity = screening.get("ood"), screening.get("ood_fine"), screening.get("polarity")
    preprocess = payload.get("preprocess", {})
    val = summary.get("val") or {}
    return {
        "notice": NOTICE,
        "model": {"file": Path(model_path).name, "backbone": payload.get("backbone"),
                  "fine_tune": payload.get("fine_tune"), "head": payload.get("head"), "parameters": parameters,
                  "classes": payload.get("class_names"), "lung_attention": payload.get("lung_attention", False),
                  "input": {k: preprocess.get(k) for k in ("size", "contrast", "resize", "lung_crop", "artifacts")},
                  "cxrlab_version": payload.get("cxrlab_version")},
        "training_data": _training_data(folder),
        "study": {k: origin[k] for k in ("cell", "fold") if k in origin} or None,
        "ensemble": {"members": len(payload["members"]), "of": "the fold models of a cross-validated run; "
                                                                "probabilities averaged"} if payload.get("members") else None,
        "validation": {k: val.get(k) for k in ("accuracy", "auc_macro", "per_class")} if val else None,
        "out_of_fold": _out_of_fold(summary),
        "test": origin.get("test") or "not measured for this file: run 'cxrlab evaluate' on held-out patients",
        "operating_point": screening.get("operating_point") or "most probable class",
        "out_of_distribution": ({"method": ood.get("method", "mahalanobis"), "threshold": float(ood["threshold"]),
                                 "quantile_of_validation": float(ood["quantile"]),
                                 "mid_level_threshold": float(fine["threshold"]) if fine else None,
                                 "inverted_image_check": _polarity_card(polarity),
                                 "blank_rule": "grey-level spread (1st-99th percentile) under 4 of 255"}
                                if ood else None),
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
    }


def _polarity_card(polarity: dict | None) -> dict | None:
    if not polarity:
        return None
    method = {"shrinkage-lda": "shrinkage LDA on pooled features"}.get(
        polarity.get("method", ""), "logistic regression on pooled features")
    margin = float(polarity.get("val_margin", float("nan")))
    return {"method": method, "validation_accuracy": float(polarity["val_accuracy"]),
            "validation_margin_sd": None if margin != margin else round(margin, 2)}


def _out_of_fold(summary: dict) -> dict | None:
    """A cross-validated run's out-of-fold figures (each image predicted by a fold model that never saw its
    patient) with their 95% patient-bootstrap intervals, and the linear probe's beside them."""
    figures = summary.get("out_of_fold")
    if not figures:
        return None
    probe = (summary.get("baseline") or {}).get("out_of_fold", {}).get("pooled", {})
    return {"images": figures["n"], "patients": figures["patients"], "pooled": figures["pooled"],
            "per_source": figures["per_source"], "linear_probe": {k: v["value"] for k, v in probe.items()}}
