"""Source probe: how well a backbone's features tell which *source* (hospital, collection) an
image came from.

A linear probe (logistic regression on the pooled last-block features, patient-grouped
cross-validation) is scored by balanced accuracy, with a 95% patient-bootstrap interval, against
chance (1 / number of sources): the features recognise sources when the interval lies above
chance (``above_chance``), whatever the number of sources. When
features recognise sources easily and the classes are spread unevenly over the sources (Cramér's
V between source and class), a classifier can score well by recognising sources: the class
signal may be a source signal. The probe *within* one class (same disease, different sources)
isolates source recognition from disease.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from scipy.stats.contingency import association
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrlab.evaluate.bootstrap import bootstrap_ci


log = logging.getLogger(__name__)
MIN_IMAGES = 5  # per source, for a source to take part in a probe
PROBE_C = 0.01  # inverse regularisation strength of the probe
N_BOOT = 500  # patient-bootstrap replicates of the probe's interval (cheap: predictions are resampled, not refitted)


def _probe(features: np.ndarray, sources: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> dict:
    counts = pd.Series(sources).value_counts()
    keep = np.isin(sources, counts[counts >= MIN_IMAGES].index)
    features, sources, groups = features[keep], sources[keep], groups[keep]
    names = sorted(set(sources))
    if len(names) < 2:
        return {"skipped": f"fewer than two sources with at least {MIN_IMAGES} images"}
    patients = pd.DataFrame({"s": sources, "g": groups}).drop_duplicates().groupby("s").size()
    splits = int(min(folds, patients.min()))
    if splits < 2:
        return {"skipped": f"source {patients.idxmin()} has a single patient: no patient-grouped probe"}
    # strongly regularised: a backbone gives ~1,000+ features for a few hundred images
    model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=3000, class_weight="balanced"))
    cv = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*least populated class.*")  # small sources: fewer groups than folds
        predicted = cross_val_predict(model, features, sources, groups=groups, cv=cv)
    interval = bootstrap_ci(lambda rows: float(balanced_accuracy_score(sources[rows], predicted[rows])), groups,
                            n_boot=N_BOOT, seed=seed)
    chance = 1.0 / len(names)
    return {"n": int(len(sources)), "sources": {s: int((sources == s).sum()) for s in names}, "folds": splits,
            "balanced_accuracy": float(balanced_accuracy_score(sources, predicted)), "chance": chance,
            "low": interval["low"], "high": interval["high"],
            "above_chance": interval["low"] is not None and interval["low"] > chance}


def source_probe(features: np.ndarray, frame: pd.DataFrame, folds: int = 5, seed: int = 0) -> dict:
    """Probe ``frame["source"]`` from ``features`` (rows aligned), over all images and within each class.

    Args:
        features: ``(N, C)`` features, one row per row of ``frame``.
        frame: ``source``, ``label`` and ``patient_id`` per image.
        folds: Patient-grouped folds (fewer when a source has fewer patients).
        seed: Fold shuffling seed.

    Returns:
        ``{"all": probe, "within_class": {class: probe}, "association": Cramér's V of source × class}``;
        a probe is ``{"n", "sources", "folds", "balanced_accuracy", "low", "high", "chance",
        "above_chance"}`` or ``{"skipped": reason}``.
    """
    sources = frame["source"].fillna("").astype(str).to_numpy()
    labels = frame["label"].astype(str).to_numpy()
    groups = frame["patient_id"].astype(str).to_numpy()
    result = {"all": _probe(features, sources, groups, folds, seed), "within_class": {}}
    for label in sorted(set(labels)):
        keep = labels == label
        result["within_class"][label] = _probe(features[keep], sources[keep], groups[keep], folds, seed)
    table = pd.crosstab(sources, labels).to_numpy()
    result["association"] = float(association(table, method="cramer")) if min(table.shape) > 1 else None
    return result
