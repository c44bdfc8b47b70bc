from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from cxrlab.core import ConfigError
from cxrlab.evaluate import binary_view, bootstrap_ci, choose_operating_point, compute_metrics

CLASSES = ("COVID-19", "Pneumonia", "Normal")


def _random(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(seed):
    y, probs = _random(seed=seed)
    m = compute_metrics(y, probs, CLASSES)
    pred = probs.argmax(1)
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=average)
        assert m[average]["precision"] == pytest.approx(p) and m[average]["sensitivity"] == pytest.approx(r)
        assert m[average]["f1"] == pytest.approx(f)
    assert m["macro"]["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for i, name in enumerate(CLASSES):
        assert m["per_class"][name]["roc_auc"] == pytest.approx(roc_auc_score(y == i, probs[:, i]))
        assert m["per_class"][name]["pr_auc"] == pytest.approx(average_precision_score(y == i, probs[:, i]))
    assert m["accuracy"] == pytest.approx((pred == y).mean())


def test_sensitivity_specificity_by_hand():
    # confusion matrix rows = truth: COVID [3 1 0], Pneumonia [1 2 1], Normal [0 0 4]
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 0, 1, 0, 1, 1, 2, 2, 2, 2, 2])
    m = compute_metrics(y, np.eye(3)[pred], CLASSES)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 2, 1], [0, 0, 4]]
    covid = m["per_class"]["COVID-19"]
    assert covid["sensitivity"] == 3 / 4 and covid["specificity"] == 7 / 8
    assert covid["precision"] == 3 / 4 and covid["npv"] == 7 / 8
    assert m["per_class"]["Normal"]["specificity"] == 7 / 8 and m["per_class"]["Normal"]["sensitivity"] == 1.0


def test_absent_class_gives_none_not_a_crash():
    y = np.array([0, 0, 1, 1])
    m = compute_metrics(y, np.eye(3)[[0, 1, 1, 1]], CLASSES)
    assert m["per_class"]["Normal"]["roc_auc"] is None and m["per_class"]["Normal"]["sensitivity"] is None


def test_binary_view():
    y, probs = _random()
    yb, pb = binary_view(y, probs, CLASSES)
    assert yb.sum() == (y == 0).sum() and np.allclose(pb, probs[:, 0])


def test_bootstrap_interval_contains_estimate_and_shrinks():
    widths = []
    for n in (60, 1500):
        y, probs = _random(n, seed=3)
        patients = np.arange(n) // 2  # two images per patient
        ci = bootstrap_ci(lambda rows: float((probs[rows].argmax(1) == y[rows]).mean()), patients, n_boot=300)
        assert ci["low"] <= ci["value"] <= ci["high"] and ci["n_boot"] == 300
        widths.append(ci["high"] - ci["low"])
    assert widths[1] < widths[0] / 3


def test_bootstrap_resamples_patients_not_images():
    patients = np.array([0] * 10 + [1] * 10)  # two patients: any replicate holds 0, 10 or 20 rows of each
    seen = set()
    bootstrap_ci(lambda rows: seen.add(len(rows)) or 0.0, patients, n_boot=50)
    assert seen == {20}
    counts = set()
    bootstrap_ci(lambda rows: counts.add(int((rows < 10).sum())) or 0.0, patients, n_boot=200)
    assert counts <= {0, 10, 20} and len(counts) > 1


def test_operating_points_on_validation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    scores = np.clip(0.3 * y + rng.normal(0.35, 0.2, 400), 0, 1)
    youden = choose_operating_point(y, scores, "youden")
    at95 = choose_operating_point(y, scores, "sensitivity", 0.95)
    assert at95.apply(y, scores)["sensitivity"] >= 0.95
    assert at95.threshold <= youden.threshold
    j = youden.apply(y, scores)
    for t in np.linspace(0.05, 0.95, 19):  # no grid threshold beats Youden's J on the same data
        other = type(youden)(float(t), "youden").apply(y, scores)
        assert other["sensitivity"] + other["specificity"] <= j["sensitivity"] + j["specificity"] + 1e-9
    with pytest.raises(ConfigError):
        choose_operating_point(np.ones(5), scores[:5])


def test_many_statistics_share_one_set_of_replicates():
    from cxrlab.evaluate import bootstrap_cis

    y, probs = _random(200, seed=4)
    patients = np.arange(200) // 2
    calls = []

    def stats(rows):
        calls.append(1)
        return {"accuracy": float((probs[rows].argmax(1) == y[rows]).mean()), "n": float(len(rows))}

    cis = bootstrap_cis(stats, patients, n_boot=100)
    assert len(calls) == 101  # the point estimate plus one call per replicate, for every statistic at once
    single = bootstrap_ci(lambda rows: float((probs[rows].argmax(1) == y[rows]).mean()), patients, n_boot=100)
    assert cis["accuracy"] == single and cis["n"]["low"] == cis["n"]["high"] == 200


def test_the_bootstraps_lean_statistics_equal_the_full_tables():
    from cxrlab.evaluate.metrics import accuracy_and_macro_auc, compute_metrics

    rng = np.random.default_rng(3)
    for n, classes in ((40, 3), (9, 3), (12, 2)):
        y = rng.integers(0, classes, n)
        y[:1] = 0  # a tiny draw may lack a class: macro AUC averages the defined ones, as the table does
        probs = rng.dirichlet(np.ones(classes), n)
        full = compute_metrics(y, probs, [f"c{i}" for i in range(classes)])
        lean = accuracy_and_macro_auc(y, probs)
        assert lean["accuracy"] == pytest.approx(full["accuracy"])
        assert lean["auc_macro"] == pytest.approx(full["macro"]["roc_auc"])


def test_the_interval_statistics_equal_the_full_table_with_ties_and_missing_classes():
    from cxrlab.evaluate.metrics import compute_metrics, interval_metrics

    rng = np.random.default_rng(5)
    for n, classes in ((60, 3), (9, 3), (15, 2), (30, 3)):
        y = rng.integers(0, classes, n)
        if n == 30:
            y[y == 2] = 1  # one class absent: its sensitivity and AUCs are undefined
        probs = rng.dirichlet(np.ones(classes), n).round(1)  # rounding makes tied scores
        names = [f"c{i}" for i in range(classes)]
        full, lean = compute_metrics(y, probs, names), interval_metrics(y, probs, names)
        assert lean["accuracy"] == pytest.approx(full["accuracy"])
        assert lean["auc_macro"] == pytest.approx(full["macro"]["roc_auc"])
        assert lean["f1_macro"] == pytest.approx(full["macro"]["f1"])
        for name in names:
            for key in ("sensitivity", "specificity", "roc_auc", "pr_auc"):
                expected = full["per_class"][name][key]
                got = lean["per_class"][name][key]
                assert (got is None) == (expected is None) and (got is None or got == pytest.approx(expected)), (n, name, key)

