"""``StudyConfig``: a grid of training configurations × patient-grouped folds, from one YAML file."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cxrlab.core.errors import ConfigError
from cxrlab.train.config import TrainConfig

# fields a study sets itself for every run
RESERVED = ("data", "splits", "out", "scheme", "ratios", "seed", "prepared", "prefix_store", "mlflow_uri",
            "experiment", "mlflow_tags", "progress_bar")
SELECT_METRICS = ("auc_macro", "accuracy")


class StudyConfig(BaseModel):
    """A study: ``base`` training settings, a ``grid`` of factors, ``folds`` patient-grouped CV folds.

    Every combination of the grid's values is a *cell*; each cell is trained once per fold
    (train on the other folds of the train+validation pool, validate on this one) and, when all
    folds are done, its best fold's model (lowest validation loss) is evaluated on the held-out
    test side. The test side never takes part in training or in choosing the best cell.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "study"
    data: str | None = None
    splits: str | None = Field(None, description="a splits.csv whose test side to keep (folds are made over the rest)")
    scheme: Literal["3class", "binary"] = "3class"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    folds: int = Field(5, ge=0, le=20, description="CV folds over the train+validation pool; 0 or 1: the split as is")
    seed: int = 0
    base: dict[str, Any] = Field(default_factory=dict, description="training settings shared by every run")
    grid: dict[str, list[Any]] = Field(default_factory=lambda: {"fine_tune": [0, 1, 2, 3, 4, 5]})
    select_metric: Literal["auc_macro", "accuracy"] = "auc_macro"
    share_prefix: bool = Field(True, description="reuse frozen-prefix activations across runs")
    leave_one_source_out: bool = Field(False, description="train the best configuration once per source on the "
                                                          "other sources and test it on the unseen one")
    mlflow_uri: str | None = None
    experiment: str = "cxrlab-studies"

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if not self.data and not self.splits:
            raise ValueError("give data (a folder, manifest or metadata CSV) or splits (a splits.csv)")
        for section, keys in (("base", list(self.base)), ("grid", list(self.grid))):
            for key in keys:
                if key in RESERVED:
                    raise ValueError(f"{section}.{key}: set by the study itself (use the study's own {key!r} field "
                                     "where there is one)")
                if key not in TrainConfig.model_fields:
                    close = difflib.get_close_matches(key, list(TrainConfig.model_fields), n=1)
                    raise ValueError(f"{section}.{key}: not a training setting" + (f"; did you mean {close[0]!r}?" if close else ""))
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key}: give a non-empty list of values")
        return self

    @property
    def num_folds(self) -> int:
        """Runs per cell."""
        return self.folds if self.folds >= 2 else 1


def load_study_config(path: str | Path, overrides: dict | None = None) -> StudyConfig:
    """Read a study YAML (relative ``data``/``splits`` resolve against the YAML's folder).

    Raises:
        ConfigError: unreadable file or an invalid field (named).
    """
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read study config ({err})") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a study config is a mapping of fields")
    for key in ("data", "splits"):
        if isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
            candidate = path.parent / values[key]
            values[key] = str(candidate if candidate.exists() else Path(values[key]))
    values.update(overrides or {})
    try:
        return StudyConfig(**values)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"{path}: field {field!r}: {first['msg'].removeprefix('Value error, ')}") from None
