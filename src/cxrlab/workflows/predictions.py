"""A run's predictions on a table of images, cached in its folder: what the study's test side, the
folds of ``train --folds`` and a search's best trial read (through :class:`cxrlab.models.predictor.Predictor`,
the one path every door takes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from cxrlab.core.io import atomic_write_text
from cxrlab.core.run_folder import TEST_PREDICTIONS
from cxrlab.models.predictor import Predictor
from cxrlab.models.tta import TtaMode
from cxrlab.core.device import stage_record, use_policy
from cxrlab.train.runner import record_stage, run_policy


def preprocess_key(preprocess) -> str:
    """A short name for a preprocessing: images prepared one way live under it, apart from others."""
    return hashlib.sha1(json.dumps(preprocess.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def predict_test_side(run_dir: Path, test: pd.DataFrame, work: Path, cache: str = TEST_PREDICTIONS,
                      views: TtaMode | None = None, prepared: Path | None = None) -> pd.DataFrame:
    """Class probabilities of a run's model on ``test``'s images (cached in the run folder as ``cache``;
    ``views``: test-time views to average over, the model file's own by default; ``prepared``: shards
    that may already hold them, made the same way, as a cross-validation's do)."""
    cached = run_dir / cache
    if cached.exists():
        return pd.read_csv(cached)
    policy = run_policy(run_dir)  # the run's own device and precision, not the CPU's fp32 whatever it trained on
    with use_policy(policy):
        predictor = Predictor(run_dir, views=views)
        result = predictor.predict_frame(test, work / preprocess_key(predictor.preprocess), prepared=prepared)
    record_stage(run_dir, "test_side", stage_record(policy, next(predictor.model.parameters()).device))
    frame = result.frame[["image", "label"]].copy()
    for i, name in enumerate(result.class_names):
        frame[name] = result.probs[:, i]
    atomic_write_text(cached, frame.to_csv(index=False))
    return frame
