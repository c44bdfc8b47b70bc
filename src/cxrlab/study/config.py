"""``StudyConfig``: a grid of training configurations × patient-grouped folds, from one YAML file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, field_validator, model_validator

from cxrlab.core.defaults import DEFAULT_N_BOOT
from cxrlab.core.settings import SETTINGS_RULES, closest_hint, load_settings
from cxrlab.train.config import ALIASES, SECTIONS, flat_key, flatten_settings

SELECT_METRICS = ("auc_macro", "accuracy")
M = TypeVar("M", bound=BaseModel)


def check_setting_names(section: str, keys) -> None:
    """Each key (flat, as :func:`flat_settings` leaves it) names a training setting a study or search
    may set (``augment.rotation`` names a part of one).

    Raises:
        ValueError: ``section.key`` is unknown (with the closest name) or set by the study itself.
    """
    names = [*ALIASES, "augment", "recipe"]
    for key in keys:
        head, _, part = key.partition(".")
        if head in RESERVED:
            raise ValueError(f"{section}.{key}: set by the study itself (use the study's own {head!r} field "
                             "where there is one)")
        if head not in names:
            raise ValueError(f"{section}.{key}: not a training setting" + closest_hint(head, names))
        if head == "recipe":
            continue
        where = ALIASES.get(head, head).split(".")
        annotation = SECTIONS[where[0]] if len(where) == 1 else SECTIONS[where[0]].model_fields[where[1]].annotation
        parts = next((getattr(a, "model_fields", None) for a in getattr(annotation, "__args__", (annotation,))
                      if getattr(a, "model_fields", None)), None)
        if part and (parts is None or part not in parts):
            raise ValueError(f"{section}.{key}: not a part of {head!r}" + closest_hint(part, parts or [], head + "."))


def _flat(key: str) -> str:
    """``flat_key``, leaving a name no section has as it is (:func:`check_setting_names` says which and why)."""
    try:
        return flat_key(key)
    except ValueError:
        return key


def flat_settings(values: Any) -> Any:
    """Training settings as their flat names, whether given flat, in sections (``optim: {lr: 1e-4}``)
    or dotted (``optim.lr``): see :data:`cxrlab.train.config.ALIASES`; an unknown name is kept as given
    (:func:`check_setting_names` says which and why)."""
    return flatten_settings(values, unknown="keep") if isinstance(values, dict) else values


def flat_names(values: Any) -> Any:
    """A mapping of setting name -> values (a grid, a search space) with its names flat (``optim.lr`` -> ``lr``)."""
    return {_flat(str(key)): value for key, value in values.items()} if isinstance(values, dict) else values


def merge_settings(base: dict, factors: dict) -> dict:
    """``base`` updated with ``factors``; a dotted factor (``augment.rotation``) sets one part of a
    nested setting and keeps the others ``base`` gives."""
    out = dict(base)
    for key, value in factors.items():
        head, _, part = key.partition(".")
        if part:
            nested = out.get(head)
            out[head] = {**(nested if isinstance(nested, dict) else {}), part: value}
        else:
            out[key] = value
    return out


class DataSettings(BaseModel):
    """What studies and searches share: the data, its split, and training settings for every run."""

    model_config = SETTINGS_RULES

    data: str | None = None
    splits: str | None = Field(None, description="a splits.csv to start from (its test side is kept)")
    scheme: Literal["3class", "binary"] = "3class"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    dedupe: bool = Field(True, description="patients whose images are near-duplicates (pHash) stay on one side")
    seed: int = 0
    base: dict[str, Any] = Field(default_factory=dict, description="training settings shared by every run")

    _flat_base = field_validator("base", mode="before")(flat_settings)

    @model_validator(mode="after")
    def _check_data(self) -> DataSettings:
        if not self.data and not self.splits:
            raise ValueError("give data (a folder, manifest or metadata CSV) or splits (a splits.csv)")
        check_setting_names("base", self.base)
        return self


# training fields a study sets itself for every run: its own data settings, its tracking, where runs
# and shared caches go, and its own progress display
RESERVED = (*(f for f in DataSettings.model_fields if f != "base"), *SECTIONS["tracking"].model_fields, "out",
            "prepared", "prefix_store", "progress_bar")


class SecondStage(BaseModel):
    """Screen, then fine-tune the best: after every cell has run, the ``top`` cells by mean validation
    ``select_metric`` run again with ``settings`` on top of their own (e.g. frozen backbones screened,
    the top 4 fine-tuned fully, as in the multi-backbone papers)."""

    model_config = SETTINGS_RULES

    top: int = Field(ge=1, le=100, description="cells of the first stage that go on")
    settings: dict[str, Any] = Field(description="training settings of the second stage (over each cell's own)")

    _flat_settings = field_validator("settings", mode="before")(flat_settings)

    @model_validator(mode="after")
    def _check(self) -> SecondStage:
        if not self.settings:
            raise ValueError("give the settings the second stage changes (e.g. fine_tune: all)")
        check_setting_names("second_stage.settings", self.settings)
        return self


class StudyConfig(DataSettings):
    """A study: ``base`` training settings, a ``grid`` of factors, ``folds`` patient-grouped CV folds.

    Every combination of the grid's values (times each of the named ``variants``, when given) is a *cell*; each cell is trained once per fold
    (train on the other folds of the train+validation pool, validate on this one), ``repeats`` times
    with successive seeds, and, when all folds are done, its runs as one ensemble (the mean of their
    probabilities) are evaluated on the held-out test side. ``second_stage`` trains the top cells again with
    other settings; ``refit`` trains the best cell on all of train+validation and scores it on the
    test side once. The test side never takes part in training or in choosing the best cell.
    """

    name: str = "study"
    folds: int = Field(5, ge=0, le=20, description="CV folds over the train+validation pool; 0 or 1: the split as is")
    grid: dict[str, list[Any]] = Field(default_factory=lambda: {"fine_tune": [0, 1, 2, 3, 4, 5]})
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named bundles of training settings (e.g. 'guided attention': "
                                          "{lung_attention: true, attention_loss: 1.0}), each crossed with the grid")
    select_metric: Literal["auc_macro", "accuracy"] = "auc_macro"
    second_stage: SecondStage | None = Field(None, description="fine-tune the top cells of the grid again with "
                                                               "other settings")
    repeats: int = Field(1, ge=1, le=20, description="runs per cell and fold with seeds seed, seed+1, …: "
                                                     "mean ± sd over seeds beside the one over folds")
    refit: bool = Field(False, description="train the best cell once more on all of train+validation, for the "
                                           "median of its folds' kept epochs, and score that model on the test side")
    share_prefix: bool = Field(True, description="reuse frozen-prefix activations across runs")
    workers: int = Field(1, ge=1, le=64, description="runs trained at once, each in its own process with an equal "
                                                     "share of the CPU threads")
    leave_one_source_out: bool = Field(False, description="train the best configuration once per source on the "
                                                          "other sources and test it on the unseen one")
    shortcut_checks: bool = Field(True, description="probe the best model's features for the source, and test "
                                                    "its evidence and calls with the lungs removed (masks needed)")
    faithfulness: bool = Field(False, description="score each cell's test-side maps by ROAD deletion (does the map "
                                                  "point at what the model uses? ~2-4 s per image on 2 cores)")
    n_boot: int = Field(DEFAULT_N_BOOT, ge=0, le=100000, description="patient-bootstrap replicates of the test side's intervals")
    storage: str | None = Field(None, description="a database the runs are claimed through, so any number of "
                                                 "workers (processes, machines) share the study: sqlite:///study.db "
                                                 "or postgresql://user@host/db (cxrlab[postgres]); the workers share "
                                                 "the study folder, or each has its own and a share")
    share: str | None = Field(None, description="where finished runs and the results are copied, so workers with "
                                               "study folders of their own (other machines) use each other's runs: "
                                               "an fsspec URL (s3://bucket/studies/k-sweep, cxrlab[cloud]) or a folder")
    heartbeat: int = Field(60, ge=1, le=3600, description="seconds between a shared run's heartbeats; a run silent "
                                                          "for twice as long (its worker died) is trained again")
    mlflow_uri: str | None = None
    experiment: str = "cxrlab-studies"

    _flat_grid = field_validator("grid", mode="before")(flat_names)

    @field_validator("variants", mode="before")
    @classmethod
    def _flat_variants(cls, values: Any) -> Any:
        return {name: flat_settings(v) for name, v in values.items()} if isinstance(values, dict) else values

    @model_validator(mode="before")
    @classmethod
    def _variants_alone(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("variants") and "grid" not in values:
            values = {**values, "grid": {}}  # the variants are the comparison: no default k sweep on top
        return values

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        check_setting_names("grid", self.grid)
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key}: give a non-empty list of values")
        for name, settings in self.variants.items():
            if not name.strip():
                raise ValueError("variants: a variant needs a name")
            check_setting_names(f"variants.{name}", settings)
            shared = sorted(set(settings) & set(self.grid))
            if shared:
                raise ValueError(f"variants.{name}: sets {', '.join(shared)}, which the grid varies too")
        return self

    @property
    def num_folds(self) -> int:
        """Runs per cell."""
        return self.folds if self.folds >= 2 else 1


def load_yaml_config(path: str | Path, model: type[M], overrides: dict | None = None,
                     assignments: Sequence[str] = ()) -> M:
    """Read a YAML config into ``model`` (:func:`cxrlab.core.settings.load_settings`: relative
    ``data``/``splits`` from the YAML's folder; ``overrides`` as given, then ``--set`` assignments).

    Raises:
        ConfigError: unreadable file or an invalid field (named).
    """
    return load_settings(model, path, overrides, assignments)


def load_study_config(path: str | Path, overrides: dict | None = None, assignments: Sequence[str] = ()) -> StudyConfig:
    """Read a study YAML (see :func:`load_yaml_config`).

    Raises:
        ConfigError: unreadable file or an invalid field (named).
    """
    return load_yaml_config(path, StudyConfig, overrides, assignments)
