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
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from cxrlab.core.run_folder import CONFIG, SOURCES
from cxrlab.core.errors import ConfigError
from cxrlab.core.settings import closest_hint, load_settings, read_yaml_mapping, validate
from cxrlab.data.classes import class_names
from cxrlab.data.findings import FindingPolicy, is_multilabel
from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.train.selection import SELECT_METRICS

FineTuneValue = int | Literal["all"]
SelectMetric = Literal[tuple(SELECT_METRICS)]  # type: ignore[valid-type]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PhaseConfig(_Section):
    """One phase of a multi-phase schedule (e.g. head only at 1e-3, then k=2 at 1e-4)."""

    fine_tune: FineTuneValue
    lr: float = Field(gt=0)
    epochs: int = Field(ge=1)


class HeadConfig(_Section):
    """A custom head: hidden widths, dropout per layer, activation."""

    hidden: tuple[int, ...] = (128, 64)
    dropout: tuple[float, ...] = (0.10, 0.05)
    activation: Literal["elu", "relu", "gelu"] = "elu"


class DataSection(_Section):
    """What the run trains on and how it is split."""

    path: str | None = Field(None, description="folder tree, manifest, metadata CSV or public collection")
    splits: str | None = Field(None, description="a splits.csv to use (default: make a patient-grouped split)")
    scheme: str = Field("3class", description="3class or binary (one class per image), or multi-label findings: "
                                              "chestxray14, chexpert5 or findings:A,B,C (a sigmoid per finding)")
    uncertain: tuple[str, ...] = Field(("ignore",), description="multi-label: what an uncertain (-1) label of a "
                                                                "collection becomes: ignore (left out of loss and "
                                                                "metrics), ones or zeros; NAME=POLICY for one finding")
    blank: Literal["ignore", "ones", "zeros"] = Field("zeros", description="multi-label: what a blank label cell "
                                                                           "of a collection becomes")
    ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train, validation and test shares of "
                                                                            "the split made here")
    dedupe: bool = Field(True, description="when making a split: patients whose images are near-duplicates (pHash "
                                           "distance <= 4) form one group, kept on one side")
    folds: int = Field(0, ge=0, description="K >= 3: cross-validated training (cxrlab train --folds K): K runs, "
                                            "out-of-fold predictions for every image; ratios are then not used")
    class_balance: Literal["none", "weights", "sampler"] = Field(
        "weights", description="class-weighted loss, a balanced sampler, or none")

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        class_names(value)  # a ConfigError (a ValueError) names the schemes
        return value

    @field_validator("uncertain")
    @classmethod
    def _known_policy(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        FindingPolicy.parse(value)  # names a bad policy
        return value

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value in (1, 2):  # a fold predicts, the next chooses the epoch: two leave nothing to train on
            raise ValueError("0 (one split) or at least 3 (one fold predicts, the next chooses the epoch, the "
                             "rest train)")
        return value


class ModelSection(_Section):
    """The network: backbone, starting weights, fine-tuning degree, head."""

    backbone: str = Field("efficientnet_lite0", description="backbone name (cxrlab backbones)")
    pretrained: Literal["imagenet", "none"] = Field("imagenet", description="starting weights of the backbone")
    weights: str | None = Field(None, description="backbone weights file or cache folder")
    init_from: str | None = Field(None, description="start from the backbone of a trained cxrlab model (a run "
                                                    "folder or model file; its head is not used): transfer from "
                                                    "your own task, e.g. ChestX-ray14's findings, to another")
    allow_download: bool = Field(False, description="let timm download weights when no offline source exists")
    fine_tune: FineTuneValue = Field("all", description="trainable last blocks k, or all")
    batchnorm: Literal["train", "frozen"] = Field(
        "train", description="frozen: every BatchNorm layer keeps its pretrained statistics, also in the trainable "
                             "blocks (its scale and shift still learn), as Keras' transfer-learning guide advises")
    head: str | HeadConfig = Field("gap-128-64", description="a head preset or {hidden, dropout, activation}")
    lung_attention: bool = Field(False, description="guided attention: multiply the last feature maps by the lung "
                                                    "mask (every image needs one, also when predicting)")
    tta: Literal["none", "crops"] = Field("none", description="with folds: the fold ensemble averages each member "
                                                               "over test-time views (crops: the image and five 90% "
                                                               "crops); measured no gain on cxr-real")

    @field_validator("fine_tune")
    @classmethod
    def _k_non_negative(cls, value: FineTuneValue) -> FineTuneValue:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0 or 'all'")
        return value


class OptimSection(_Section):
    """The optimiser, the loss and its regularisers."""

    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"] = Field("adamw", description="optimiser")
    lr: float = Field(1e-4, gt=0, le=10, description="learning rate (single-phase runs)")
    lr_decay: float = Field(1.0, gt=0, le=1, description="discriminative learning rates: each trainable block "
                                                         "below the head trains at this fraction of the one above")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.05, ge=0, le=10, description="weight decay (decoupled for adamw)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing (training loss only)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="exponential moving average of the weights, decay per "
                                                          "step (0: off); the averaged weights are validated and kept")
    mixup: float = Field(0.0, ge=0, le=10, description="alpha of mixup (0: off): each training batch is mixed with "
                                                      "itself shuffled, weight lambda ~ Beta(alpha, alpha), and so are "
                                                      "the targets; what is mixed is the input of the first trainable "
                                                      "block (the image when every block trains)")
    batch_size: int = Field(32, ge=1, description="images per step (per process in a data-parallel run)")
    attention_loss: float = Field(0.0, ge=0, description="alpha: add alpha x the attention term (attention_form) to "
                                                         "the training loss (masks needed for training only)")
    attention_form: Literal["outside_share", "gain"] = Field(
        "outside_share", description="outside_share: the share of the true class's Grad-CAM outside the lungs "
                                     "(cxrlab's variant); gain: GAIN's attention mining on the soft-masked image plus "
                                     "the map-vs-lung-mask error (Li et al.; a second forward pass, no prefix cache)")


