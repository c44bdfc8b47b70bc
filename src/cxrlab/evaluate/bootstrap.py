"""95% confidence intervals by bootstrap over patients (cluster bootstrap).

Images of one patient are correlated; resampling images would understate the uncertainty.
Each replicate draws patients with replacement and takes all of their images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _group_rows(groups: Sequence) -> list[np.ndarray]:
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def bootstrap_ci(statistic: Callable[[np.ndarray], float | None], groups: Sequence, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict:
    """Percentile interval of ``statistic`` over patient-level bootstrap replicates.

    Args:
        statistic: Takes an array of row indices, returns a number (or ``None`` when undefined
            on that replicate, e.g. an AUC with one class only; such replicates are skipped).
        groups: Patient id per row.
        n_boot: Replicates.
        seed: Seed of the resampling (own generator).
        level: Interval coverage.

    Returns:
        ``{"value", "low", "high", "n_boot"}`` (``n_boot``: replicates where it was defined).
    """
    rows = _group_rows(groups)
    rng = np.random.default_rng(seed)
    value = statistic(np.concatenate(rows) if rows else np.array([], dtype=int))
    samples = []
    for _ in range(n_boot):
        picks = rng.integers(0, len(rows), size=len(rows))
        stat = statistic(np.concatenate([rows[i] for i in picks]))
        if stat is not None and np.isfinite(stat):
            samples.append(stat)
    if not samples or value is None:
        return {"value": value, "low": None, "high": None, "n_boot": len(samples)}
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return {"value": float(value), "low": float(low), "high": float(high), "n_boot": len(samples)}
