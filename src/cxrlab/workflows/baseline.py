"""The baseline every fine-tune must beat: a linear probe on frozen ImageNet features (issue 17).

A logistic regression (scikit-learn) on the globally pooled last-block features of the pretrained
backbone, before any fine-tuning, on the run's own preprocessed images. Its L2 strength is chosen
by patient-grouped 3-fold cross-validation inside each training part (log-loss), with balanced
class weights. On cxr-real (patient-grouped 5-fold, out of fold) such a probe gave COVID-19 AUC
0.81 with EfficientNet-Lite0 at 224 px, about what the default fine-tune scored: a fine-tuned
model that does not beat it beyond noise has learned nothing the ImageNet features did not hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrlab.core.runtime import default_workers
from cxrlab.models import create_classifier
from cxrlab.models.ood import pooled_features
from cxrlab.preprocess import ShardDataset, ShardReader
from cxrlab.train import TrainConfig

# grid fits in worker processes: on cxr-real's 5 folds, 2 cores, 23.7 s in-process -> 7.2 s, the same probabilities
PROBE_JOBS = min(4, default_workers())
PROBE_C = (1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried (inverse); 0.01 was best on cxr-real's folds


def frozen_features(config: TrainConfig, prepared: Path, images: list[str], names: list[str]) -> np.ndarray:
    """``(N, D)`` pooled last-block features of ``images`` (prepared in ``prepared``, in that order)
    through the pretrained backbone of ``config`` (its weights as training would load them, no head)."""
    model = create_classifier(config.model.backbone, len(names), pretrained=config.model.pretrained, weights=config.model.weights,
                              allow_download=config.model.allow_download, seed=config.runtime.seed)
    spec = model.spec
    dataset = ShardDataset(ShardReader(prepared), names, images=images, mean=spec.mean, std=spec.std,
                           in_chans=spec.in_chans)
    return pooled_features(model, dataset, batch_size=config.optim.batch_size)


def fit_probe(features: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0):
    """A standardised logistic regression with ``C`` from :data:`PROBE_C` chosen by patient-grouped
    3-fold CV (fewer folds when there are fewer patients)."""
    folds = min(3, len(np.unique(groups)))
    pipe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000,
                                                              random_state=seed))
    search = GridSearchCV(pipe, {"logisticregression__C": list(PROBE_C)}, scoring="neg_log_loss",
                          cv=GroupKFold(n_splits=folds), n_jobs=PROBE_JOBS)
    return search.fit(features, y, groups=groups)


def probe_oof(features: np.ndarray, frame: pd.DataFrame, names: list[str], seed: int = 0) -> pd.DataFrame:
    """Out-of-fold probabilities of the probe: for each fold, fitted on the other folds' images
    (``frame``: ``image``, ``label``, ``patient_id``, ``source``, ``fold`` aligned with ``features``).

    Returns:
        The columns of :data:`cxrlab.core.run_folder.OOF_PREDICTIONS`: ``image, patient_id, source, label, fold``
        and a probability per class.
    """
    y = np.array([names.index(v) for v in frame["label"]])
    folds = pd.to_numeric(frame["fold"]).to_numpy(dtype=int)
    probs = np.zeros((len(frame), len(names)))
    for fold in sorted(set(folds)):
        train = folds != fold
        model = fit_probe(features[train], y[train], frame["patient_id"].to_numpy()[train], seed)
        probs[~train] = _full_probabilities(model, features[~train], len(names))
    out = frame[["image", "patient_id", "source", "label", "fold"]].reset_index(drop=True).copy()
    for i, name in enumerate(names):
        out[name] = probs[:, i]
    return out


def _full_probabilities(model, features: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities in class-index order, zero for a class the training part lacked."""
    full = np.zeros((len(features), num_classes))
    full[:, model.classes_] = model.predict_proba(features)
    return full
