"""Right for the right reason, tested on the input: the model's calls on lung-only images and on
images whose lungs are blacked out.

A model that still classifies images without their lungs better than chance finds its class
evidence elsewhere (text, markers, borders, exposure: the source) — the test Maguolo & Nanni and
DeGrave et al. used on published COVID-19 models. Lung-only accuracy near full-image accuracy
is the reassuring counterpart. Both inputs are out of distribution for a model trained on whole
images, so a *drop* on its own proves little; accuracy that *survives* removing the lungs does.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from cxrlab.core.defaults import DEFAULT_N_BOOT
from cxrlab.core.errors import InvalidImageError
from cxrlab.data.images import read_image, read_mask
from cxrlab.evaluate.bootstrap import bootstrap_cis, holm
from cxrlab.evaluate.metrics import binary_auc, compute_metrics
from cxrlab.models import InferenceModel
from cxrlab.models.classifier import CxrClassifier
from cxrlab.preprocess import PreprocessConfig
from cxrlab.preprocess.pipeline import build_transforms
from cxrlab.preprocess.transforms import to_model_input

log = logging.getLogger(__name__)
VARIANTS = ("full image", "lungs only", "lungs removed")
ALPHA = 0.05


def _variants(pixels: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    # black (0) outside / inside the mask: the fill the cited studies used
    return [pixels, np.where(mask, pixels, 0).astype(np.uint8), np.where(mask, 0, pixels).astype(np.uint8)]


def masked_input_predictions(model: CxrClassifier, preprocess: PreprocessConfig, frame: pd.DataFrame,
                             batch_size: int = 32) -> pd.DataFrame:
    """Predict every row of ``frame`` that has a lung mask three times: whole, lungs only, lungs removed.

    The mask is applied to the decoded image, before the model's own preprocessing (so CLAHE,
    crop and resize see the masked image, as they would a real one).

    Args:
        model: The classifier.
        preprocess: Its preprocessing.
        frame: Rows with ``image``, ``label`` and ``mask`` (rows without a mask are left out;
            unreadable images or masks are skipped with a warning naming the file).

    Returns:
        One row per image and variant: ``image, patient_id, label, variant``, one probability column per class.
    """
    transforms = build_transforms(preprocess)
    spec, runner = model.spec, InferenceModel(model)
    masks = frame.get("mask", pd.Series("", index=frame.index)).fillna("").astype(str)
    rows, inputs = [], []
    for row, mask_path in zip(frame.itertuples(), masks, strict=True):
        if not mask_path:
            continue
        try:
            decoded = read_image(row.image, max_pixels=preprocess.max_pixels, min_side=preprocess.min_side)
            mask = read_mask(mask_path, decoded.pixels.shape)
        except InvalidImageError as err:
            log.warning("masked inputs: %s", err)
            continue
        for variant, pixels in zip(VARIANTS, _variants(decoded.pixels, mask), strict=True):
            processed, moved = transforms(pixels, mask)
            inputs.append(to_model_input(np.ascontiguousarray(processed), spec.mean, spec.std, spec.in_chans,
                                         moved if model.lung_attention else None))
            rows.append({"image": row.image, "patient_id": getattr(row, "patient_id", row.image), "label": row.label,
                         "variant": variant})
    table = pd.DataFrame(rows, columns=["image", "patient_id", "label", "variant"])
    if not rows:
        return table.assign(**{name: pd.Series(dtype=float) for name in model.class_names})
    probs = torch.cat([runner.probabilities(torch.from_numpy(np.stack(inputs[i:i + batch_size])))
                       for i in range(0, len(inputs), batch_size)]).numpy()
    for i, name in enumerate(model.class_names):
        table[name] = probs[:, i]
    return table


def summarise_masked_inputs(table: pd.DataFrame, class_names: list[str] | tuple[str, ...], n_boot: int = DEFAULT_N_BOOT,
                            seed: int = 0) -> dict:
    """Accuracy and AUCs per variant with two one-sided tests, each from a bootstrap over patients
    (``patient_id``; each image its own patient without one): accuracy against the no-information
    rate (always calling the most frequent class), and the first class's AUC (COVID-19 vs the rest)
    against 0.5. Holm's correction across the two gives ``p_holm``. The AUC test keeps its power when
    one class dominates the images with masks, where always naming it is already "accurate".

    Returns:
        ``{"n", "no_information_rate", "positive", "variants": {variant: {"accuracy", "auc_macro",
        "recall", "p_above_chance", "auc_positive", "p_auc_above_half", "p_holm"}}, "evidence_outside_lungs"}``
        — the last is True when, with the lungs removed, either test survives Holm's correction (p < 0.05).
    """
    names = list(class_names)
    full = table[table["variant"] == VARIANTS[0]]
    if full.empty:
        return {"n": 0, "variants": {}}
    rate = float(full["label"].value_counts(normalize=True).max())
    result: dict = {"n": int(len(full)), "no_information_rate": rate, "variants": {}}
    for variant in VARIANTS:
        part = table[table["variant"] == variant]
        y = np.array([names.index(v) for v in part["label"]])
        metrics = compute_metrics(y, part[names].to_numpy(), names)
        tests = _above_chance(y, part[names].to_numpy(), part.get("patient_id", part["image"]).astype(str).to_numpy(),
                              n_boot, seed)
        p_holm = holm([tests["accuracy"]["p_value"], tests["auc"]["p_value"]])
        result["variants"][variant] = {
            "accuracy": metrics["accuracy"], "auc_macro": metrics["macro"]["roc_auc"],
            "recall": {name: metrics["per_class"][name]["sensitivity"] for name in names
                       if metrics["per_class"][name]["support"]},
            "p_above_chance": tests["accuracy"]["p_value"], "auc_positive": binary_auc(y == 0, part[names[0]].to_numpy()),
            "p_auc_above_half": tests["auc"]["p_value"], "p_holm": {"accuracy": p_holm[0], "auc": p_holm[1]}}
    removed = result["variants"][VARIANTS[2]]["p_holm"]
    result["positive"] = names[0]
    result["evidence_outside_lungs"] = any(p is not None and p < ALPHA for p in removed.values())
    return result


def _above_chance(y: np.ndarray, probs: np.ndarray, patients: np.ndarray, n_boot: int, seed: int) -> dict:
    """One-sided patient-bootstrap tests: accuracy above the no-information rate, and the first
    class's AUC above 0.5 (``p_value`` None without two cases on each side)."""
    predicted = probs.argmax(1)

    def excess(rows: np.ndarray) -> dict[str, float | None]:
        commonest = np.bincount(y[rows]).max() / len(rows)
        auc = binary_auc(y[rows] == 0, probs[rows, 0])
        return {"accuracy": float((predicted[rows] == y[rows]).mean() - commonest),
                "auc": None if auc is None else auc - 0.5}

    tests = bootstrap_cis(excess, patients, n_boot, seed, null=0.0, alternative="greater")
    if min((y == 0).sum(), (y != 0).sum()) < 2:
        tests["auc"]["p_value"] = None
    return tests
