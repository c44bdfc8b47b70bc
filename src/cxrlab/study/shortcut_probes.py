"""Shortcut audit, parts two and three, on the study's best model.

* **Source probe**: can the model's features (and, for contrast, the untouched pretrained
  backbone's) tell which source an image came from — over all images and within one class?
* **Lungs**: on test images with lung masks, the share of Grad-CAM evidence inside the lungs,
  and the model's calls on lung-only images and on images with the lungs blacked out.

Each part writes plain-words warnings when it points to shortcut learning. Part one
(leave-one-source-out) is in :mod:`cxrlab.study.shortcuts`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from cxrlab.evaluate.masked_inputs import (
    ALPHA,
    VARIANTS,
    masked_input_predictions,
    summarise_masked_inputs,
)
from cxrlab.evaluate.source_probe import source_probe
from cxrlab.data.mask_provenance import mask_problem
from cxrlab.explain import lung_evidence, summarise_lung_evidence
from cxrlab.models import WeightsUnavailableError, create_classifier
from cxrlab.models.ood import pooled_features
from cxrlab.models.predictor import Predictor
from cxrlab.study.config import StudyConfig
from cxrlab.workflows.predictions import preprocess_key

log = logging.getLogger(__name__)
WEAK_SUBSET = 0.8  # share of the commonest class among masked test images above which the lung checks say they are weak
ASSOCIATION_WARNING = 0.3  # Cramér's V of source × class at which classes are "unevenly spread" over sources


def source_probe_audit(config: StudyConfig, out: Path, frame: pd.DataFrame, predictor: Predictor) -> dict:
    """The source probe on every image of the study, with the best model's features and the pretrained
    backbone's (when its weights are available offline).

    Returns:
        ``{"probes": {features: probe result}, "warnings": [...]}`` (see :func:`source_probe`);
        ``predictor``: the best model.
    """
    if frame["source"].fillna("").astype(str).nunique() < 2:
        return {"skipped": "the data has a single source", "probes": {}, "warnings": []}
    model, payload = predictor.model, predictor.payload
    kept, dataset, _ = predictor.dataset(frame, out / "shared" / "prepared-probe" / preprocess_key(predictor.preprocess))
    models = {"fine-tuned (best model)": model}
    try:
        models["pretrained (before fine-tuning)"] = create_classifier(payload["backbone"], len(model.class_names))
    except WeightsUnavailableError as err:
        log.info("source probe: no pretrained contrast (%s)", err)
    probes = {name: source_probe(pooled_features(m, dataset), kept, folds=5, seed=config.seed)
              for name, m in models.items()}
    return {"probes": probes, "warnings": _probe_warnings(probes)}


def _probe_warnings(probes: dict) -> list[str]:
    """A warning per feature set that tells sources apart above chance (the interval's lower end above
    1 / number of sources), louder when classes are spread unevenly over the sources."""
    warnings = []
    for name, probe in probes.items():
        overall, v = probe["all"], probe.get("association")
        if "skipped" in overall or not overall.get("above_chance"):
            continue
        within = [f"{label} {p['balanced_accuracy']:.2f} (chance {p['chance']:.2f})"
                  for label, p in probe["within_class"].items() if "skipped" not in p and p.get("above_chance")]
        text = (f"the {name} features tell an image's source above chance: balanced accuracy "
                f"{overall['balanced_accuracy']:.2f} [{overall['low']:.2f}, {overall['high']:.2f}] against chance "
                f"{overall['chance']:.2f} for {len(overall['sources'])} sources")
        if within:
            text += f", even among images of one class ({', '.join(within)})"
        if v is not None and v >= ASSOCIATION_WARNING:
            warnings.append(f"{text}, and classes are spread unevenly over the sources (Cramér's V {v:.2f}): the "
                            "class signal may partly be a source signal; check the leave-one-source-out figures")
        elif name.startswith("fine-tuned"):
            warnings.append(f"{text}; classes are spread evenly enough over the sources that this alone is not a "
                            "shortcut, but a new source may look unfamiliar to the model")
    return warnings


def lung_audit(out: Path, frame: pd.DataFrame, predictor: Predictor) -> dict:
    """Grad-CAM in-lung share and lung-only / lungs-removed calls of the best model on test images
    with lung masks.

    Returns:
        ``{"masked_inputs": summary, "lung_evidence": summary, "warnings": [...]}``, or
        ``{"skipped": reason}`` without masked test images or when the test side's masks fail the
        provenance rule training applies (:func:`cxrlab.data.mask_provenance.mask_problem`).
    """
    test = frame[frame["split"] == "test"]
    if problem := mask_problem(test, "the lung audit", "the study's test side",
                               "give the study a manifest whose masks all come from cxrlab segment crossfit"):
        # masks on some classes only, or from two annotation projects: their outline alone could pass for evidence
        return {"skipped": problem, "warnings": [f"lung audit not run: {problem}"]}
    masks = test.get("mask", pd.Series("", index=test.index)).fillna("").astype(str)
    test = test[masks != ""]
    if test.empty:
        return {"skipped": "no test image has a lung mask", "warnings": []}
    model, preprocess = predictor.model, predictor.preprocess
    table = masked_input_predictions(model, preprocess, test)
    if table.empty:
        return {"skipped": "no masked test image could be read", "warnings": []}
    table.to_csv(out / "masked_inputs.csv", index=False)
    names = list(model.class_names)
    inputs = summarise_masked_inputs(table, names)
    full = table[table["variant"] == VARIANTS[0]]
    calls = full.assign(predicted=full[names].idxmax(axis=1)).merge(test[["image", "mask"]], on="image")
    evidence = lung_evidence(model, preprocess, calls)
    evidence.to_csv(out / "lung_evidence.csv", index=False)
    share = summarise_lung_evidence(evidence)
    notes = []
    if inputs["no_information_rate"] >= WEAK_SUBSET:
        counts = table[table["variant"] == VARIANTS[0]]["label"].value_counts()
        notes.append(f"the lung checks see {inputs['n']} test images with masks, {counts.iloc[0]} of them "
                     f"{counts.index[0]}: with so few of the other classes they have little power (predicted masks "
                     "for every image would help)")
    return {"masked_inputs": inputs, "lung_evidence": {k: v for k, v in share.items() if k != "mostly_outside"},
            "warnings": _lung_warnings(inputs, share), "notes": notes}


def _lung_warnings(inputs: dict, share: dict) -> list[str]:
    warnings = []
    removed = inputs["variants"].get(VARIANTS[2])
    if inputs.get("evidence_outside_lungs") and removed:
        if removed["p_above_chance"] < ALPHA:
            found = (f"still calls {removed['accuracy']:.2f} of {inputs['n']} test images right, above the "
                     f"{inputs['no_information_rate']:.2f} of always naming the commonest class "
                     f"(p = {removed['p_above_chance']:.3f})")
        else:
            found = (f"still ranks {inputs['positive']} above the other classes with AUC {removed['auc_positive']:.2f} "
                     f"on {inputs['n']} test images (p = {removed['p_auc_above_half']:.3f} against 0.5)")
        warnings.append(f"with the lungs blacked out the model {found}: it finds class evidence outside the lungs")
    if share.get("n") and not math.isnan(share["median"]) and share["median"] < share["median_even_share"]:
        warnings.append(
            f"the median share of Grad-CAM evidence inside the lungs is {share['median']:.2f}, less than the "
            f"{share['median_even_share']:.2f} a map spread evenly over what the model sees would give: the model "
            "looks elsewhere more than at the lungs")
    return warnings
