"""Callbacks: keep the best model (written atomically) and stop early, both by the run's selection
rule (:mod:`cxrlab.train.selection`); write ``metrics.csv`` per epoch; an exponential moving
average of the weights whose averaged weights are the ones scored and kept."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import lightning as L
import pandas as pd
from lightning.pytorch.callbacks import EMAWeightAveraging

from cxrlab.core.io import atomic_write_text
from cxrlab.models.checkpoint import save_model
from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.train.selection import EpochSelector


class BestModelKeeper(L.Callback):
    """Keeps the epoch the run's :class:`EpochSelector` chooses, across phases (saved to ``path``), and
    stops a phase early by the same rule, or at once when the validation loss is not finite. ``extra``
    joins every saved file's payload (the record of the patients the run has seen).

    Why not Lightning's ModelCheckpoint + EarlyStopping: a run is one ``Trainer.fit`` per phase, and
    both reset with each fit, while the kept epoch is chosen across phases; the rule compares a
    trailing mean of the metric with a minimum epoch count and a loss tie-break, not one epoch's
    value; and what is kept is the self-contained ``model.pt`` (weights, preprocessing, classes,
    patients seen) that every command reads, not a Lightning ``.ckpt`` of the training state.
    """

    def __init__(self, path: Path, preprocess: PreprocessConfig, selector: EpochSelector | None = None,
                 extra: dict | None = None) -> None:
        self.path, self.preprocess, self.extra = path, preprocess, extra or {}
        self.selector = selector or EpochSelector()
        self.best_state, self.best_phase = None, -1
        self.phase, self.epoch_offset = 0, 0

    @property
    def best_epoch(self) -> int:
        return self.selector.best_epoch

    @property
    def best_loss(self) -> float:
        """The validation loss of the kept epoch."""
        return self.selector.best_loss

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.selector.start_phase(self.epoch_offset)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if self.selector.metric == "last":  # chosen at the epoch's end, validated or not
            trainer.should_stop = not math.isfinite(metrics.get("val_loss", math.nan))
            return
        epoch = self.epoch_offset + trainer.current_epoch
        if self.selector.update(epoch, metrics):
            self._keep(pl_module, epoch)
        if not math.isfinite(metrics.get("val_loss", math.nan)) or self.selector.should_stop(epoch):
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.selector.metric != "last":
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        epoch = self.epoch_offset + trainer.current_epoch
        if self.selector.update(epoch, metrics):
            self._keep(pl_module, epoch)

    def _keep(self, pl_module: L.LightningModule, epoch: int) -> None:
        model = pl_module.model
        self.best_phase = self.phase
        self.best_state = copy.deepcopy(model.state_dict())
        self.best_fine_tune = model.fine_tune
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

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": self.epoch_offset + trainer.current_epoch, "phase": self.phase,
               "fine_tune": pl_module.model.fine_tune,
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "seconds": time.perf_counter() - self._start}
        for key in ("train_loss", "val_loss", "val_acc", "val_auc", "val_auc_covid", "val_f1"):
            row[key] = float(metrics[key]) if key in metrics else math.nan
        for key in ("train_attention", "val_attention"):  # runs with the attention loss
            if key in metrics:
                row[key] = float(metrics[key])
        self.rows.append(row)
        atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))


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
