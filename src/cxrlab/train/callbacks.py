"""Callbacks: keep the best model (written atomically) and stop early, both by the run's selection
rule (:mod:`cxrlab.train.selection`); write ``metrics.csv`` per epoch; an exponential moving
average of the weights whose averaged weights are the ones scored and kept."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from cxrlab.evaluate.registry import list_metrics, log_key
from cxrlab.core.io import atomic_write_text
from cxrlab.models.checkpoint import FORMAT, non_finite_tensors, read_payload, save_model
from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.train.selection import EpochSelector

log = logging.getLogger(__name__)


class BestModelKeeper(L.Callback):
    """Keeps the epoch the run's :class:`EpochSelector` chooses, across phases (saved to ``path``), and
    stops a phase early by the same rule, or at once when the validation loss is not finite. ``extra``
    joins every saved file's payload (the record of the patients the run has seen).

    Why not Lightning's ModelCheckpoint + EarlyStopping for this (ModelCheckpoint does keep the run's
    ``last.ckpt``, for resuming): a run is one ``Trainer.fit`` per phase, and
    both reset with each fit, while the kept epoch is chosen across phases; the rule compares a
    trailing mean of the metric with a minimum epoch count and a loss tie-break, not one epoch's
    value; and what is kept is the self-contained ``model.pt`` (weights, preprocessing, classes,
    patients seen) that every command reads, not a Lightning ``.ckpt`` of the training state.
    """

    def __init__(self, path: Path, preprocess: PreprocessConfig, selector: EpochSelector,
                 extra: dict | None = None) -> None:
        self.path, self.preprocess, self.extra = path, preprocess, extra or {}
        self.selector = selector
        self.best_state, self.best_phase = None, -1
        self.phase, self.epoch_offset = 0, 0
        self._resumed = False
        self.diverged: int | None = None  # the epoch whose weights were not finite (not kept), if any

    @property
    def best_epoch(self) -> int:
        return self.selector.best_epoch

    @property
    def best_loss(self) -> float:
        """The validation loss of the kept epoch."""
        return self.selector.best_loss

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resumed:  # the phase goes on from a checkpoint: its window and patience with it
            self._resumed = False
            epoch = self.epoch_offset + trainer.current_epoch - 1
            if trainer.current_epoch and self.selector.should_stop(epoch):  # it had stopped early at that epoch
                trainer.should_stop = True
            return
        self.selector.start_phase(self.epoch_offset)

    def state_dict(self) -> dict:
        return {"selector": self.selector.state(), "best_phase": self.best_phase, "phase": self.phase,
                "epoch_offset": self.epoch_offset, "kept": self.best_state is not None,
                "best_fine_tune": getattr(self, "best_fine_tune", None)}

    def load_state_dict(self, state: dict) -> None:
        """Continue a run from its checkpoint: the kept model is the one saved at ``path``."""
        self.selector.restore(state["selector"])
        self.best_phase, self.phase, self.epoch_offset = state["best_phase"], state["phase"], state["epoch_offset"]
        if state["kept"] and self.path.exists():
            self.best_state = read_payload(self.path, FORMAT, "model")["state_dict"]
            self.best_fine_tune = state["best_fine_tune"]
        self._resumed = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if self.selector.metric == "last":  # chosen at the epoch's end, validated or not
            trainer.should_stop = not math.isfinite(metrics.get("val_loss", math.nan))
            return
        epoch = self.epoch_offset + trainer.current_epoch
        if self._diverged(trainer, pl_module, epoch):
            return
        if self.selector.update(epoch, metrics):
            self._keep(pl_module, epoch)
        if not math.isfinite(metrics.get("val_loss", math.nan)) or self.selector.should_stop(epoch):
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.selector.metric != "last":
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        epoch = self.epoch_offset + trainer.current_epoch
        if self._diverged(trainer, pl_module, epoch):
            return
        if self.selector.update(epoch, metrics):
            self._keep(pl_module, epoch)

    def _diverged(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> bool:
        """Whether this epoch's weights hold NaN or infinite values (an optimizer step after the last
        finite loss diverged): such an epoch is never chosen nor saved, and training stops."""
        if not (bad := non_finite_tensors(pl_module.model.state_dict())):
            return False
        log.error("epoch %d: %d weight tensor(s) hold NaN or infinite values (e.g. %s): training diverged; the "
                  "model kept before stays in %s (lower the learning rate)", epoch, len(bad), bad[0], self.path)
        trainer.should_stop = True
        self.diverged = epoch
        return True

    def _keep(self, pl_module: L.LightningModule, epoch: int) -> None:
        model = pl_module.model
        self.best_phase = self.phase
        self.best_state = copy.deepcopy(model.state_dict())
        self.best_fine_tune = model.fine_tune
        if pl_module.trainer.is_global_zero:  # one writer in a data-parallel run
            save_model(model, self.path, self.preprocess, {**self.extra, "val_loss": self.best_loss, "epoch": epoch,
                                                           "selection": self.selector.to_dict()})


class MetricsCsv(L.Callback):
    """Appends one row per epoch (phase, losses, accuracy, macro AUC, COVID-19 AUC, macro-F1, learning
    rate, seconds; the attention loss when training with it) to a CSV, rewritten atomically.

    Why not Lightning's CSVLogger: its epoch counter restarts with each phase's fit and it writes
    into a versioned sub-folder; ``metrics.csv`` is one table over all phases beside ``model.pt``.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.rows, self.phase, self.epoch_offset = path, [], 0, 0
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def state_dict(self) -> dict:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": self.epoch_offset + trainer.current_epoch, "phase": self.phase,
               "fine_tune": pl_module.model.fine_tune,
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "seconds": time.perf_counter() - self._start}
        for key in ("train_loss", *(log_key(name) for name in list_metrics())):  # val_loss, val_accuracy, ...
            row[key] = float(metrics[key]) if key in metrics else math.nan
        for key in ("train_attention", "val_attention"):  # runs with the attention loss
            if key in metrics:
                row[key] = float(metrics[key])
        self.rows.append(row)
        if trainer.is_global_zero:
            atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))


