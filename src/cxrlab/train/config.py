"""``TrainConfig``: every training setting, validated by pydantic (a typo names the field)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from cxrlab.core.settings import closest_hint, load_settings, validate
from cxrlab.data.classes import class_names
from cxrlab.data.findings import FindingPolicy, is_multilabel

FineTuneValue = int | Literal["all"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PhaseConfig(_Strict):
    """One phase of a multi-phase schedule (e.g. head only at 1e-3, then k=2 at 1e-4)."""

    fine_tune: FineTuneValue
    lr: float = Field(gt=0)
    epochs: int = Field(ge=1)


class AugmentConfig(_Strict):
    """Training-time augmentation (never applied to validation or test images)."""

    enabled: bool = False
    rotation: float = Field(15.0, ge=0, le=180)
    crop_scale: tuple[float, float] = (0.85, 1.0)
    hflip: bool = True
    translate: float = Field(0.0, ge=0, le=0.5, description="shift up to this fraction of the side")
    brightness: float = Field(0.0, ge=0, le=1, description="multiply the grey levels by 1 +- this")
    contrast: float = Field(0.0, ge=0, le=1, description="scale the spread around the mean by 1 +- this")
    gamma: float = Field(0.0, ge=0, le=1, description="apply a gamma of exp(+-this) to the grey levels")


class HeadConfig(_Strict):
    """A custom head: hidden widths, dropout per layer, activation."""

    hidden: tuple[int, ...] = (128, 64)
    dropout: tuple[float, ...] = (0.10, 0.05)
    activation: Literal["elu", "relu", "gelu"] = "elu"


SECTIONS: dict[str, dict[str, str]] = {
    "data": {"path": "data", **{k: k for k in ("splits", "scheme", "uncertain", "blank", "ratios", "dedupe", "folds",
                                               "class_balance")}},
    "preprocess": {k: k for k in ("size", "contrast", "resize", "artifacts", "lung_crop", "prepared")},
    "model": {k: k for k in ("backbone", "pretrained", "weights", "init_from", "allow_download", "fine_tune",
                             "batchnorm", "head", "lung_attention", "tta")},
    "optim": {k: k for k in ("optimizer", "lr", "lr_decay", "momentum", "weight_decay", "label_smoothing", "ema_decay",
                             "mixup", "batch_size", "attention_loss", "attention_form")},
    "schedule": {"kind": "schedule", **{k: k for k in ("epochs", "phases", "warmup_epochs", "plateau_factor",
                                                       "plateau_patience", "step_size", "step_gamma", "select_on",
                                                       "select_smoothing", "min_epochs", "patience")}},
    "runtime": {k: k for k in ("out", "seed", "device", "devices", "num_nodes", "strategy", "precision", "channels_last", "cache_prefix", "cache_max_gb",
                               "prefix_store", "num_workers", "progress_bar")},
    "tracking": {k: k for k in ("mlflow_uri", "experiment", "mlflow_tags")},
}
"""A run's settings in sections, each the layer that reads them: section -> {name in the section: field}.

A config may be written flat (``lr: 1e-4``) or in sections (``optim: {lr: 1e-4}``, as a run writes its
``config.yaml``); ``--set optim.lr=1e-4`` and ``--set lr=1e-4`` are the same. ``recipe`` and ``augment``
stay at the top. Two names differ from the field: ``data.path`` (the ``data`` field) and
``schedule.kind`` (the ``schedule`` field).
"""
TOP_LEVEL = ("recipe", "augment")


def flat_key(key: str) -> str:
    """A (dotted) setting name without its section: ``optim.lr`` -> ``lr``, ``schedule.kind`` ->
    ``schedule``, ``model.head.hidden`` -> ``head.hidden``; a flat name as it is.

    Raises:
        ValueError: the section has no such setting (with the closest name).
    """
    section, _, rest = key.partition(".")
    if section not in SECTIONS or not rest:
        return key
    name, _, part = rest.partition(".")
    if name not in SECTIONS[section]:
        raise ValueError(f"{section}.{name}: the {section} section has no such setting"
                         + closest_hint(name, SECTIONS[section], section + "."))
    field = SECTIONS[section][name]
    return f"{field}.{part}" if part else field


def flatten_settings(values: dict) -> dict:
    """Settings given in sections (``optim: {lr: 1e-4}``) or dotted (``optim.lr``) as the flat fields of
    :class:`TrainConfig`; flat ones pass through (``data: PATH`` is the field, ``data: {...}`` the section).

    Raises:
        ValueError: a name its section does not have, or one setting given twice.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        inner = value.items() if key in SECTIONS and isinstance(value, dict) else [(None, value)]
        for name, item in inner:
            given = key if name is None else f"{key}.{name}"
            field = flat_key(given)
            if field in out:
                raise ValueError(f"{given}: {field!r} is set twice (once flat, once in its section?)")
            out[field] = item
    return out


