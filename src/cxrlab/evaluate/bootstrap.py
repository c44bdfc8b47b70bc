"""95% confidence intervals by bootstrap over patients (cluster bootstrap).

Images of one patient are correlated; resampling images would understate the uncertainty.
Each replicate draws patients with replacement and takes all of their images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cxrlab.core.defaults import DEFAULT_N_BOOT


def _group_rows(groups: Sequence) -> list[np.ndarray]:
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def bootstrap_cis(statistics: Callable[[np.ndarray], dict[str, float | None]], groups: Sequence,
                  n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95, null: float | None = None,
                  alternative: str = "two-sided") -> dict[str, dict]:
    """Percentile intervals of several statistics from one set of patient-level replicates.

    Args:
        statistics: Takes row indices, returns ``{name: value or None}`` (computed once per
            replicate, so an expensive metrics table is not recomputed per statistic).
        groups: As :func:`bootstrap_ci`; so are ``n_boot``, ``seed`` and ``level``.
        null: Also test each statistic against this value (e.g. 0 for a paired difference, 0.5
            for an AUC): ``p_value`` is two-sided, from the replicates shifted to the null,
            ``(1 + #{|s* - s| >= |s - null|}) / (1 + replicates)``; patients stay the unit.
        alternative: ``two-sided``, or ``greater`` (one-sided: is the statistic above ``null``?
            ``(1 + #{s* - s >= s - null}) / (1 + replicates)``).

    Returns:
        ``{name: {"value", "low", "high", "n_boot"}}`` (and ``"p_value"`` with ``null``).
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
        if null is not None:
            shifted = np.asarray(samples[name]) - value
            beyond = shifted >= value - null if alternative == "greater" else np.abs(shifted) >= abs(value - null)
            out[name]["p_value"] = float((1 + np.sum(beyond)) / (1 + len(shifted)))
    if null is not None:
        for value in out.values():
            value.setdefault("p_value", None)
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error across the comparisons; ``None`` kept).
    Written here: scipy offers only Benjamini-Hochberg, and six lines do not justify statsmodels."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None and np.isfinite(p)]
    adjusted: list[float | None] = [None] * len(p_values)
    running, m = 0.0, len(present)
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def bootstrap_ci(statistic: Callable[[np.ndarray], float | None], groups: Sequence, n_boot: int = DEFAULT_N_BOOT,
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