class ScheduleSection(_Section):
    """How long training runs and how the learning rate moves."""

    kind: Literal["plateau", "step", "cosine", "none"] = Field("cosine", description="learning-rate schedule")
    epochs: int = Field(10, ge=1, description="epochs (single-phase runs)")
    phases: tuple[PhaseConfig, ...] = Field((), description="several phases of fine_tune, lr and epochs, run in turn")
    warmup_epochs: int = Field(1, ge=0, description="epochs of linear learning-rate warm-up (per step) at the "
                                                    "start of each phase")
    plateau_factor: float = Field(0.2, gt=0, lt=1, description="plateau: factor the rate is cut by")
    plateau_patience: int = Field(2, ge=0, description="plateau: epochs without improvement before a cut")
    step_size: int = Field(5, ge=1, description="step: epochs between cuts")
    step_gamma: float = Field(0.1, gt=0, le=1, description="step: factor of each cut")


class SelectSection(_Section):
    """Which epoch is kept and when a run stops early (:class:`cxrlab.train.selection.EpochSelector`)."""

    metric: SelectMetric = Field(  # type: ignore[valid-type]
        "last", description="validation metric that picks the epoch kept and drives early stopping (auc_covid: "
                            "COVID-19 vs the rest); last: keep the final epoch, no early stopping, and no "
                            "validation side needed (a refit on train+validation for a fixed number of epochs)")
    smoothing: int = Field(2, ge=1, description="epochs in the trailing mean of that metric compared")
    min_epochs: int = Field(3, ge=1, description="epochs before one can be kept or the run can stop early (the "
                                               "default shrinks to a shorter run's length)")
    patience: int = Field(3, ge=1, description="early-stopping patience (epochs of a phase without a better "
                                               "selection score)")


class AugmentConfig(_Section):
    """Training-time augmentation (never applied to validation or test images)."""

    enabled: bool = Field(False, description="augment training images")
    rotation: float = Field(15.0, ge=0, le=180, description="rotate by up to this many degrees")
    crop_scale: tuple[float, float] = Field((0.85, 1.0), description="random resized crop: the area share range")
    hflip: bool = Field(True, description="flip horizontally at random")
    translate: float = Field(0.0, ge=0, le=0.5, description="shift up to this fraction of the side")
    brightness: float = Field(0.0, ge=0, le=1, description="multiply the grey levels by 1 +- this")
    contrast: float = Field(0.0, ge=0, le=1, description="scale the spread around the mean by 1 +- this")
    gamma: float = Field(0.0, ge=0, le=1, description="apply a gamma of exp(+-this) to the grey levels")

    @field_validator("crop_scale")
    @classmethod
    def _share_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"give two area shares 0 < low <= high <= 1, got {list(value)}")
        return value


