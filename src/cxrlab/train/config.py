"""``TrainConfig``: a training run's settings, one nested section per part of the pipeline.

Each section is its own model (``data``, ``preprocess``, ``model``, ``optim``, ``schedule``,
``select``, ``augment``, ``runtime``, ``tracking``) with one default, one type and one description
per setting; ``preprocess`` *is* :class:`cxrlab.preprocess.PreprocessConfig`, the object ``prepare``
takes and a model file records. Each part of training receives its own sections
(``ClassifierModule(model, optim, schedule, ...)``, ``EpochSelector(select)``, ``Augmenter(augment)``).

A config may be written in sections (``optim: {lr: 1e-4}``, as a run writes its ``config.yaml``), as
flat names (``lr: 1e-4``: every setting's name is also an alias, :data:`ALIASES`) or dotted
(``--set optim.lr=1e-4``); config files of earlier versions, flat or in their sections, still load
(:data:`LEGACY`). Names that differ from their flat alias: ``data.path`` (``data``),
``schedule.kind`` (``schedule``), ``select.metric`` (``select_on``), ``select.smoothing``
(``select_smoothing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, model_validator

from cxrlab.core.errors import ConfigError
from cxrlab.core.settings import closest_hint, load_settings, read_yaml_mapping, validate
from cxrlab.data.findings import FindingPolicy, is_multilabel
from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.train.sections import (  # noqa: F401 -- AugmentConfig and HeadConfig are part of this module's API too
    SECTIONS,
    AugmentConfig,
    DataSection,
    HeadConfig,
    ModelSection,
    OptimSection,
    PhaseConfig,
    RuntimeSection,
    ScheduleSection,
    SelectSection,
    TrackingSection,
    _Section,
)

RENAMED = {"data": "data.path", "schedule": "schedule.kind", "select_on": "select.metric",
           "select_smoothing": "select.smoothing"}
LEGACY = {"schedule.select_on": "select.metric", "schedule.select_smoothing": "select.smoothing",
          "schedule.min_epochs": "select.min_epochs", "schedule.patience": "select.patience",
          "preprocess.prepared": "runtime.prepared"}
"""Where earlier versions' sectioned ``config.yaml`` files put a setting -> where it is now."""


def _aliases() -> dict[str, str]:
    renamed = {path: flat for flat, path in RENAMED.items()}
    out: dict[str, str] = {}
    for section, model in SECTIONS.items():
        if section == "augment":  # a setting of its own (its parts are augment.NAME): augment.contrast is not contrast
            continue
        for name in model.model_fields:
            path = f"{section}.{name}"
            flat = renamed.get(path, name)
            if flat in out or flat in SECTIONS and flat not in RENAMED:
                raise RuntimeError(f"two settings share the flat name {flat!r}")
            out[flat] = path
    return out


ALIASES: dict[str, str] = _aliases()
"""Every setting's flat name (what older and shorter configs write) -> its place, ``section.name``."""
FLAT: dict[str, str] = {path: flat for flat, path in ALIASES.items()}


def _known_names() -> list[str]:
    return [*ALIASES, *(f"{s}.{n}" for s, m in SECTIONS.items() for n in m.model_fields), "recipe"]


def setting_path(key: str) -> str:
    """Where a (dotted) setting name lives: ``lr`` and ``optim.lr`` -> ``optim.lr``, ``head.hidden`` ->
    ``model.head.hidden``, ``augment.rotation`` as it is, an earlier version's ``schedule.select_on`` ->
    ``select.metric``.

    Raises:
        ValueError: no such setting (with the closest name).
    """
    head, _, rest = key.partition(".")
    if head in SECTIONS and (rest or head not in RENAMED):
        if not rest:
            return head
        name, _, part = rest.partition(".")
        path = LEGACY.get(f"{head}.{name}", f"{head}.{name}")
        section, _, name = path.partition(".")
        if name not in SECTIONS[section].model_fields:
            raise ValueError(f"{head}.{name}: the {head} section has no such setting"
                             + closest_hint(name, SECTIONS[head].model_fields, head + "."))
        return f"{path}.{part}" if part else path
    if head in ALIASES:
        return f"{ALIASES[head]}.{rest}" if rest else ALIASES[head]
    if head == "recipe" and not rest:
        return head
    raise ValueError(f"field {key!r}: unknown field" + closest_hint(head, _known_names()))


