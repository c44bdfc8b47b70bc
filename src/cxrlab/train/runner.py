"""``train``: one run from a :class:`TrainConfig` to a run directory.

Run directory: ``config.yaml`` (resolved), ``splits.csv`` (when made here), ``prepared/``
(shards), ``model.pt`` (best model, self-contained), ``metrics.csv``, ``summary.json``,
``curves.png``. Per-epoch metrics and the config also go to MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cxrlab.core.errors import ConfigError, CxrlabError
from cxrlab.core.io import atomic_write_text
from cxrlab.core.optional import available
from cxrlab.core.run_folder import (
    CHECKPOINTS, CONFIG, CURVES, LAST_CHECKPOINT, METRICS, MODEL, RunFolder, SPLITS, SUMMARY, TRACKING_DB,
)
from cxrlab.core.runtime import release_free_memory, tune_allocator
from cxrlab.data.classes import POSITIVE_CLASS
from cxrlab.data.manifest import read_table
from cxrlab.data.mask_provenance import mask_coverage
from cxrlab.data.seen import seen_record
from cxrlab.models import create_backbone, create_classifier, get_backbone_spec
from cxrlab.models.checkpoint import init_backbone_from, load_model, save_model
from cxrlab.models.classifier import CxrClassifier, check_fine_tune
from cxrlab.models.heads import HeadSpec
from cxrlab.core.device import Policy, current_policy, resolve_policy, stage_record, use_policy
from cxrlab.models.inference import InferenceModel
from cxrlab.models.weights import check_weights_available
from cxrlab.train.callbacks import BestModelKeeper, EmaWeights, MetricsCsv, ResumeState, read_resume_point
from cxrlab.train.config import TrainConfig, load_config
from cxrlab.train.config_sources import write_sources
from cxrlab.train.distributed import RunData, is_distributed, is_rank_zero
from cxrlab.train.data import (
    TrainData,
    class_weights,
    datasets,
    guidance_record,
    load_train_data,
    loader,
    with_recorded_scheme,
)
from cxrlab.evaluate.metrics import classification_summary
from cxrlab.train.module import ClassifierModule, NonFiniteLossError
from cxrlab.evaluate.plots import plot_curves
from cxrlab.train.prefix_cache import can_cache, compute_prefix, stored_prefix
from cxrlab.evaluate.screening_reference import screening_reference
from cxrlab.train.selection import EpochSelector

log = logging.getLogger(__name__)


class TrainingInterrupted(CxrlabError, RuntimeError):
    """A run was stopped (SIGTERM) between epochs; its checkpoint lets the same command resume it."""


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    out: Path
    summary: dict
    model: CxrClassifier


def check_tracking(config: TrainConfig) -> None:
    """Refuse, before any data work, a tracking server that does not answer (MLflow itself retries for
    minutes, then fails after the data was prepared). Databases and files are checked when the
    logger opens them (:func:`_mlflow_logger`).

    Raises:
        ConfigError: an ``http(s)://`` tracking URI that gives no answer within 10 s (named).
    """
    uri = config.tracking.mlflow_uri
    if not uri or not uri.lower().startswith(("http://", "https://")) or not available("mlflow"):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10)  # any answer, even 404, means a server is there
    except requests.RequestException as err:
        raise ConfigError(f"mlflow_uri {uri}: the tracking server does not answer ({type(err).__name__}); start it, "
                          "or leave mlflow_uri unset to track in sqlite beside the run") from err


def _mlflow_logger(config: TrainConfig, out: Path) -> MLFlowLogger | bool:
    """The run's MLflow logger; ``False`` (no logger) when MLflow is not installed (``cxrlab[track]``).

    Raises:
        ConfigError: the tracking store cannot be opened (named, with MLflow's reason in one line).
    """
    if not available("mlflow"):
        log.info("MLflow is not installed (pip install 'cxrlab[track]'): %s is not tracked", out)
        return False
    tracking = config.tracking
    uri = tracking.mlflow_uri or f"sqlite:///{(out.parent / TRACKING_DB).resolve()}"
    try:
        logger = MLFlowLogger(experiment_name=tracking.experiment, tracking_uri=uri, run_name=out.name,
                              tags=dict(tracking.mlflow_tags) or None)
        logger.log_hyperparams({k: str(v) for k, v in config.flat().items()})
    except Exception as err:  # MLflow raises its own and its stores' exception types
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ConfigError(f"mlflow_uri {uri}: cannot track the run there ({reason})") from err
    return logger


def _head(config: TrainConfig) -> str | HeadSpec:
    head = config.model.head
    return head if isinstance(head, str) else HeadSpec(**head.model_dump())


def _deterministic(policy: Policy, optim) -> bool | str:
    """Whether the fit can run with deterministic kernels: True, or why not (then Lightning warns
    instead of raising): CUDA has no deterministic backward for the bilinear upsampling of GAIN's mask."""
    if policy.device_type == "cuda" and optim.attention_loss > 0 and optim.attention_form == "gain":
        return "warn: GAIN's bilinear upsampling has no deterministic CUDA backward"
    return True


@torch.no_grad()
def _predict(model: CxrClassifier, dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(targets (N,), probabilities (N, C))`` of a dataset, by :class:`InferenceModel` (the one batch
    predictor: evaluate, the study's test side and screening use it too) on the current policy's
    device and precision (fp32 on the CPU unless a command or a run set another)."""
    runner = InferenceModel(model)
    probs, targets = [], []
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                            pin_memory=runner.device.type == "cuda"):
        probs.append(runner.probabilities(x))
        targets.append(y)
    return torch.cat(targets).numpy(), torch.cat(probs).numpy()


def train(config: TrainConfig, progress=None, callbacks: Sequence[L.Callback] = (), screening: bool = True) -> TrainResult:
    """Train, keep the epoch the selection rule chooses (``select_on``), and write the run directory.

    ``callbacks`` join Lightning's for every phase (e.g. a tuner's pruning callback; an exception
    one raises ends the run without a ``summary.json``). ``screening=False`` leaves the screening
    reference out of ``model.pt`` (a study's runs: only the exported one needs it, and
    :func:`add_screening_reference` adds it then).

    Raises:
        ConfigError / WeightsUnavailableError / LeakageError: before any training starts.
        NonFiniteLossError: the loss became NaN/inf; ``model.pt`` holds the last good model and
            ``summary.json`` says what happened.
    """
    if config.data.folds >= 2:
        raise ConfigError(f"folds: {config.data.folds} folds train through cxrlab.study.train_crossval (cxrlab train "
                          "--folds); train() runs one split")
    config = with_recorded_scheme(config)
    net, runtime = config.model, config.runtime
    spec = get_backbone_spec(net.backbone)
    with torch.device("meta"):  # block count without allocating weights: check k before any data work
        blocks = len(spec.partition(create_backbone(spec)))
    for phase in config.resolved_phases():
        check_fine_tune(phase.fine_tune, blocks, spec.name)
    if (net.pretrained == "imagenet" or net.weights) and not net.init_from:
        check_weights_available(spec, net.weights, net.allow_download)
    tune_allocator()
    check_tracking(config)
    writer = is_rank_zero(config)  # a data-parallel run's other processes write nothing
    if writer:
        _drop_stale_checkpoint(Path(runtime.out), config)
    folder = RunFolder(runtime.out, config.to_sections(), write=writer)
    out = folder.out
    if writer:
        write_sources(config, out)
    with torch.random.fork_rng():
        torch.manual_seed(runtime.seed)
        data = load_train_data(config, spec, out, progress)
        start = {"pretrained": "none", "weights": None} if net.init_from else {"pretrained": net.pretrained,
                                                                              "weights": net.weights}
        model = create_classifier(net.backbone, len(data.class_names), head=_head(config), **start,
                                  allow_download=net.allow_download, class_names=data.class_names, seed=runtime.seed,
                                  lung_attention=net.lung_attention, multilabel=config.multilabel)
        if net.init_from:
            model.weights_origin = init_backbone_from(model, net.init_from)
        model.set_freeze_batchnorm(net.batchnorm == "frozen")
        model.recompute = runtime.recompute
        summary = _fit(model, data, config, out, callbacks, screening)
    if not writer:
        return TrainResult(out, summary, model)
    folder.finish(summary)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # finished: nothing to resume
    plot_curves(out / METRICS, out / CURVES)
    if summary["status"] != "ok":
        raise NonFiniteLossError(summary["status"])
    return TrainResult(out, summary, model)


def _distributed_settings(config: TrainConfig) -> dict:
    """Lightning's data-parallel settings; the loaders come from :class:`RunData`, rank by rank."""
    return {"strategy": "ddp", "devices": config.runtime.devices, "num_nodes": config.runtime.num_nodes,
            "use_distributed_sampler": False}


def _drop_stale_checkpoint(out: Path, config: TrainConfig) -> None:
    """A checkpoint left by a run of other settings is not resumed from: removed, with a warning."""
    if (out / CHECKPOINTS).exists() and (out / CONFIG).exists():
        if yaml.safe_load((out / CONFIG).read_text()) != config.to_sections():
            log.warning("%s: its checkpoint is of a run with other settings; training starts again", out)
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def _fit(model: CxrClassifier, data: TrainData, config: TrainConfig, out: Path,
         callbacks: Sequence[L.Callback] = (), screening: bool = True) -> dict:
    spec, runtime, optim = model.spec, config.runtime, config.optim
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    train_ds, val_ds = datasets(data, config, spec)
    weights = class_weights(data, config.multilabel) if config.data.class_balance == "weights" else None
    if config.select.metric == "auc_covid" and POSITIVE_CLASS not in data.class_names:
        raise ConfigError(f"select.metric: auc_covid needs a {POSITIVE_CLASS} class; the classes are "
                          f"{', '.join(data.class_names)}")
    validated = bool(data.val_images)  # False only for a refit on everything (select.metric: last)
    selector = EpochSelector.from_config(config.select)
    seen = {"seen": seen_record(data.frame[data.frame["split"].isin(["train", "val"])]),  # evaluate refuses these
            "guidance": guidance_record(config)}  # what makes its in-lung share circular
    # the model file keeps masks only when the model itself needs them (the attention loss needs them in training)
    kept = data.preprocess.updated(keep_mask=config.model.lung_attention)
    keeper = BestModelKeeper(out / MODEL, kept, selector, seen)
    csv = MetricsCsv(out / METRICS)
    logger = _mlflow_logger(config, out)
    status, epochs_run, cached_any, fit_seconds = "ok", 0, False, 0.0
    policy = resolve_policy(runtime.device, runtime.precision, workload="train", backbone=spec.name)
    log.info("training on %s with %s (%s)", policy.device, policy.precision, policy.reason)
    distributed = is_distributed(config)
    processes = runtime.devices * runtime.num_nodes if distributed else 1
    stages: dict = {"fit": {**stage_record(policy, processes=processes), "deterministic": _deterministic(policy, optim)}}
    last = out / CHECKPOINTS / LAST_CHECKPOINT
    resume = read_resume_point(last)
    if resume is not None:  # a run stopped before its end: go on from its last finished epoch
        log.warning("resuming %s from its checkpoint: phase %d, epoch %d done", out, resume["phase"] + 1,
                    resume["epochs_before"] + resume["epoch"] + 1)  # epochs counted from 1
        model.load_state_dict(resume["state_dict"])  # before a frozen prefix is computed from it
        epochs_run = resume["epochs_before"]
    for index, phase in enumerate(config.resolved_phases()):
        if resume is not None and index < resume["phase"]:
            continue  # finished before the interruption: its weights are the checkpoint's
        model.set_fine_tune(phase.fine_tune)
        keeper.phase = csv.phase = index
        keeper.epoch_offset = csv.epoch_offset = epochs_run
        start_block, fit_sets = 0, [train_ds, val_ds] if validated else [train_ds]
        precision = policy.precision
        # the prefix runs under the step's own autocast on CPU; a GPU's fp16 step is not cached (it would differ)
        gain = optim.attention_loss > 0 and optim.attention_form == "gain"  # mines on the images themselves
        spill = out / "cache" / (f"rank{os.environ.get('LOCAL_RANK', '0')}" if distributed else "")
        if runtime.cache_prefix and precision != "16-mixed" and not gain and can_cache(model, config.augment.enabled):
            start_block, record = model.frozen_blocks, {}
            with torch.random.fork_rng():  # whether the prefix is computed or read must not move the seed
                if runtime.prefix_store:
                    fit_sets = stored_prefix(model, fit_sets, data.preprocess, runtime.prefix_store, policy=policy,
                                             record=record, max_bytes=runtime.store_max_gb * 1e9)
                else:
                    fit_sets = [compute_prefix(model, ds, max_bytes=runtime.cache_max_gb * 1e9, spill_dir=spill,
                                               policy=policy, record=record) for ds in fit_sets]
            cached_any, stages["prefix"] = True, record
        release_free_memory()  # what preparing the data (or the prefix) freed is not the training steps' to hold
        module = ClassifierModule(model, optim, config.schedule, phase.lr, phase.epochs, weights, start_block, validated,
                                  channels_last=runtime.channels_last)
        train_loader = None if distributed else loader(fit_sets[0], config, True, runtime.seed + index, policy)
        checkpoint = ModelCheckpoint(dirpath=out / CHECKPOINTS, filename="last", save_top_k=1, every_n_epochs=1,
                                     save_on_train_epoch_end=True, enable_version_counter=False)  # every epoch's end
        resumed_here = resume is not None and index == resume["phase"]
        trainer = L.Trainer(
            max_epochs=phase.epochs, accelerator=policy.accelerator, precision=precision,
            **(_distributed_settings(config) if distributed else
               {"devices": [int(policy.device.split(":")[1])] if ":" in policy.device else 1}),
            logger=logger, callbacks=[*([EmaWeights(optim.ema_decay)] if optim.ema_decay else []), keeper, csv,
                                      ResumeState(train_loader.generator if train_loader else None, index, epochs_run),
                                      checkpoint, *callbacks],
            enable_checkpointing=True, enable_model_summary=False, enable_progress_bar=runtime.progress_bar,
            num_sanity_val_steps=0, limit_val_batches=None if validated else 0,
            deterministic=stages["fit"]["deterministic"] is True or "warn",
            inference_mode=not optim.attention_loss,
            log_every_n_steps=1, default_root_dir=str(out))
        fit_start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*does not have many workers.*")
                warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # frozen BatchNorm, on purpose
                warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")  # a refit has no validation side
                resume_from = str(last) if resumed_here else None
                if distributed:  # each rank's loaders are made once the process group is up
                    trainer.fit(module, datamodule=RunData(fit_sets[0], fit_sets[1] if validated else [], config,
                                                           runtime.seed + index), ckpt_path=resume_from)
                else:
                    trainer.fit(module, train_loader,
                                loader(fit_sets[1], config, False, runtime.seed, policy) if validated else None,
                                ckpt_path=resume_from)
        except NonFiniteLossError as err:
            status = str(err)
        except SIGTERMException:
            raise TrainingInterrupted(f"{out}: stopped by SIGTERM after epoch {epochs_run + trainer.current_epoch}; "
                                      "run the same command again to resume from there") from None
        fit_seconds += time.perf_counter() - fit_start
        if keeper.diverged is not None and status == "ok":  # a finite loss, then weights that are not
            status = (f"training diverged at epoch {keeper.diverged}: the weights hold NaN or infinite values; "
                      "stopped (lower the learning rate?); the last good model is kept")
        epochs_run += trainer.current_epoch if status == "ok" else trainer.current_epoch + 1
        if keeper.best_state is not None:
            model.load_state_dict(keeper.best_state)  # restore the best before the next phase
        if status != "ok":
            break
    model.set_fine_tune(keeper.best_fine_tune if keeper.best_state is not None else model.fine_tune)
    if not is_rank_zero(config):  # rank 0 validates, keeps the model and writes the summary
        return {"status": status}
    val = {}
    release_free_memory()  # what the training steps' allocator kept is not the validation's to hold
    if keeper.best_state is not None and validated:
        with use_policy(policy):  # Lightning's teardown left the model on the CPU: back on the run's device
            targets, probs = _predict(model, val_ds, optim.batch_size)
            stages["validation"] = stage_record(policy, next(model.parameters()).device)
            val = classification_summary(targets, probs, model.class_names)
            if status == "ok" and screening:  # the model file gains what screening needs
                plain_train = datasets(data, config, spec, augment=False)[0]
                reference = screening_reference(model, plain_train, val_ds, targets, probs, optim.batch_size)
                stages["screening_reference"] = reference_record(policy, model)
                model.cpu()  # the returned model on the host, as a loaded one is
                save_model(model, keeper.path, keeper.preprocess,
                           {**seen, "val_loss": keeper.best_loss, "epoch": keeper.best_epoch,
                            "selection": selector.to_dict(), "screening": reference})
    if logger:
        logger.log_metrics({"best_val_acc": val.get("accuracy") or float("nan"),
                            "best_val_auc": val.get("auc_macro") or float("nan")})
        logger.finalize("FINISHED" if status == "ok" else "FAILED")
    return {
        "status": status, "backbone": spec.name, "fine_tune": model.fine_tune,  # the kept epoch's (its phase's)
        "phases": [p.model_dump(mode="json") for p in config.resolved_phases()],
        "class_names": list(data.class_names), "weights": getattr(model, "weights_origin", "random"),
        "images": {"train": len(data.train_images), "val": len(data.val_images), "skipped": len(data.skipped)},
        "params": model.count_parameters(), "trainable_params": model.count_parameters(trainable_only=True),
        "best_epoch": keeper.best_epoch, "epochs_run": epochs_run,
        "best_val_loss": keeper.best_loss if np.isfinite(keeper.best_loss) else None,
        "selection": selector.to_dict(),
        "masks": mask_coverage(data.frame),  # lung masks per side, class and origin
        "prefix_cache": cached_any, "device": policy.to_dict(), "stages": stages, "val": val, "validation_side": _validation_side(val, len(data.val_images)),
        "timing": {"seconds_fit": round(fit_seconds, 2),
                   "seconds_per_epoch": round(fit_seconds / max(epochs_run, 1), 3)},
    }


SMALL_VALIDATION_WIDTH = 0.2  # widest one-vs-rest AUC interval above which the summary warns


def _validation_side(val: dict, images: int) -> dict:
    """How precisely the validation side measures AUC (what chose the kept epoch): its size and the
    widest approximate 95% interval of a one-vs-rest AUC on it, with a note when that is wide."""
    widths = [c["auc_interval"][1] - c["auc_interval"][0] for c in val.get("per_class", {}).values()
              if c.get("auc_interval")]
    if not widths:
        return {"images": images}
    out = {"images": images, "widest_auc_interval": round(max(widths), 3)}
    if max(widths) > SMALL_VALIDATION_WIDTH:
        out["note"] = (f"small validation side ({images} images): its one-vs-rest AUCs are known only to within "
                       f"±{max(widths) / 2:.2f} (95%), so the kept epoch is a noisy choice")
    return out


def config_policy(config: TrainConfig) -> Policy:
    """The device and precision a run of ``config`` trains with (its runtime section's)."""
    return resolve_policy(config.runtime.device, config.runtime.precision, workload="train",
                          backbone=config.model.backbone)


def reference_record(policy: Policy, model: torch.nn.Module | None = None) -> dict:
    """The stage record of a pass of pooled features (a screening reference, a probe's features): fp32
    by design (distances and probes are fitted on fp32 features), on ``policy``'s device, or on the one
    ``model`` ran on when given."""
    return stage_record(Policy(policy.device, policy.accelerator),
                        next(model.parameters()).device if model is not None else None)


def run_policy(run: str | Path) -> Policy:
    """The device and precision a finished run trained with (its ``config.yaml``): what its later
    stages (the held-out folds, a study's test side, a search's best trial) run on too; without a
    config (a model file, an exported folder), the command's own policy."""
    if not (Path(run) / CONFIG).is_file():  # a model file or an exported folder: the command's policy
        return current_policy()
    sections = yaml.safe_load((Path(run) / CONFIG).read_text()) or {}
    runtime, backbone = sections.get("runtime") or {}, (sections.get("model") or {}).get("backbone", "")
    try:
        return resolve_policy(str(runtime.get("device", "auto")), str(runtime.get("precision", "32")),  # type: ignore[arg-type]
                              workload="train", backbone=backbone)
    except ConfigError as err:  # trained on a GPU this machine lacks (a shared study read on a laptop)
        log.warning("%s: %s; its predictions run with this command's policy instead", run, err)
        return current_policy()


def record_stage(run: str | Path, name: str, record: dict) -> None:
    """Add a stage that ran after training (``test_side``) to the run's ``summary.json`` ``stages``."""
    path = Path(run) / SUMMARY
    if not path.exists():
        return
    summary = json.loads(path.read_text())
    summary.setdefault("stages", {})[name] = record
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


def add_screening_reference(run: str | Path) -> bool:
    """Add the screening reference (out-of-distribution and inverted-image checks, operating point)
    to a finished run's ``model.pt`` that was trained with ``screening=False``, from the run's own
    config, split and prepared images.

    Returns:
        True when it was added, False when the file already had one.

    Raises:
        ConfigError / ManifestError: the run's config, split or prepared images cannot be read.
    """
    run = Path(run)
    model, preprocess, payload = load_model(run / MODEL)
    extra = payload.get("extra") or {}
    if extra.get("screening"):
        return False
    config = load_config(run / CONFIG, {"splits": str(run / SPLITS), "out": str(run)})
    spec = model.spec
    if config.select.metric == "last" and not (read_table(run / SPLITS)["split"] == "val").any():
        raise ConfigError(f"{run}: the run has no validation side (a refit on everything) to fit the screening "
                          "reference on")
    data = load_train_data(config, spec, run)
    train_ds, val_ds = datasets(data, config, spec, augment=False)
    policy = run_policy(run)
    with use_policy(policy):  # on the run's own device, as a plain run's reference
        targets, probs = _predict(model, val_ds, config.optim.batch_size)
        reference = screening_reference(model, train_ds, val_ds, targets, probs, config.optim.batch_size)
    record_stage(run, "screening_reference", reference_record(policy, model))
    save_model(model, run / MODEL, preprocess, {**extra, "screening": reference})
    return True
