"""Shortcut checks: the source probe on planted features, and the lung-only / lungs-removed inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlab.data.manifest import read_table, resolve_paths
from cxrlab.evaluate.masked_inputs import VARIANTS, _variants, masked_input_predictions, summarise_masked_inputs
from cxrlab.models import load_model
from cxrlab.models.predictor import Predictor
from cxrlab.evaluate.source_probe import source_probe


def _frame(n_per_cell: int = 12) -> pd.DataFrame:
    rows = []
    for source in ("a", "b", "c"):
        for label in ("COVID-19", "Normal"):
            for i in range(n_per_cell):
                rows.append({"source": source, "label": label, "patient_id": f"{source}-{label}-{i // 2}"})
    return pd.DataFrame(rows)


def test_source_probe_finds_a_planted_source_signal_and_not_an_absent_one():
    frame = _frame()
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(frame), 16))
    planted = noise.copy()
    for dim, source in enumerate("abc"):  # a few features respond to one source each
        planted[:, dim] += 5.0 * (frame["source"] == source).to_numpy()
    found = source_probe(planted, frame, folds=3)
    assert found["all"]["balanced_accuracy"] > 0.9 and found["all"]["chance"] == pytest.approx(1 / 3)
    assert all(p["balanced_accuracy"] > 0.9 for p in found["within_class"].values())
    absent = source_probe(noise, frame, folds=3)
    assert absent["all"]["balanced_accuracy"] < 0.6  # chance 0.33; no signal to find
    assert found["all"]["above_chance"] and found["all"]["low"] > 1 / 3
    assert not absent["all"]["above_chance"] and absent["all"]["low"] <= 1 / 3 <= absent["all"]["high"]
    assert found["association"] == pytest.approx(0.0)  # every source holds both classes equally
    confounded = frame.assign(label=frame["source"].map({"a": "COVID-19", "b": "Normal", "c": "Normal"}))
    assert source_probe(planted, confounded, folds=3)["association"] == pytest.approx(1.0)


def test_source_probe_skips_what_cannot_be_probed_by_patient():
    frame = _frame(4).assign(patient_id=lambda f: f["source"])  # one patient per source
    result = source_probe(np.zeros((len(frame), 4)), frame)
    assert "single patient" in result["all"]["skipped"]
    assert "fewer than two sources" in source_probe(np.zeros((3, 4)), _frame(1).head(3))["all"]["skipped"]


def test_variants_black_out_the_right_pixels():
    pixels = np.full((4, 4), 200, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    full, lungs, removed = _variants(pixels, mask)
    assert (full == 200).all() and (lungs[mask] == 200).all() and (lungs[~mask] == 0).all()
    assert (removed[mask] == 0).all() and (removed[~mask] == 200).all()


def test_masked_input_summary_flags_evidence_outside_the_lungs():
    names = ["COVID-19", "Normal"]
    labels = ["COVID-19"] * 20 + ["Normal"] * 20
    right = np.array([[1.0, 0.0] if y == "COVID-19" else [0.0, 1.0] for y in labels])
    rows = []
    for variant, probs in ((VARIANTS[0], right), (VARIANTS[1], right), (VARIANTS[2], right)):
        rows += [{"image": f"i{i}", "label": y, "variant": variant, "COVID-19": p[0], "Normal": p[1]}
                 for i, (y, p) in enumerate(zip(labels, probs, strict=True))]
    shortcut = summarise_masked_inputs(pd.DataFrame(rows), names)
    assert shortcut["evidence_outside_lungs"] and shortcut["variants"]["lungs removed"]["accuracy"] == 1.0
    table = pd.DataFrame(rows)
    removed = table["variant"] == VARIANTS[2]
    table.loc[removed, ["COVID-19", "Normal"]] = [0.9, 0.1]  # without lungs: always the same call
    honest = summarise_masked_inputs(table, names)
    assert not honest["evidence_outside_lungs"] and honest["no_information_rate"] == 0.5
    assert honest["variants"]["lungs removed"]["recall"] == {"COVID-19": 1.0, "Normal": 0.0}


def test_masked_inputs_of_a_trained_model(run_dir, tmp_path):
    model, preprocess, _ = load_model(run_dir)
    split = resolve_paths(read_table(run_dir / "splits.csv"), run_dir)
    test = split[split["split"] == "test"].head(6)
    table = masked_input_predictions(model, preprocess, test)
    assert len(table) == 3 * len(test) and list(table["variant"][:3]) == list(VARIANTS)
    probs = table[list(model.class_names)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(probs[0::3], probs[2::3])  # blacking out the lungs changes the model's input
    # the whole-image variant is exactly what the model predicts through its usual path
    usual = Predictor(run_dir).predict_frame(test, tmp_path / "prep")
    np.testing.assert_allclose(probs[0::3], usual.probs, atol=1e-4)
    broken = test.assign(mask=[str(tmp_path / "missing.png")] + list(test["mask"][1:]))
    assert len(masked_input_predictions(model, preprocess, broken)) == 3 * (len(test) - 1)  # skipped, named in a warning


def test_masked_input_summary_keeps_power_when_one_class_dominates():
    names = ["COVID-19", "Normal"]
    labels = ["COVID-19"] * 30 + ["Normal"] * 4
    rng = np.random.default_rng(1)
    rows = []
    for variant in VARIANTS:
        for i, y in enumerate(labels):  # always called COVID-19, but COVID-19 images score higher
            p = 0.8 + 0.15 * rng.random() if y == "COVID-19" else 0.6 + 0.15 * rng.random()
            rows.append({"image": f"i{i}", "label": y, "variant": variant, "COVID-19": p, "Normal": 1 - p})
    summary = summarise_masked_inputs(pd.DataFrame(rows), names)
    removed = summary["variants"]["lungs removed"]
    assert removed["accuracy"] == pytest.approx(30 / 34) and removed["p_above_chance"] > 0.05  # accuracy: no power
    assert removed["auc_positive"] == 1.0 and removed["p_auc_above_half"] < 0.05 and summary["evidence_outside_lungs"]