class ResumeState(L.Callback):
    """What a resumed run needs besides Lightning's own checkpoint to go on exactly as if never stopped:
    the random states (torch's, NumPy's, Python's and the training loader's generator, which shuffles
    and seeds augmentation workers) and where in the run's phases the checkpoint was taken."""

    def __init__(self, generator: torch.Generator | None, phase: int, epochs_before: int) -> None:
        self.generator, self.phase, self.epochs_before = generator, phase, epochs_before

    def state_dict(self) -> dict:
        return {"phase": self.phase, "epochs_before": self.epochs_before, "torch": torch.get_rng_state(),
                "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
                "python": random.getstate(), "loader": self.generator.get_state() if self.generator else None}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        numpy = list(state["numpy"])
        numpy[1] = np.asarray(numpy[1], dtype=np.uint32)
        np.random.set_state(tuple(numpy))
        random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["python"]))
        if self.generator is not None and state["loader"] is not None:
            self.generator.set_state(state["loader"])


def read_resume_point(path: Path) -> dict | None:
    """``{"phase", "epochs_before", "epoch", "state_dict"}`` of a run's ``last.ckpt`` (None without one,
    or when it cannot be read: the run then starts again, with a warning)."""
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # our own file, with RNG states
        state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ResumeState"))
    except Exception as err:  # a checkpoint cut short by a kill during its write
        log.warning("%s: cannot resume from it (%s); training starts again", path, err)
        return None
    return {"phase": state["phase"], "epochs_before": state["epochs_before"], "epoch": checkpoint["epoch"],
            "state_dict": {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}}


class EmaWeights(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights (updated every step), with the averaged
    weights in the model from the start of validation to the start of the next training epoch (Lightning
    swaps them back at the end of the validation epoch): :class:`BestModelKeeper`, listed after this
    callback, then scores and keeps the averaged weights, also when it keeps at an epoch's end
    (``select_on: last``, no validation side)."""

    def __init__(self, decay: float) -> None:
        super().__init__(decay=decay)
        self._swapped = False

    def _swap(self, pl_module: L.LightningModule, averaged_in: bool) -> None:
        if self._average_model is not None and self._swapped != averaged_in:
            self._swap_models(pl_module)
            self._swapped = averaged_in

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap(pl_module, True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # stays averaged until the keeper has run (on_validation_end / on_train_epoch_end)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap(pl_module, False)
        super().on_train_epoch_end(trainer, pl_module)  # updates by epoch, if configured so, on the trained weights
        self._swap(pl_module, True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap(pl_module, False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap(pl_module, False)
        super().on_train_end(trainer, pl_module)
