"""Load a trained model and predict on the rows of a split, with the model's own preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrlab.core.errors import ConfigError
from cxrlab.data.manifest import Manifest
from cxrlab.models import InferenceModel, load_model
from cxrlab.models.classifier import CxrClassifier
from cxrlab.preprocess import PreprocessConfig, ShardDataset, ShardReader, prepare


@dataclass
class Predictions:
    """Logits of a model on a table of images (rows that could not be read are dropped)."""

    frame: pd.DataFrame
    logits: np.ndarray
    y_true: np.ndarray
    class_names: tuple[str, ...]
    skipped: list[tuple[str, str]]
    multilabel: bool = False  # then y_true is (N, F) 1/0 with NaN where a finding is unknown

    @property
    def probs(self) -> np.ndarray:
        """Probabilities ``(N, C)``: softmax over classes, or a sigmoid per finding."""
        if self.multilabel:
            return 1.0 / (1.0 + np.exp(-self.logits))
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def resolve_model_path(run: str | Path) -> Path:
    """``RUN/model.pt`` for a run directory, or the file itself.

    Raises:
        ConfigError: neither exists.
    """
    run = Path(run)
    path = run / "model.pt" if run.is_dir() else run
    if not path.is_file():
        raise ConfigError(f"{run}: no model found (expected a run directory with model.pt, or a model file)")
    return path


def prepared_dataset(model: CxrClassifier, preprocess: PreprocessConfig, frame: pd.DataFrame,
                     work_dir: Path) -> tuple[pd.DataFrame, ShardDataset, list[tuple[str, str]]]:
    """Preprocess ``frame``'s images into shards under ``work_dir`` (reused when already there).

    Returns:
        ``(rows that could be read, their dataset normalised for the model, skipped (image, reason))``.

    Raises:
        ConfigError: a label is not one of the model's classes, or no image could be read.
    """
    unknown = [] if model.multilabel else sorted(set(frame["label"]) - set(model.class_names))
    if unknown:
        raise ConfigError(f"labels {unknown} are not classes of the model {list(model.class_names)}; "
                          "use the scheme the model was trained with")
    frame = frame.reset_index(drop=True).assign(view=frame.get("view", ""))
    summary = prepare(Manifest(frame, model.class_names), work_dir, preprocess)
    if summary.images == 0:
        raise ConfigError(f"no image could be read ({len(summary.skipped)} skipped)")
    reader = ShardReader(work_dir)
    kept = frame[frame["image"].isin(set(reader.table["image"]))].reset_index(drop=True)
    dataset = ShardDataset(reader, model.class_names, images=kept["image"].tolist(), mean=model.spec.mean,
                           std=model.spec.std, in_chans=model.spec.in_chans, with_masks=model.lung_attention,
                           multilabel=model.multilabel)
    return kept, dataset, list(summary.skipped)


def predict_frame(model: CxrClassifier, preprocess: PreprocessConfig, frame: pd.DataFrame, work_dir: Path,
                  batch_size: int = 32) -> Predictions:
    """Preprocess ``frame``'s images into shards under ``work_dir`` and predict them.

    Raises:
        ConfigError: a label is not one of the model's classes, or no image could be read.
    """
    kept, dataset, skipped = prepared_dataset(model, preprocess, frame, work_dir)
    runner = InferenceModel(model)  # the command's device and precision (fp32 on the CPU by default)
    logits = [runner.logits(x) for x, _ in torch.utils.data.DataLoader(dataset, batch_size=batch_size)]
    return Predictions(kept, torch.cat(logits).numpy(), np.asarray(dataset.targets), model.class_names, skipped,
                       model.multilabel)


def load_for_evaluation(run: str | Path) -> tuple[CxrClassifier, PreprocessConfig, dict]:
    """The model, its preprocessing and its file's payload."""
    return load_model(resolve_model_path(run))