class RuntimeSection(_Section):
    """Where the run goes, on what, how fast."""

    out: str = Field("runs/train", description="run folder")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the split, the weights' initialisation and the batches")
    device: str = Field("auto", description="auto (a GPU when there is one), cpu, cuda, cuda:N or mps")
    devices: int = Field(1, ge=1, description="processes per machine (GPUs, or CPU processes) for data-parallel "
                                              "training; batch_size is per process")
    num_nodes: int = Field(1, ge=1, description="machines of a data-parallel run (launched by torchrun or SLURM)")
    strategy: Literal["auto", "ddp"] = Field("auto", description="ddp: distributed data-parallel (Lightning's); "
                                                                 "auto: ddp when devices or num_nodes > 1")
    precision: Literal["auto", "32", "bf16", "16"] = Field(
        "32", description="32 (the same numbers on every machine); bf16 or 16 (fp16, GPUs only) autocast; auto: "
                          "bf16 where it is faster (GPUs with bf16, ResNet/DenseNet on CPUs with native bf16), else "
                          "32 (cxrlab.core.device)")
    channels_last: bool = Field(True, description="channels-last memory layout (about 2x faster convolutions on CPUs)")
    cache_prefix: bool = Field(True, description="compute the frozen blocks' activations once, not every epoch")
    cache_max_gb: float = Field(4.0, gt=0, description="activations held in memory; more spill to disk")
    prepared: str | None = Field(None, description="folder of prepared shards shared between runs (default: "
                                                   "OUT/prepared)")
    prefix_store: str | None = Field(None, description="folder of frozen-prefix activations shared between runs, "
                                                        "keyed by the frozen weights, preprocessing and images")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    progress_bar: bool = Field(True, description="Lightning's per-epoch progress bar (a study shows its own)")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # YAML reads 32 as a number


class TrackingSection(_Section):
    """Where per-epoch metrics and the config are logged (MLflow)."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (default: sqlite:///OUT/../mlflow.db)")
    experiment: str = Field("cxrlab", description="MLflow experiment name")
    mlflow_tags: dict[str, str] = Field(default_factory=dict, description="extra MLflow run tags (a study's parent "
                                                                          "run)")


SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataSection, "preprocess": PreprocessConfig, "model": ModelSection, "optim": OptimSection,
    "schedule": ScheduleSection, "select": SelectSection, "augment": AugmentConfig, "runtime": RuntimeSection,
    "tracking": TrackingSection,
}
"""A run's sections, in the order a run writes them to ``config.yaml``: section -> its model."""

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


def flatten_settings(values: dict) -> dict:
    """Settings in any form as their flat aliases (``{lr: 1e-4, augment: {...}}``): how studies and
    searches name them.

    Raises:
        ValueError: see :func:`nest_settings`.
    """
    out: dict[str, Any] = {}
    for section, body in nest_settings(values).items():
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
    ``file PATH``, ``command line`` or ``command line (--set)`` (a config built from a dict in code:
    ``given`` for what the dict set)."""
    recorded = getattr(config, "_sources", None) or {}
    out = {}
    for section, model in SECTIONS.items():
        given = getattr(config, section).model_fields_set
        for name in model.model_fields:
            key = f"{section}.{name}"
            out[key] = recorded.get(key) or ("given" if name in given and not recorded else "default")
    return out


def write_sources(config: TrainConfig, out: str | Path) -> None:
    """Record where each setting of a run came from (:func:`setting_sources`) beside its config.yaml."""
    import json

    from cxrlab.core.io import atomic_write_text

    atomic_write_text(Path(out) / SOURCES, json.dumps(setting_sources(config), indent=1) + "\n")


def describe_sources(run: str | Path | None, path: str | Path | None = None,
                     assignments: Sequence[str] = ()) -> tuple[list[dict], str]:
    """Every setting of a run folder (its ``config.yaml``, and the sources its training recorded in
    :data:`SOURCES`), or of a config file with ``--set`` assignments (what ``train`` would use), as
    ``({"setting", "value", "source"} rows, recipe)``.

    Raises:
        ConfigError: no config.yaml in the run folder, or an invalid config (named).
    """
    import json

    if run is not None:
        recorded = Path(run) / CONFIG
        if not recorded.is_file():
            raise ConfigError(f"{run}: not a run folder (no config.yaml)")
        config = load_config(recorded)
        sources_file = Path(run) / SOURCES
        earlier = json.loads(sources_file.read_text()) if sources_file.is_file() else {}
        sources = {key: earlier.get(key) or _by_default(config, key) for key in setting_sources(config)}
    else:
        config = load_config(path, {}, assignments) if path is not None or assignments else None
        if config is None:
            raise ConfigError("give a run folder, or --config and/or --set")
        sources = setting_sources(config)
    values = config.to_sections()
    rows = [{"setting": key, "value": values[key.partition(".")[0]][key.partition(".")[2]], "source": source}
            for key, source in sources.items()]
    return rows, config.recipe


def _by_default(config: TrainConfig, key: str) -> str:
    """A run that recorded no sources (an earlier version's): its config.yaml, or the default where the
    value is the default's."""
    section, _, name = key.partition(".")
    field = SECTIONS[section].model_fields[name]
    value = getattr(getattr(config, section), name)
    default = field.get_default(call_default_factory=True)
    return "default" if value == default else "run's config.yaml"
