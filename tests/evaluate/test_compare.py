"""Paired model comparison: tests clustered by patient with Holm's correction, patient-bootstrap
intervals, the image-level DeLong/McNemar beside them as references, refusal of unpaired data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.core import ConfigError
from cxrlab.evaluate import delong_test
from cxrlab.evaluate.compare import clustered_mcnemar, compare_predictions, mcnemar
from cxrlab.evaluate.delong import clustered_delong_test

CLASSES = ("COVID-19", "Pneumonia", "Normal")


def _table(rng: np.random.Generator, labels: np.ndarray, skill: float) -> pd.DataFrame:
    logits = rng.normal(0, 1, (len(labels), 3))
    logits[np.arange(len(labels)), [CLASSES.index(v) for v in labels]] += skill
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frame = pd.DataFrame(probs, columns=list(CLASSES))
    frame.insert(0, "image", [f"img{i}.png" for i in range(len(labels))])
    frame.insert(1, "patient_id", [f"p{i // 2}" for i in range(len(labels))])
    frame.insert(2, "label", labels)
    frame["predicted"] = [CLASSES[i] for i in probs.argmax(1)]
    return frame


def test_mcnemar_matches_the_binomial_definition():
    a = np.array([True] * 10 + [False] * 3 + [True] * 5)
    b = np.array([False] * 10 + [True] * 3 + [True] * 5)
    result = mcnemar(a, b)
    assert (result["a_only"], result["b_only"]) == (10, 3)
    assert result["p_value"] == pytest.approx(stats.binomtest(10, 13, 0.5).pvalue)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_compare_finds_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(0)
    labels = np.array(CLASSES * 100)
    strong, weak, twin = _table(rng, labels, 3.0), _table(rng, labels, 0.5), _table(rng, labels, 3.0)
    result = compare_predictions(strong, weak.sample(frac=1, random_state=1), CLASSES)  # row order must not matter
    assert result["n"] == 300 and result["accuracy"]["significant"] and result["accuracy"]["a"] > result["accuracy"]["b"]
    reference = delong_test((labels == "COVID-19").astype(int), strong["COVID-19"].to_numpy(), weak["COVID-19"].to_numpy())
    assert result["per_class"]["COVID-19"]["difference"] == pytest.approx(reference["difference"])
    assert all(v["significant"] and v["difference"] > 0 for v in result["per_class"].values())
    same = compare_predictions(strong, twin, CLASSES)  # equally good models: noise only
    assert not any(v["significant"] for v in same["per_class"].values())


def _repeated_images(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """15 patients with 20 near-identical images each; A beats B on three patients only."""
    rows = []
    for p in range(15):
        label, base_a = CLASSES[p % 3], rng.normal(0, 1, 3)
        base_b = base_a.copy()
        if p < 3:
            base_a[CLASSES.index(label)] += 1.5
        rows += [(f"p{p}-{k}", f"p{p}", label, base_a + rng.normal(0, 0.05, 3), base_b + rng.normal(0, 0.05, 3))
                 for k in range(20)]

    def table(i: int) -> pd.DataFrame:
        logits = np.stack([r[3 + i] for r in rows])
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return pd.DataFrame({"image": [r[0] for r in rows], "patient_id": [r[1] for r in rows],
                             "label": [r[2] for r in rows], **{c: probs[:, j] for j, c in enumerate(CLASSES)},
                             "predicted": [CLASSES[j] for j in probs.argmax(1)]})

    return table(0), table(1)


def test_repeated_images_of_few_patients_are_not_independent_evidence():
    a, b = _repeated_images(np.random.default_rng(0))
    result = compare_predictions(a, b, CLASSES, n_boot=500)
    assert result["patients"] == 15 and result["n"] == 300
    # counted image by image the differences look overwhelming; by patient they are within noise
    assert result["accuracy"]["mcnemar_p_images"] < 1e-3 and not result["accuracy"]["significant"]
    assert all(t["delong_p_images"] < 0.01 for t in result["per_class"].values())
    assert not any(t["significant"] for t in result["per_class"].values())
    assert all(t["p_holm"] >= t["p_value"] for t in [result["accuracy"], *result["per_class"].values()])


def test_clustered_tests_reduce_to_delong_and_mcnemar_with_one_image_per_patient():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    a, b = y + rng.normal(0, 1, 80), y + rng.normal(0, 1.2, 80)
    clustered, plain = clustered_delong_test(y, a, b, np.arange(80)), delong_test(y, a, b)
    assert clustered["se"] == pytest.approx(plain["se"], rel=1e-9) and clustered["p_value"] == pytest.approx(plain["p_value"])
    correct_a, correct_b = (a > 0.5) == y, (b > 0.5) == y
    by_patient = clustered_mcnemar(correct_a, correct_b, np.arange(80))
    discordant = int((correct_a != correct_b).sum())
    # McNemar's z with the (n/(n-1)) small-sample factor of the cluster-robust variance
    z = (correct_a.sum() - correct_b.sum()) / np.sqrt(discordant - (correct_a.sum() - correct_b.sum()) ** 2 / 80) / np.sqrt(80 / 79)
    assert by_patient["z"] == pytest.approx(z)


def test_the_clustered_tests_hold_their_level_where_image_level_tests_do_not():
    """Null simulation: 40 patients x 5 images, two equally good models whose errors share a patient
    effect. At alpha 0.05 the clustered tests reject 2-9% of 300 replicates (binomial 99% range around
    5% plus the tests' small-sample bias with 40 patients); image-level DeLong and McNemar far more."""
    rng = np.random.default_rng(1)
    patients, images, replicates = 40, 5, 300
    clusters = np.repeat(np.arange(patients), images)
    rejected = {"delong": 0, "delong_images": 0, "mcnemar": 0, "mcnemar_images": 0}
    for _ in range(replicates):
        y = np.repeat(rng.integers(0, 2, patients), images)
        shared = np.repeat(rng.normal(size=patients), images)
        a = y + shared + np.repeat(rng.normal(size=patients), images) + rng.normal(0, 0.5, len(y))
        b = y + shared + np.repeat(rng.normal(size=patients), images) + rng.normal(0, 0.5, len(y))
        correct_a, correct_b = (a > 0.5) == y, (b > 0.5) == y
        rejected["delong"] += clustered_delong_test(y, a, b, clusters)["p_value"] < 0.05
        rejected["delong_images"] += delong_test(y, a, b)["p_value"] < 0.05
        rejected["mcnemar"] += clustered_mcnemar(correct_a, correct_b, clusters)["p_value"] < 0.05
        rejected["mcnemar_images"] += mcnemar(correct_a, correct_b)["p_value"] < 0.05
    rate = {k: v / replicates for k, v in rejected.items()}
    assert 0.02 <= rate["delong"] <= 0.09 and 0.02 <= rate["mcnemar"] <= 0.09, rate
    assert rate["delong_images"] > 0.15 and rate["mcnemar_images"] > 0.15, rate  # measured ~0.3


def test_holm_adjusts_step_down_and_keeps_missing_values():
    from cxrlab.evaluate.bootstrap import holm

    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.5]) == [0.5] and holm([]) == []


def test_compare_refuses_unpaired_tables():
    rng = np.random.default_rng(0)
    labels = np.array(CLASSES * 10)
    a = _table(rng, labels, 2.0)
    with pytest.raises(ConfigError, match="different images"):
        compare_predictions(a, a.iloc[:-1], CLASSES)
    relabelled = a.assign(label=np.roll(labels, 1))
    with pytest.raises(ConfigError, match="different labels"):
        compare_predictions(a, relabelled, CLASSES)


def test_cli_compares_two_evaluations(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(run_dir), "--out", str(tmp_path / "a"), "--n-boot", "10", "--no-gradcam"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert saved["accuracy"]["p_value"] == 1.0 and all(v["difference"] == 0 for v in saved["per_class"].values())
    assert "within noise" in (tmp_path / "c" / "comparison.md").read_text()
    missing = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "nothing"), "--out", str(tmp_path / "d")])
    assert missing.exit_code != 0 and "run `cxrlab evaluate" in missing.output
