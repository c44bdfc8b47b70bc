from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from cxrlab.evaluate import (
    apply_temperature,
    delong_covariance,
    delong_test,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def _definition(y, scores):
    """DeLong et al. (1988) by its definition: structural components from all m*n pairs."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = lambda a, b: (a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])  # noqa: E731
    v10 = np.array([psi(p, q).mean(axis=1) for p, q in zip(pos, neg)])
    v01 = np.array([psi(p, q).mean(axis=0) for p, q in zip(pos, neg)])
    aucs = v10.mean(axis=1)
    return aucs, np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_delong_equals_the_definition(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 120)
    a = np.round(y + rng.normal(0, 1, 120), 1)  # rounding makes ties
    b = np.round(0.5 * y + rng.normal(0, 1, 120), 1)
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    ref_aucs, ref_cov = _definition(y, np.vstack([a, b]))
    assert np.allclose(aucs, ref_aucs) and np.allclose(cov, ref_cov)
    assert aucs[0] == pytest.approx(roc_auc_score(y, a))
    result = delong_test(y, a, b)
    assert result["difference"] > 0 and result["low"] < result["difference"] < result["high"]
    z = result["difference"] / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])  # the two-sided normal test by hand
    assert result["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)))


def test_delong_same_scores_and_clear_difference():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    good = y + rng.normal(0, 0.5, 300)
    noise = rng.normal(0, 1, 300)
    same = delong_test(y, good, good)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    assert delong_test(y, good, noise)["p_value"] < 1e-6


def test_ece_by_hand_and_on_calibrated_data():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])  # bin 0.9: accuracy 0.5 ; bin 0.6: accuracy 1.0
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx((0.4 * 2 + 0.4 * 2) / 4)
    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1, 20000)
    probs = np.stack([p, 1 - p], axis=1)
    y = (rng.uniform(size=20000) > p).astype(int)  # class 0 with probability p: calibrated
    assert expected_calibration_error(y, probs) < 0.02
    assert sum(reliability_bins(y, probs)["count"]) == 20000


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 1.5, (4000, 3))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    temperature = fit_temperature(true_logits * 2.5, y)  # a model 2.5x overconfident
    assert temperature == pytest.approx(2.5, rel=0.1)
    calibrated = apply_temperature(true_logits * 2.5, temperature)
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, apply_temperature(true_logits * 2.5, 1.0))
