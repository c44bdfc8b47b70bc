"""DeLong's test for two correlated ROC AUCs on the same test set.

Hand-written because scikit-learn has no AUC variance or comparison; this is the fast
midrank algorithm (midranks: :func:`scipy.stats.rankdata`) of Sun & Xu (IEEE Signal Processing Letters 21(11), 2014), checked in the
tests against the O(m·n) definition of DeLong, DeLong & Clarke-Pearson (Biometrics, 1988).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from cxrlab.core.errors import ConfigError


def delong_covariance(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for ``k`` score vectors.

    Args:
        y_true: ``(N,)`` 0/1 labels.
        scores: ``(k, N)`` scores (higher = more likely positive).

    Returns:
        ``(aucs (k,), covariance (k, k))``.

    Raises:
        ConfigError: fewer than one positive or one negative.
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = scores[:, y_true], scores[:, ~y_true]
    m, n = pos.shape[1], neg.shape[1]
    if m < 1 or n < 1:
        raise ConfigError("DeLong: need at least one positive and one negative case")
    k = scores.shape[0]
    tx = np.array([stats.rankdata(p) for p in pos])
    ty = np.array([stats.rankdata(q) for q in neg])
    tz = np.array([stats.rankdata(np.concatenate([p, q])) for p, q in zip(pos, neg)])
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    sx = np.cov(v01) if k > 1 else np.array([[np.var(v01, ddof=1)]])
    sy = np.cov(v10) if k > 1 else np.array([[np.var(v10, ddof=1)]])
    return aucs, np.atleast_2d(sx) / m + np.atleast_2d(sy) / n


def delong_test(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, level: float = 0.95) -> dict:
    """Compare the AUCs of two models on the same cases.

    Returns:
        ``{"auc_a", "auc_b", "difference", "se", "low", "high", "z", "p_value"}``: the
        difference ``auc_a - auc_b`` with its confidence interval and two-sided p-value.
    """
    aucs, cov = delong_covariance(y_true, np.vstack([scores_a, scores_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    zcrit = stats.norm.ppf(0.5 + level / 2)
    if se == 0:
        z, p = 0.0 if diff == 0 else np.inf, 1.0 if diff == 0 else 0.0
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": se,
            "low": diff - zcrit * se, "high": diff + zcrit * se, "z": float(z), "p_value": float(p)}


def _components(positive: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """AUC and each case's structural component (Sen/DeLong): for a positive case the share of
    negatives it outranks, for a negative case the share of positives that outrank it (ties: half)."""
    pos, neg = scores[positive], scores[~positive]
    m, n = len(pos), len(neg)
    all_ranks = stats.rankdata(np.concatenate([pos, neg]))
    v_pos = (all_ranks[:m] - stats.rankdata(pos)) / n
    v_neg = 1.0 - (all_ranks[m:] - stats.rankdata(neg)) / m
    out = np.empty(len(scores))
    out[positive], out[~positive] = v_pos, v_neg
    return float(v_pos.mean()), out


def clustered_delong_test(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, clusters: np.ndarray,
                          level: float = 0.95) -> dict:
    """Compare two correlated AUCs when cases come in clusters (several images of one patient).

    Obuchowski's nonparametric method (Biometrics 53(2), 1997): DeLong's structural components
    summed per cluster, so the variance counts patients, not images. Each cluster may hold positive
    and negative cases; with one case per cluster it is DeLong's test (tested). Hand-written: no
    Python library implements it.

    Returns:
        As :func:`delong_test`, plus ``clusters``.

    Raises:
        ConfigError: fewer than two clusters with positive cases, or with negative cases.
    """
    positive = np.asarray(y_true).astype(bool)
    codes = np.unique(np.asarray(clusters).astype(str), return_inverse=True)[1]
    n_clusters = int(codes.max()) + 1 if len(codes) else 0
    m_i = np.bincount(codes[positive], minlength=n_clusters).astype(float)
    n_i = np.bincount(codes[~positive], minlength=n_clusters).astype(float)
    m, n = m_i.sum(), n_i.sum()
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        raise ConfigError(f"clustered DeLong: need at least two patients with positive and two with negative images "
                          f"(have {i10} and {i01})")
    centred = []
    for scores in (scores_a, scores_b):
        auc, v = _components(positive, np.asarray(scores, dtype=float))
        s10 = np.bincount(codes[positive], weights=v[positive], minlength=n_clusters) - m_i * auc
        s01 = np.bincount(codes[~positive], weights=v[~positive], minlength=n_clusters) - n_i * auc
        centred.append((auc, s10, s01))

    def cov(a: int, b: int) -> float:
        _, s10a, s01a = centred[a]
        _, s10b, s01b = centred[b]
        s10 = i10 / ((i10 - 1) * m) * float(s10a @ s10b)
        s01 = i01 / ((i01 - 1) * n) * float(s01a @ s01b)
        s11 = n_clusters / (n_clusters - 1) * float(s10a @ s01b + s10b @ s01a)
        return s10 / m + s01 / n + s11 / (m * n)

    diff = centred[0][0] - centred[1][0]
    se = float(np.sqrt(max(cov(0, 0) + cov(1, 1) - 2 * cov(0, 1), 0.0)))
    zcrit = stats.norm.ppf(0.5 + level / 2)
    if se == 0:
        z, p = 0.0 if diff == 0 else np.inf, 1.0 if diff == 0 else 0.0
    else:
        z, p = diff / se, float(2 * stats.norm.sf(abs(diff / se)))
    return {"auc_a": centred[0][0], "auc_b": centred[1][0], "difference": float(diff), "se": se,
            "low": diff - zcrit * se, "high": diff + zcrit * se, "z": float(z), "p_value": float(p),
            "clusters": n_clusters}
