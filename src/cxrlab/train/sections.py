"""The sections of a training config, one model each: every setting with its one default, type, bounds
and description. :class:`cxrlab.train.config.TrainConfig` is made of them (and of
:class:`cxrlab.preprocess.PreprocessConfig`, the preprocess section); each part of training receives
its own."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from cxrlab.core.settings import SETTINGS_RULES
from cxrlab.data.classes import class_names
from cxrlab.data.findings import FindingPolicy
from cxrlab.data.splits import SplitConfig
from cxrlab.models.heads import HeadSpec, get_head_spec
from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.train.selection import SELECT_METRICS

FineTuneValue = int | Literal["all"]
SelectMetric = Literal[tuple(SELECT_METRICS)]  # type: ignore[valid-type]


class _Section(BaseModel):
    model_config = SETTINGS_RULES


class PhaseConfig(_Section):
    """One phase of a multi-phase schedule (e.g. head only at 1e-3, then k=2 at 1e-4)."""

    fine_tune: FineTuneValue
    lr: float = Field(gt=0, le=10)
    epochs: int = Field(ge=1)


class HeadConfig(_Section):
    """A custom head: hidden widths, dropout per layer, activation."""

    hidden: tuple[int, ...] = (128, 64)
    dropout: tuple[float, ...] = (0.10, 0.05)
    activation: Literal["elu", "relu", "gelu"] = "elu"

    @model_validator(mode="before")
    @classmethod
    def _dropout_per_given_layer(cls, values: Any) -> Any:
        """Widths given without dropout: the default's pattern, one value per layer (0.10, then 0.05)."""
        if isinstance(values, dict) and values.get("hidden") is not None and values.get("dropout") is None \
                and isinstance(values["hidden"], list | tuple):
            default = cls.model_fields["dropout"].default
            values = {**values, "dropout": [default[min(i, len(default) - 1)] for i in range(len(values["hidden"]))]}
        return values

    @model_validator(mode="after")
    def _one_dropout_per_layer(self) -> HeadConfig:
        HeadSpec(self.hidden, self.dropout, self.activation)  # the head's own rule: widths >= 1, dropout in [0, 1)
        return self


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
                                           "within 6 bits, thumbnails correlating >= 0.98) form one group, kept on "
                                           "one side; a split file given (splits) with copies on two sides is refused")
    folds: int = Field(0, ge=0, description="K >= 3: cross-validated training (cxrlab train --folds K): K runs, "
                                            "out-of-fold predictions for every image; ratios are then not used")
    class_balance: Literal["none", "weights", "sampler"] = Field(
        "weights", description="class-weighted loss, a balanced sampler, or none")

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        class_names(value)  # a ConfigError (a ValueError) names the schemes
        return value

    @field_validator("ratios")
    @classmethod
    def _shares(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        SplitConfig(ratios=value, folds=0)  # the split's own rule: train > 0, sum 1, multiples of 1/20
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

    @field_validator("head")
    @classmethod
    def _known_head(cls, value: str | HeadConfig) -> str | HeadConfig:
        if isinstance(value, str):
            get_head_spec(value)  # names the presets
        return value

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
    batch_size: int = Field(32, ge=1, le=65536, description="images per step (per process in a data-parallel run)")
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
    recompute: bool = Field(False, description="gradient checkpointing: keep only each trainable block's input "
                                               "and compute its inner activations again in the backward pass "
                                               "(EfficientNet-Lite0, batch 32, every block: 4.3 -> 3.0 GB, +30% "
                                               "step time, the same weights); for machines short of memory")
    channels_last: bool = Field(True, description="channels-last memory layout (about 2x faster convolutions on CPUs)")
    cache_prefix: bool = Field(True, description="compute the frozen blocks' activations once, not every epoch")
    cache_max_gb: float = Field(4.0, gt=0, description="activations held in memory; more spill to disk")
    store_max_gb: float = Field(200.0, gt=0, description="disk a shared prefix store (prefix_store) may fill; an "
                                                         "entry that would take it past this, or past the free "
                                                         "space, is refused before it is computed")
    prepared: str | None = Field(None, description="folder of prepared shards shared between runs (default: "
                                                   "OUT/prepared)")
    prefix_store: str | None = Field(None, description="folder of frozen-prefix activations shared between runs, "
                                                        "keyed by the frozen weights, preprocessing and images")
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes; auto: none on the CPU (the cores that would decode "
                            "also compute), and up to 8 per GPU (cores per process - 1) with pinned memory")
    progress_bar: bool = Field(True, description="Lightning's per-epoch progress bar (a study shows its own)")

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0 or 'auto'")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # YAML reads 32 as a number


TRACKING_SCHEMES = {"", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks",
                    "databricks-uc", "uc"}  # what MLflow stores runs at (mlflow.store.db, tracking registry)


class TrackingSection(_Section):
    """Where per-epoch metrics and the config are logged (MLflow)."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (default: sqlite:///OUT/../mlflow.db)")
    experiment: str = Field("cxrlab", description="MLflow experiment name")
    mlflow_tags: dict[str, str] = Field(default_factory=dict, description="extra MLflow run tags (a study's parent "
                                                                          "run)")

    @field_validator("mlflow_uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        """A URI MLflow can store runs at (a local path, ``file:``, ``sqlite:``, a server or a database);
        whether it can be reached is checked when a run starts (``cxrlab.train.runner.check_tracking``)."""
        if uri is None:
            return None
        scheme = uri.split("://", 1)[0].split(":", 1)[0].lower() if ":" in uri else ""
        if scheme.split("+", 1)[0] not in TRACKING_SCHEMES and len(scheme) > 1:  # C:\ is a Windows path
            raise ValueError(f"unsupported tracking URI scheme {scheme!r} in {uri!r}; use a folder, file:PATH, "
                             "sqlite:///PATH, http(s)://HOST or a database URL (postgresql://, mysql://)")
        return uri


SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataSection, "preprocess": PreprocessConfig, "model": ModelSection, "optim": OptimSection,
    "schedule": ScheduleSection, "select": SelectSection, "augment": AugmentConfig, "runtime": RuntimeSection,
    "tracking": TrackingSection,
}
"""A run's sections, in the order a run writes them to ``config.yaml``: section -> its model."""