def flat_key(key: str) -> str:
    """A (dotted) setting name as its flat alias: ``optim.lr`` -> ``lr``, ``model.head.hidden`` ->
    ``head.hidden``, ``select.metric`` -> ``select_on``; ``augment.rotation`` as it is.

    Raises:
        ValueError: no such setting (with the closest name).
    """
    path = setting_path(key)
    section, _, rest = path.partition(".")
    if section in ("augment", "recipe") or not rest:
        return path
    name, _, part = rest.partition(".")
    flat = FLAT[f"{section}.{name}"]
    return f"{flat}.{part}" if part else flat


def nest_settings(values: dict) -> dict:
    """Settings given flat, dotted or in sections (any mix) as ``{section: {name: value}}`` (and
    ``recipe``), the form :class:`TrainConfig` validates.

    Raises:
        ValueError: a name no section has (with the closest name), or one setting given twice.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key)
        section_given = key in SECTIONS and (isinstance(value, dict) or (value is None and key not in RENAMED))
        items = [(f"{key}.{k}", v) for k, v in (value or {}).items()] if section_given else [(key, value)]
        for given, item in items:
            path = setting_path(given)
            if "." not in path:  # recipe, or a section given as something else than a mapping: pydantic says why
                out[path] = item
                continue
            section, name, *part = path.split(".")
            body = out.setdefault(section, {})
            if part:  # one part of a nested setting (model.head.hidden, augment's are their section's)
                holder = body.setdefault(name, {})
                if not isinstance(holder, dict) or part[0] in holder:
                    raise ValueError(f"{given}: {'.'.join([name, *part])!r} is set twice")
                holder[part[0]] = item
            elif name in body:
                raise ValueError(f"{given}: {name!r} is set twice (once flat, once in its section?)")
            else:
                body[name] = item
    return out


def flatten_settings(values: dict, unknown: Literal["raise", "keep", "drop"] = "raise") -> dict:
    """Settings in any form as their flat aliases (``{lr: 1e-4, augment: {...}}``): how studies and
    searches name them. ``unknown``: what a name no section has does: ``raise``; ``keep`` it as given
    (a study's check names it); ``drop`` it (a setting since removed, in a recorded config).

    Raises:
        ValueError: see :func:`nest_settings` (``unknown="raise"``, or one setting given twice).
    """
    try:
        nested = nest_settings(values)
    except ValueError:
        if unknown == "raise":
            raise
        pairs = [(f"{k}.{n}", v) for k, body in values.items() if k in SECTIONS and k != "augment"
                 and isinstance(body, dict) for n, v in body.items()]
        pairs += [(k, v) for k, v in values.items() if not (k in SECTIONS and k != "augment" and isinstance(v, dict))]
        out: dict[str, Any] = {}
        for key, value in pairs:  # one name at a time: an unknown one does not spoil the others
            try:
                out.update(flatten_settings({key: value}))
            except ValueError:
                if unknown == "keep":
                    out[key] = value
        return out
    out = {}
    for section, body in nested.items():
        if section in ("recipe", "augment") or not isinstance(body, dict):
            out[section] = body
        else:
            out.update({FLAT[f"{section}.{name}"]: value for name, value in body.items()})
    return out


def merge_nested(base: dict, top: dict) -> dict:
    """``base`` with ``top``'s sections merged in (``top`` wins, setting by setting)."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# Named recipes: settings a config starts from (its own values win). "small-data" is the field defaults
# below, chosen on cxr-real cross-validation (docs/benchmarks/recipe.md): every block fine-tuned with
# AdamW 1e-4, one warm-up epoch, cosine decay over a fixed 10 epochs and the last one kept (choosing an
# epoch on a small validation side kept worse models; a fixed schedule also lets train --folds train
# each fold on every other one); "papers" is what the papers ran and cxrlab's default until then: the
# last 2 blocks, Adam at 1e-3, ReduceLROnPlateau, no augmentation, the epoch with the lowest validation loss.
RECIPES: dict[str, dict[str, Any]] = {
    "small-data": {},
    "papers": {"fine_tune": 2, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "plateau",
               "warmup_epochs": 0, "epochs": 10, "patience": 5, "select_on": "loss", "select_smoothing": 1,
               "min_epochs": 1, "augment": {"enabled": False}},
}


class TrainConfig(_Section):
    """A training run. Data: ``data.path`` (folder tree, manifest, metadata CSV or collection) and/or
    ``data.splits`` (a ``splits.csv``); without a split file a patient-grouped split is made with
    ``data.ratios``."""

    recipe: Literal["small-data", "papers"] = Field("small-data", description="named bundle of settings the "
                                                                            "config starts from (its own values win)")
    data: DataSection = DataSection()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelSection = ModelSection()
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection = ScheduleSection()
    select: SelectSection = SelectSection()
    augment: AugmentConfig = AugmentConfig()
    runtime: RuntimeSection = RuntimeSection()
    tracking: TrackingSection = TrackingSection()
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)  # where each value came from (load_config)

    @model_validator(mode="before")
    @classmethod
    def _sections_and_recipe(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = nest_settings(values)
        recipe = values.get("recipe")
        return merge_nested(nest_settings(RECIPES[recipe]), values) if recipe in RECIPES else values

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        data, optim, runtime = self.data, self.optim, self.runtime
        if not data.path and not data.splits:
            raise ValueError("give data (a folder, manifest or metadata CSV) or splits (a splits.csv)")
        if (runtime.devices > 1 or runtime.num_nodes > 1) and runtime.strategy == "auto":
            object.__setattr__(self, "runtime", runtime.model_copy(update={"strategy": "ddp"}))
        if self.multilabel and (optim.attention_loss or data.class_balance == "sampler"):
            raise ValueError(f"scheme: {data.scheme} is multi-label: the attention loss (a true class's Grad-CAM) and "
                             "class_balance: sampler (one class per image) need a single-label scheme")
        if optim.mixup and optim.attention_loss:
            raise ValueError("mixup: not with attention_loss (a mixed image has no one lung mask or true class)")
        if self.model.tta != "none" and data.folds < 3:
            raise ValueError("tta: test-time views are for the fold ensemble; set folds (at least 3) too")
        epochs = sum(p.epochs for p in self.resolved_phases())
        if self.select.min_epochs > epochs and "min_epochs" not in self.select.model_fields_set:
            object.__setattr__(self, "select", self.select.model_copy(update={"min_epochs": epochs}))  # a short run
        if self.select.min_epochs > epochs:
            raise ValueError(f"min_epochs ({self.select.min_epochs}) is more than the run's {epochs} epoch(s): no "
                             "epoch could be kept")
        return self

    def __eq__(self, other: object) -> bool:  # the settings, not where they came from
        return isinstance(other, TrainConfig) and self.to_sections() == other.to_sections()

    def __hash__(self) -> int:
        return hash(yaml.safe_dump(self.to_sections(), sort_keys=True))

    @property
    def multilabel(self) -> bool:
        """Whether the scheme is a multi-label finding scheme."""
        return is_multilabel(self.data.scheme)

    @property
    def finding_policy(self) -> FindingPolicy:
        """What uncertain and blank labels of a collection become (multi-label schemes)."""
        return FindingPolicy.parse(self.data.uncertain, self.data.blank)

    @property
    def uses_masks(self) -> bool:
        """Whether training needs each image's lung mask (lung attention, or the attention loss)."""
        return self.model.lung_attention or self.optim.attention_loss > 0

    def resolved_phases(self) -> tuple[PhaseConfig, ...]:
        """The phases to run: ``schedule.phases`` if given, else one phase of ``model.fine_tune``,
        ``optim.lr`` and ``schedule.epochs``."""
        return self.schedule.phases or (PhaseConfig(fine_tune=self.model.fine_tune, lr=self.optim.lr,
                                                    epochs=self.schedule.epochs),)

    def to_sections(self) -> dict:
        """Every setting, JSON-ready, in its section (the form a run writes to ``config.yaml``)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """YAML text of every setting in its section (the run's resolved config)."""
        return yaml.safe_dump(self.to_sections(), sort_keys=False)

    def flat(self) -> dict:
        """Every setting by its flat alias, JSON-ready (``augment`` as one mapping)."""
        return flatten_settings(self.to_sections())

    def replace(self, settings: dict, origin: str = "config") -> TrainConfig:
        """A validated copy with ``settings`` (flat, dotted or in sections) changed.

        Raises:
            ConfigError: a bad name or value (named).
        """
        try:
            changes = nest_settings(settings)
        except ValueError as err:
            raise ConfigError(f"{origin}: {err}") from None
        copy = build_config(merge_nested(self.to_sections(), changes), origin)
        copy._sources = {**setting_sources(self), **dict.fromkeys(_leaves(changes), f"set by {origin}")}
        return copy


def build_config(values: dict, origin: str = "config") -> TrainConfig:
    """Validate a dict (flat, dotted or in sections) into a :class:`TrainConfig`.

    Raises:
        ConfigError: naming the first bad field, e.g. ``field 'optimzer': unknown field; did you mean 'optimizer'?``.
    """
    return validate(TrainConfig, values, origin)


def load_config(path: str | Path | None, overrides: dict | None = None, assignments: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (sections, flat names or both; :mod:`cxrlab.core.settings`: relative paths
    from its folder), apply command-line options (``None``: not given) and ``--set`` assignments
    (``optim.lr=1e-4`` or ``lr=1e-4``). The config knows where each value came from
    (:func:`setting_sources`).

    Raises:
        ConfigError: unreadable YAML, a bad assignment or an invalid field (named).
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    config = load_settings(TrainConfig, path, given, assignments, normalize=flatten_settings, key=flat_key)
    config._sources = _sources(config, path, given, assignments)
    return config


def _leaves(nested: dict) -> list[str]:
    return [f"{section}.{name}" for section, body in nested.items() if isinstance(body, dict) for name in body]


def _sources(config: TrainConfig, path: str | Path | None, overrides: dict, assignments: Sequence[str]) -> dict[str, str]:
    sources = dict.fromkeys(_leaves(nest_settings(RECIPES[config.recipe])), f"recipe {config.recipe}")
    if path is not None:
        sources.update(dict.fromkeys(_leaves(nest_settings(read_yaml_mapping(path))), f"file {path}"))
    sources.update({".".join(setting_path(k).split(".")[:2]): "command line" for k in overrides})
    sources.update({".".join(setting_path(a.partition("=")[0].strip()).split(".")[:2]): "command line (--set)"
                    for a in assignments})
    return sources


def setting_sources(config: TrainConfig) -> dict[str, str]:
    """``section.name`` -> where its value came from, for every setting: ``default``, ``recipe NAME``,
    ``file PATH``, ``command line``, ``command line (--set)`` or ``derived`` (set from others: a strategy
    of ddp from several devices, a minimum epoch count shrunk to a short run); a config built from a
    dict in code: ``given`` for what the dict set."""
    recorded = getattr(config, "_sources", None) or {}
    out = {}
    for section, model in SECTIONS.items():
        part = getattr(config, section)
        for name, field in model.model_fields.items():
            key = f"{section}.{name}"
            if key in recorded:
                out[key] = recorded[key]
            elif not recorded and name in part.model_fields_set:
                out[key] = "given"
            else:
                out[key] = "default" if getattr(part, name) == field.get_default(call_default_factory=True) else "derived"
    return out
