"""``TuneConfig``: a hyper-parameter search (Optuna) over training settings, from one YAML file.

A search space maps training settings (dotted for nested ones, e.g. ``augment.rotation``) to

* a list — a categorical choice: ``optimizer: [adam, rmsprop, sgd]``, ``fine_tune: [0, 2, all]``;
* ``{low, high}`` with optional ``log: true`` or ``step`` — a float range, or an integer range
  when ``low`` and ``high`` are both integers: ``lr: {low: 1.0e-5, high: 1.0e-2, log: true}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cxrlab.core.settings import SETTINGS_RULES
from cxrlab.evaluate.registry import get_metric, list_metrics
from cxrlab.study.config import DataSettings, check_setting_names, flat_names, load_yaml_config

# a search's objective: a metric of the registry, on the validation side (earlier configs' val_loss is loss)
SearchMetric = Literal[tuple(list_metrics())]  # type: ignore[valid-type]


class Range(BaseModel):
    """A numeric range: float, or int when both ends are integers."""

    model_config = SETTINGS_RULES

    low: float | int
    high: float | int
    log: bool = False
    step: float | int | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.high <= self.low:
            raise ValueError(f"high ({self.high}) must exceed low ({self.low})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        return self

    @property
    def is_int(self) -> bool:
        """Both ends are integers (and the step, when given)."""
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))


class TuneConfig(DataSettings):
    """A search: ``trials`` training runs with settings drawn from ``space`` on top of ``base``,
    each on the same patient-grouped train/validation split; the test side is held out and used
    once, for the best trial."""

    name: str = "tune"
    space: dict[str, list[Any] | Range] = Field(default_factory=lambda: {"lr": Range(low=1e-4, high=1e-2, log=True)})
    trials: int = Field(20, ge=1, description="trials in total (a resumed search runs the missing ones)")
    timeout: float | None = Field(None, gt=0, description="stop starting new trials after this many seconds")
    metric: SearchMetric = Field("auc_macro", description="validation metric the search optimises (its "  # type: ignore[valid-type]
                                                          "direction is the metric's own)")
    pruning: bool = Field(True, description="median pruning on the per-epoch validation metric")
    startup_trials: int = Field(5, ge=1, description="random trials before TPE models the space; the pruner "
                                                     "waits for as many finished trials")
    storage: str | None = Field(None, description="SQLAlchemy URL of the Optuna storage (default: SQLite in the "
                                                  "output folder); a shared database lets several machines search together")
    share: str | None = Field(None, description="where finished trials and the results are copied, so workers with "
                                               "folders of their own (other machines) search together: an fsspec URL "
                                               "(s3://bucket/tune/lr, cxrlab[cloud]) or a folder")
    share_prefix: bool = Field(True, description="reuse frozen-prefix activations across trials")
    mlflow_uri: str | None = None
    experiment: str = "cxrlab-tuning"

    @field_validator("space", mode="before")
    @classmethod
    def _ranges(cls, space: Any) -> Any:
        if not isinstance(space, dict):
            return space
        out = {}
        for key, value in flat_names(space).items():
            if isinstance(value, dict):
                try:
                    value = Range(**value)
                except ValidationError as err:
                    first = err.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    raise ValueError(f"space.{key}{'.' + where if where else ''}: "
                                     f"{first['msg'].removeprefix('Value error, ')}") from None
            elif not isinstance(value, list | Range):
                raise ValueError(f"space.{key}: give a list of choices or a {{low, high}} range")
            out[key] = value
        return out

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if not self.space:
            raise ValueError("space: give at least one setting to search")
        check_setting_names("space", self.space)
        for key, choices in self.space.items():
            if isinstance(choices, list) and not choices:
                raise ValueError(f"space.{key}: give a non-empty list of choices or a {{low, high}} range")
            if "." not in key and any(k.startswith(key + ".") for k in self.space):
                raise ValueError(f"space.{key}: searched both as a whole and by its parts")
        return self

    @field_validator("metric", mode="before")
    @classmethod
    def _earlier_name(cls, value: Any) -> Any:
        return "loss" if value == "val_loss" else value

    @property
    def direction(self) -> str:
        """``maximize`` or ``minimize``."""
        return get_metric(self.metric).direction

    @property
    def monitored(self) -> str:
        """The per-epoch value pruning watches (``val_<metric>``)."""
        return get_metric(self.metric).log_key


def load_tune_config(path: str | Path, overrides: dict | None = None, assignments: Sequence[str] = ()) -> TuneConfig:
    """Read a tuning YAML (relative ``data``/``splits`` resolve against the YAML's folder).

    Raises:
        ConfigError: unreadable file or an invalid field (named).
    """
    return load_yaml_config(path, TuneConfig, overrides, assignments)
