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


def bootstrap_cis(statistics: Callable[[np.ndarray], dict[str, float | None]], groups: Sequence,
                  n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """Percentile intervals of several statistics from one set of patient-level replicates.

    Args:
        statistics: Takes row indices, returns ``{name: value or None}`` (computed once per
            replicate, so an expensive metrics table is not recomputed per statistic).
        groups, n_boot, seed, level: As :func:`bootstrap_ci`.

    Returns:
        ``{name: {"value", "low", "high", "n_boot"}}``.
    """
    rows = _group_rows(groups)
    rng = np.random.default_rng(seed)
    point = statistics(np.concatenate(rows) if rows else np.array([], dtype=int))
    samples: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(n_boot):
        picks = rng.integers(0, len(rows), size=len(rows))
        for name, value in statistics(np.concatenate([rows[i] for i in picks])).items():
            if value is not None and np.isfinite(value):
                samples[name].append(value)
    tail = (1 - level) / 2 * 100
    out = {}
    for name, value in point.items():
        if not samples[name] or value is None:
            out[name] = {"value": value, "low": None, "high": None, "n_boot": len(samples[name])}
            continue
        low, high = np.percentile(samples[name], [tail, 100 - tail])
        out[name] = {"value": float(value), "low": float(low), "high": float(high), "n_boot": len(samples[name])}
    return out


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
    return bootstrap_cis(lambda rows: {"value": statistic(rows)}, groups, n_boot, seed, level)["value"]
