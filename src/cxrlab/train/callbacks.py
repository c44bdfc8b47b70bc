"""Callbacks: keep the best model (written atomically), and write ``metrics.csv`` per epoch."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import lightning as L
import pandas as pd

from cxrlab.core.io import atomic_write_text
from cxrlab.models.checkpoint import save_model
from cxrlab.preprocess.config import PreprocessConfig


class BestModelKeeper(L.Callback):
    """Tracks the lowest finite validation loss across phases; saves that model to ``path``."""

    def __init__(self, path: Path, preprocess: PreprocessConfig) -> None:
        self.path, self.preprocess = path, preprocess
        self.best_loss, self.best_state, self.best_epoch, self.best_phase = math.inf, None, -1, -1
        self.phase, self.epoch_offset = 0, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = float(trainer.callback_metrics.get("val_loss", math.nan))
        if math.isfinite(loss) and loss < self.best_loss:
            model = pl_module.model
            self.best_loss, self.best_epoch, self.best_phase = loss, self.epoch_offset + trainer.current_epoch, self.phase
            self.best_state = copy.deepcopy(model.state_dict())
            self.best_fine_tune = model.fine_tune
            save_model(model, self.path, self.preprocess, {"val_loss": loss, "epoch": self.best_epoch})


class MetricsCsv(L.Callback):
    """Appends one row per epoch (phase, losses, accuracy, AUC, learning rate, seconds; the attention
    loss when training with it) to a CSV."""

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
        for key in ("train_loss", "val_loss", "val_acc", "val_auc"):
            row[key] = float(metrics[key]) if key in metrics else math.nan
        for key in ("train_attention", "val_attention"):  # runs with the attention loss
            if key in metrics:
                row[key] = float(metrics[key])
        self.rows.append(row)
        atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))
