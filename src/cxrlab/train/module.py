"""The Lightning module: loss, optimisers, schedules, and validation metrics."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from cxrlab.core.errors import CxrlabError
from cxrlab.data.classes import POSITIVE_CLASS
from cxrlab.models.classifier import CxrClassifier
from cxrlab.train.attention import attention_loss, differentiable_gradcam, gain_loss
from cxrlab.train.config import OptimSection, ScheduleSection
from cxrlab.train.distributed import gather
from cxrlab.evaluate.metrics import classification_summary
from cxrlab.evaluate.registry import list_metrics, log_key


class NonFiniteLossError(CxrlabError, FloatingPointError):
    """The training loss became NaN or infinite."""


class ClassifierModule(L.LightningModule):
    """Trains a :class:`CxrClassifier` (or its trainable suffix on cached activations).

    Args:
        model: The classifier.
        optim: The config's ``optim`` section (optimiser, loss, regularisers).
        schedule: Its ``schedule`` section (learning-rate schedule, warm-up).
        lr: Learning rate of this phase.
        epochs: Epochs of this phase (for the cosine schedule).
        class_weights: Cross-entropy weights per class (a multi-label model: each finding's positive
            weight), or ``None``.
        start_block: 0 for images; ``k`` when batches are activations entering block ``k``
            (``(activations, y)`` or, with lung masks, ``(activations, y, mask)``).
        validated: False for a refit without a validation side.
        channels_last: Convert image batches to channels-last memory (the runtime section's choice).

    With ``optim.attention_loss`` α > 0 the training loss is cross-entropy + α · the attention term
    of ``optim.attention_form`` on the true class's differentiable Grad-CAM (last block's features,
    before any lung attention; :mod:`cxrlab.train.attention`): the share outside the lung mask, or
    GAIN's attention mining + map-vs-mask error (logged as ``train_attention``; ``val_attention`` is
    the outside share for both forms). The validation loss that early stopping and the best-model
    choice watch stays the plain cross-entropy.
    """

    def __init__(self, model: CxrClassifier, optim: OptimSection, schedule: ScheduleSection, lr: float, epochs: int,
                 class_weights: Sequence[float] | None = None, start_block: int = 0, validated: bool = True,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.model, self.optim, self.schedule, self.lr, self.epochs = model, optim, schedule, lr, epochs
        self.start_block, self.validated, self.channels_last = start_block, validated, channels_last
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.last_summary: dict = {}
        self._val_logits: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_from(x, self.start_block, mask) if self.start_block else self.model(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # channels-last convolutions run about 2x faster on oneDNN CPUs (bench/bench_train.py)
        x, *rest = batch
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x, *rest)

    def _features(self, batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """``(last-block features, lung mask or None, targets, images or None)`` of a batch of images
        or activations."""
        if self.start_block:
            activations, y, *mask = batch
            return self.model.forward_blocks(activations, self.start_block), (mask[0] if mask else None), y, None
        x, y = batch
        image, mask = self.model.split_input(x)
        return self.model.image_features(image), mask, y, image

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, loss, targets)``; the attention term joins the loss in training only."""
        features, mask, y, image = self._features(batch)
        guided = bool(self.optim.attention_loss) and mask is not None
        if guided and not features.requires_grad:
            features = features.detach().requires_grad_()  # frozen backbone: the map still needs the head's gradient
        # validation runs under no_grad (the trainer's inference mode is off for guided runs): the map needs a graph
        with torch.enable_grad() if guided else nullcontext():
            logits = self.model.head(self.model.attend(features, mask)).float()
            smoothing = self.optim.label_smoothing if stage == "train" else 0.0  # validation: plain cross-entropy
            loss = self.loss(logits, y, smoothing)
            if guided:
                if self.optim.attention_form == "gain" and stage == "train":  # needs the images (no prefix cache)
                    attention = gain_loss(self.model, image, features, logits, y, mask)
                else:  # validation logs the outside share for either form: a figure comparable between them
                    attention = attention_loss(differentiable_gradcam(features, logits, y), mask)
                self.log(f"{stage}_attention", attention, on_step=False, on_epoch=True, batch_size=len(y))
                if stage == "train":
                    loss = loss + self.optim.attention_loss * attention
        return logits, loss, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy over classes (class weights, label smoothing), or for a multi-label model the
        binary cross-entropy of each finding whose value is known (``y`` NaN where it is not), with
        positive weights from the training side and targets smoothed towards 1/2."""
        if not self.model.multilabel:
            return F.cross_entropy(logits, y, weight=self.class_weights, label_smoothing=smoothing)
        known = ~torch.isnan(y)
        target = torch.nan_to_num(y) * (1 - smoothing) + smoothing / 2
        each = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.class_weights, reduction="none")
        return (each * known).sum() / known.sum().clamp_min(1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._mixup_loss(batch) if self.optim.mixup else self._step(batch, "train")[1]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"training loss became {loss.item()} at epoch {self.current_epoch}, batch "
                                     f"{batch_idx}; stopped (lower the learning rate?); the last good model is kept")
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[1]), sync_dist=True)
        return loss

    def _mixup_loss(self, batch) -> torch.Tensor:
        """Mixup (Zhang et al., 2018): the batch's inputs mixed with a shuffled copy, weight lambda ~
        Beta(alpha, alpha), and the loss the same mix of the two targets' cross-entropies: each term
        weighted as the unmixed loss is (torchvision's MixUp gives mixed one-hot targets, whose weighted
        cross-entropy PyTorch averages over the batch, not over the weights). Drawn from torch's seeded
        generator: a seed gives the same run."""
        x, y, *rest = batch
        lam = float(torch.distributions.Beta(self.optim.mixup, self.optim.mixup).sample())
        order = torch.randperm(len(y), device=y.device)
        logits, loss, _ = self._step((lam * x + (1 - lam) * x[order], y, *rest), "train")
        other = self.loss(logits, y[order], self.optim.label_smoothing)
        return lam * loss + (1 - lam) * other

    def validation_step(self, batch, batch_idx: int) -> None:
        logits, loss, y = self._step(batch, "val")
        logits, loss = logits.detach(), loss.detach()
        if self.trainer.world_size == 1:  # several processes: the loss of all their images, at the epoch's end
            self.log("val_loss", loss, on_epoch=True, batch_size=len(y))
        self._val_logits.append(logits.detach().cpu())
        self._val_targets.append(y.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        logits, targets = gather(torch.cat(self._val_logits), torch.cat(self._val_targets))  # all ranks' images
        if self.trainer.world_size > 1:  # a mean of the ranks' means would weigh their uneven shares alike
            self.log("val_loss", float(self.loss(logits, targets)))
        probs, targets = self.model.probabilities(logits).numpy(), targets.numpy()
        self._val_logits.clear()
        self._val_targets.clear()
        self.last_summary = classification_summary(targets, probs, self.model.class_names)
        for name in list_metrics(computable=True):  # the registry's spelling: val_accuracy, val_auc_macro, ...
            if name == "auc_covid" and POSITIVE_CLASS not in self.model.class_names:
                continue  # the papers' headline, COVID-19 vs the rest, where there is such a class
            value = self.last_summary[name]
            self.log(log_key(name), float(value) if value is not None else float(np.nan))

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Linear warm-up over the first ``warmup_epochs``: a step runs at a growing fraction of the rate
        the schedule gives, which is put back right after it, so every scheduler (chainable ones
        included) goes on from its own values."""
        steps = self.schedule.warmup_epochs * self.trainer.num_training_batches
        if not steps or self.global_step >= steps:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
            group["lr"] = lr * (self.global_step + 1) / steps
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        finally:
            for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
                group["lr"] = lr

    def configure_optimizers(self):
        params = self.model.param_groups(self.lr, self.optim.lr_decay)
        cfg, schedule = self.optim, self.schedule
        if cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":  # decoupled weight decay (Loshchilov & Hutter)
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "rmsprop":  # Keras defaults (rho 0.9), as the papers used
            optimizer = torch.optim.RMSprop(params, lr=self.lr, alpha=0.9, eps=1e-7, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if schedule.kind == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=schedule.plateau_factor,
                                                                   patience=schedule.plateau_patience)
            # without a validation side (a refit) the plateau is the training loss's
            monitor = "val_loss" if self.validated else "train_loss"
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": monitor}}
        if schedule.kind == "step":
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=schedule.step_size, gamma=schedule.step_gamma)}
        if schedule.kind == "cosine":
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=self.epochs)}
        return optimizer