# Named recipes: settings a config starts from (its own values win). "small-data" is the field defaults
# below, chosen on cxr-real cross-validation (docs/benchmarks/recipe.md): every block fine-tuned with
# AdamW 1e-4, one warm-up epoch, cosine decay over a fixed 10 epochs and the last one kept (choosing an
# epoch on a small validation side kept worse models; a fixed schedule also lets train --folds train
# each fold on every other one); "papers" is what
# the papers ran and cxrlab's default until then: the last 2 blocks, Adam at 1e-3, ReduceLROnPlateau, no
# augmentation, the epoch with the lowest validation loss.
RECIPES: dict[str, dict[str, Any]] = {
    "small-data": {},
    "papers": {"fine_tune": 2, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "plateau",
               "warmup_epochs": 0, "epochs": 10, "patience": 5, "select_on": "loss", "select_smoothing": 1,
               "min_epochs": 1, "augment": {"enabled": False}},
}


class TrainConfig(_Strict):
    """A training run. Every field can be set in YAML and most from the command line.

    Data: ``data`` (folder tree, manifest or metadata CSV) and/or ``splits`` (a
    ``splits.csv``); without ``splits`` a patient-grouped split is made with ``ratios``.
    """

    recipe: Literal["small-data", "papers"] = Field("small-data", description="named bundle of settings the "
                                                                            "config starts from (its own values win)")
    data: str | None = None
    splits: str | None = None
    out: str = "runs/train"
    scheme: str = Field("3class", description="3class or binary (one class per image), or multi-label findings: "
                                               "chestxray14, chexpert5 or findings:A,B,C (a sigmoid per finding)")
    uncertain: tuple[str, ...] = Field(("ignore",), description="multi-label: what an uncertain (-1) label of a "
                                                                "collection becomes: ignore (left out of loss and "
                                                                "metrics), ones or zeros; NAME=POLICY for one finding")
    blank: Literal["ignore", "ones", "zeros"] = Field("zeros", description="multi-label: what a blank label cell "
                                                                           "of a collection becomes")
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    dedupe: bool = Field(True, description="when making a split: patients whose images are near-duplicates (pHash "
                                           "distance <= 4) form one group, kept on one side")
    folds: int = Field(0, ge=0, description="K >= 3: cross-validated training (cxrlab train --folds K): K runs, "
                                            "out-of-fold predictions for every image; ratios are then not used")
    tta: Literal["none", "crops"] = Field("none", description="with folds: the fold ensemble averages each member "
                                                               "over test-time views (crops: the image and five 90% "
                                                               "crops); measured no gain on cxr-real")

    backbone: str = "efficientnet_lite0"
    pretrained: Literal["imagenet", "none"] = "imagenet"
    weights: str | None = None
    init_from: str | None = Field(None, description="start from the backbone of a trained cxrlab model (a run "
                                                    "folder or model file; its head is not used): transfer from "
                                                    "your own task, e.g. ChestX-ray14's findings, to another")
    allow_download: bool = False
    fine_tune: FineTuneValue = "all"
    batchnorm: Literal["train", "frozen"] = Field(
        "train", description="frozen: every BatchNorm layer keeps its pretrained statistics, also in the trainable "
                             "blocks (its scale and shift still learn), as Keras' transfer-learning guide advises")
    head: str | HeadConfig = "gap-128-64"

    size: int | None = Field(None, ge=32, le=1024, description="input side; default: the backbone's native size")
    contrast: Literal["none", "clahe", "equalize"] = "clahe"
    resize: Literal["stretch", "letterbox"] = "stretch"
    artifacts: Literal["keep", "inpaint"] = Field("keep", description="paint out burned-in text, markers and "
                                                                      "thin frames before preprocessing")
    lung_crop: bool = Field(False, description="crop each image to its lung mask's box (images without a mask "
                                               "stay whole; cxrlab segment predict fills in masks)")
    lung_attention: bool = Field(False, description="guided attention: multiply the last feature maps by the lung "
                                                    "mask (every image needs one, also when predicting)")
    attention_loss: float = Field(0.0, ge=0, description="alpha: add alpha x the attention term (attention_form) to "
                                                         "the training loss (masks needed for training only)")
    attention_form: Literal["outside_share", "gain"] = Field(
        "outside_share", description="outside_share: the share of the true class's Grad-CAM outside the lungs "
                                     "(cxrlab's variant); gain: GAIN's attention mining on the soft-masked image plus "
                                     "the map-vs-lung-mask error (Li et al.; a second forward pass, no prefix cache)")

    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    lr_decay: float = Field(1.0, gt=0, le=1, description="discriminative learning rates: each trainable block "
                                                         "below the head trains at this fraction of the one above")
    warmup_epochs: int = Field(1, ge=0, description="epochs of linear learning-rate warm-up (per step) at the "
                                                    "start of each phase")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing (training loss only)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="exponential moving average of the weights, decay per "
                                                          "step (0: off); the averaged weights are validated and kept")
    mixup: float = Field(0.0, ge=0, le=10, description="alpha of mixup (0: off): each training batch is mixed with "
                                                      "itself shuffled, weight lambda ~ Beta(alpha, alpha), and so are "
                                                      "the targets; what is mixed is the input of the first trainable "
                                                      "block (the image when every block trains)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.05, ge=0)
    schedule: Literal["plateau", "step", "cosine", "none"] = "cosine"
    plateau_factor: float = Field(0.2, gt=0, lt=1)
    plateau_patience: int = Field(2, ge=0)
    step_size: int = Field(5, ge=1)
    step_gamma: float = Field(0.1, gt=0, le=1)
    epochs: int = Field(10, ge=1)
    select_on: Literal["loss", "auc_macro", "auc_covid", "f1_macro", "last"] = Field(
        "last", description="validation metric that picks the epoch kept and drives early stopping (auc_covid: "
                            "COVID-19 vs the rest); last: keep the final epoch, no early stopping, and no "
                            "validation side needed (a refit on train+validation for a fixed number of epochs)")
    select_smoothing: int = Field(2, ge=1, description="epochs in the trailing mean of that metric compared")
    min_epochs: int = Field(3, ge=1, description="epochs before one can be kept or the run can stop early (the "
                                               "default shrinks to a shorter run's length)")
    patience: int = Field(3, ge=1, description="early-stopping patience (epochs of a phase without a better "
                                               "selection score)")
    phases: tuple[PhaseConfig, ...] = ()
    batch_size: int = Field(32, ge=1)
    class_balance: Literal["none", "weights", "sampler"] = "weights"
    augment: AugmentConfig = AugmentConfig()

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
    channels_last: bool = True
    cache_prefix: bool = True
    cache_max_gb: float = Field(4.0, gt=0)
    prepared: str | None = Field(None, description="folder of prepared shards shared between runs (default: OUT/prepared)")
    prefix_store: str | None = Field(None, description="folder of frozen-prefix activations shared between runs, "
                                                        "keyed by the frozen weights, preprocessing and images")
    num_workers: int = Field(0, ge=0)
    progress_bar: bool = Field(True, description="Lightning's per-epoch progress bar (a study shows its own)")
    seed: int = 0
    mlflow_uri: str | None = None
    experiment: str = "cxrlab"
    mlflow_tags: dict[str, str] = Field(default_factory=dict, description="extra MLflow run tags (a study's parent run)")

    @model_validator(mode="before")
    @classmethod
    def _sections_and_recipe(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = flatten_settings(values)
        return {**RECIPES[values["recipe"]], **values} if values.get("recipe") in RECIPES else values

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

    @field_validator("fine_tune")
    @classmethod
    def _k_non_negative(cls, value: FineTuneValue) -> FineTuneValue:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0 or 'all'")
        return value

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value in (1, 2):  # a fold predicts, the next chooses the epoch: two leave nothing to train on
            raise ValueError("0 (one split) or at least 3 (one fold predicts, the next chooses the epoch, the "
                             "rest train)")
        return value

    @model_validator(mode="after")
    def _need_data(self) -> TrainConfig:
        if not self.data and not self.splits:
            raise ValueError("give data (a folder, manifest or metadata CSV) or splits (a splits.csv)")
        if (self.devices > 1 or self.num_nodes > 1) and self.strategy == "auto":
            object.__setattr__(self, "strategy", "ddp")
        if is_multilabel(self.scheme) and (self.attention_loss or self.class_balance == "sampler"):
            raise ValueError(f"scheme: {self.scheme} is multi-label: the attention loss (a true class's Grad-CAM) and "
                             "class_balance: sampler (one class per image) need a single-label scheme")
        if self.mixup and self.attention_loss:
            raise ValueError("mixup: not with attention_loss (a mixed image has no one lung mask or true class)")
        if self.tta != "none" and self.folds < 3:
            raise ValueError("tta: test-time views are for the fold ensemble; set folds (at least 3) too")
        epochs = sum(p.epochs for p in self.resolved_phases())
        if self.min_epochs > epochs and "min_epochs" not in self.model_fields_set:
            object.__setattr__(self, "min_epochs", epochs)  # a short run: the default minimum shrinks with it
        if self.min_epochs > epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) is more than the run's {epochs} epoch(s): no epoch "
                             "could be kept")
        return self

    @property
    def multilabel(self) -> bool:
        """Whether the scheme is a multi-label finding scheme."""
        return is_multilabel(self.scheme)

    @property
    def finding_policy(self) -> FindingPolicy:
        """What uncertain and blank labels of a collection become (multi-label schemes)."""
        return FindingPolicy.parse(self.uncertain, self.blank)

    def resolved_phases(self) -> tuple[PhaseConfig, ...]:
        """The phases to run: ``phases`` if given, else one phase of ``fine_tune``/``lr``/``epochs``."""
        return self.phases or (PhaseConfig(fine_tune=self.fine_tune, lr=self.lr, epochs=self.epochs),)

    def to_sections(self) -> dict:
        """Every field, JSON-ready, in its section (the form a run writes to ``config.yaml``)."""
        flat = self.model_dump(mode="json")
        out = {"recipe": flat.pop("recipe")}
        out.update({section: {name: flat.pop(field) for name, field in names.items()} for section, names in SECTIONS.items()})
        out["augment"] = flat.pop("augment")
        if flat:  # a field added without a section
            raise RuntimeError(f"TrainConfig fields without a section: {', '.join(flat)}")
        return out

    def to_yaml(self) -> str:
        """YAML text of every field in its section (the run's resolved config)."""
        return yaml.safe_dump(self.to_sections(), sort_keys=False)


def build_config(values: dict, origin: str = "config") -> TrainConfig:
    """Validate a dict into a :class:`TrainConfig`.

    Raises:
        ConfigError: naming the first bad field, e.g. ``field 'optimzer': unknown field; did you mean 'optimizer'?``.
    """
    return validate(TrainConfig, values, origin)


def load_config(path: str | Path | None, overrides: dict | None = None, assignments: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (flat or in :data:`SECTIONS`; :mod:`cxrlab.core.settings`: relative paths
    from its folder), apply command-line options (``None``: not given) and ``--set`` assignments
    (``optim.lr=1e-4`` or ``lr=1e-4``).

    Raises:
        ConfigError: unreadable YAML, a bad assignment or an invalid field (named).
    """
    return load_settings(TrainConfig, path, {k: v for k, v in (overrides or {}).items() if v is not None}, assignments,
                         normalize=flatten_settings, key=flat_key)