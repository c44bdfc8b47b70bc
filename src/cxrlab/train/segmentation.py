"""Train the lung segmenter: a U-Net on images with lung masks, split by patient.

Run directory: ``config.yaml``, ``splits.csv``, ``segmenter.pt`` (best validation Dice, self-
contained), ``metrics.csv`` (per epoch), ``summary.json`` (validation and test Dice/IoU, raw and
after clean-up, per source), ``test_overlays.png``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator
from segmentation_models_pytorch.losses import DiceLoss
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.core.run_folder import METRICS, RunFolder, SEGMENTER
from cxrlab.core.runtime import tune_allocator
from cxrlab.core.settings import SETTINGS_RULES, validate
from cxrlab.data import SplitConfig, class_names, load_source, make_splits, write_splits
from cxrlab.data.seen import seen_record
from cxrlab.models.registry import get_backbone_spec
from cxrlab.models.segmenter import (
    create_segmenter,
    predict_probabilities,
    save_segmenter,
)
from cxrlab.preprocess import PreprocessConfig
from cxrlab.preprocess.masks import clean_lung_mask, dice_iou, image_mask_pairs
from cxrlab.preprocess.transforms import to_model_input
from cxrlab.evaluate.plots import plot_mask_overlays

log = logging.getLogger(__name__)


class SegmentConfig(BaseModel):
    """Settings of one segmenter training run; its ``preprocess`` section is a
    :class:`cxrlab.preprocess.PreprocessConfig` (the segmenter's file records it; ``size`` and
    ``contrast`` may be given flat)."""

    model_config = SETTINGS_RULES

    data: tuple[str, ...] = Field((), description="sources with lung masks (manifests, metadata CSVs, trees)")
    splits: str | None = Field(None, description="a splits.csv to use instead of making one")
    out: str = Field("runs/segment", description="run folder")
    backbone: str = Field("efficientnet_lite0", description="encoder backbone (offline weights for "
                                                            "efficientnet_lite0/1/2)")
    pretrained: Literal["imagenet", "none"] = Field("imagenet", description="starting weights of the encoder")
    weights: str | None = Field(None, description="encoder weights file or folder")
    preprocess: PreprocessConfig = Field(default_factory=lambda: PreprocessConfig(size=256),
                                         description="the images the U-Net sees (256 px, CLAHE)")
    ratios: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train, validation and test shares")
    epochs: int = Field(30, ge=1, description="maximum epochs (early stopping on validation Dice)")
    patience: int = Field(8, ge=1, description="epochs without a better validation Dice before stopping")
    batch_size: int = Field(8, ge=1, description="images per step")
    lr: float = Field(1e-3, gt=0, le=10, description="Adam learning rate (cosine decay)")
    augment: bool = Field(True, description="random affine and contrast jitter on training images")
    seed: int = Field(0, ge=0, lt=2**32, description="seed (of the folds too, for crossfit)")
    progress_bar: bool = Field(True, description="Lightning's per-epoch progress bar")

    @model_validator(mode="before")
    @classmethod
    def _flat_preprocess(cls, values):
        """``size: 128`` is ``preprocess: {size: 128}`` (the segmenter's own 256 px otherwise)."""
        if not isinstance(values, dict):
            return values
        flat = {k: values[k] for k in PreprocessConfig.model_fields if k in values}
        if not flat:
            return values
        base = values.get("preprocess") or {"size": 256}
        base = base.model_dump() if isinstance(base, PreprocessConfig) else dict(base)
        rest = {k: v for k, v in values.items() if k not in flat}
        return {**rest, "preprocess": {**base, **flat}}

    @model_validator(mode="after")
    def _unet_size(self) -> SegmentConfig:
        if self.preprocess.size is not None and not 64 <= self.preprocess.size <= 1024:
            raise ValueError(f"preprocess.size: the U-Net needs 64 to 1024 px (it halves the side five times), got "
                             f"{self.preprocess.size}")
        return self

    @property
    def size(self) -> int:
        """The side the U-Net sees."""
        return self.preprocess.side


def build_segment_config(values: dict) -> SegmentConfig:
    """Validate settings into a :class:`SegmentConfig`.

    Raises:
        ConfigError: naming the first bad field.
    """
    return validate(SegmentConfig, values, "segment")


class _Pairs(Dataset):
    """Normalised image tensors and float masks; random affine + contrast jitter when ``augment``."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, mean, std, in_chans: int, augment: bool) -> None:
        self.images, self.masks, self.mean, self.std, self.in_chans = images, masks, mean, std, in_chans
        self.transform = v2.Compose([
            v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ]) if augment else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[i], self.masks[i]
        if self.transform is not None:
            out_image, out_mask = self.transform(tv_tensors.Image(torch.from_numpy(image)[None]),
                                                 tv_tensors.Mask(torch.from_numpy(mask.astype(np.uint8))[None]))
            image, mask = out_image[0].numpy(), out_mask[0].numpy() > 0
        x = torch.from_numpy(to_model_input(np.ascontiguousarray(image), self.mean, self.std, self.in_chans))
        return x, torch.from_numpy(np.asarray(mask, np.float32))[None]


# smp's soft Dice over the batch (+1 smoothing), the overlap term of the loss
DICE = DiceLoss("binary", from_logits=True, smooth=1.0)


class SegmenterModule(L.LightningModule):
    """BCE + soft Dice, Adam with cosine decay; keeps the weights of the best validation Dice."""

    def __init__(self, net: torch.nn.Module, config: SegmentConfig) -> None:
        super().__init__()
        self.net, self.config = net, config
        self.best_dice, self.best_state, self.best_epoch = -1.0, None, -1
        self._dice: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def on_train_epoch_start(self) -> None:
        # the encoder's BatchNorm keeps its pretrained statistics: batches of 8 estimate them poorly,
        # (and frozen statistics train slightly faster on a CPU: bench/bench_segment.py)
        for module in self.net.encoder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.binary_cross_entropy_with_logits(logits, y) + DICE(logits, y)
        if not torch.isfinite(loss):
            raise ConfigError(f"segmenter: loss became {loss.item()} at epoch {self.current_epoch}; lower the lr")
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.binary_cross_entropy_with_logits(logits, y) + DICE(logits, y),
                 on_epoch=True, batch_size=len(y))
        for p, t in zip((logits > 0).cpu().numpy()[:, 0], y.cpu().numpy()[:, 0] > 0.5, strict=True):
            self._dice.append(dice_iou(p, t)[0])

    def on_validation_epoch_end(self) -> None:
        dice = float(np.mean(self._dice)) if self._dice else math.nan
        self._dice = []
        self.log("val_dice", dice)
        if dice > self.best_dice:
            self.best_dice, self.best_epoch = dice, self.current_epoch
            self.best_state = copy.deepcopy(self.net.state_dict())

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.config.lr)
        return {"optimizer": optimizer,
                "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.config.epochs)}


def _masked_rows(config: SegmentConfig, names: tuple[str, ...]) -> pd.DataFrame:
    """The split (given, or made by patient over every image with a mask)."""
    if config.splits:
        frame = load_source(config.splits).table
    else:
        if not config.data:
            raise ConfigError("give data (sources with lung masks) or splits")
        tables = [load_source(path).table for path in config.data]
        frame = pd.concat(tables, ignore_index=True)
        frame, _ = make_splits(frame[_has_mask(frame)], names, SplitConfig(ratios=config.ratios, folds=0, seed=config.seed))
    frame = frame[_has_mask(frame)].reset_index(drop=True)
    for side in ("train", "val"):
        if not (frame["split"] == side).any():
            raise ConfigError(f"no image with a lung mask on the {side} side")
    return frame


def _has_mask(frame: pd.DataFrame) -> pd.Series:
    return frame.get("mask", pd.Series("", index=frame.index)).fillna("").astype(str) != ""


def train_segmenter(config: SegmentConfig, progress: Callable[[int], None] | None = None) -> dict:
    """Train, keep the best validation Dice, evaluate on the test side, write the run directory.

    Returns:
        The summary (also in ``summary.json``).

    Raises:
        ConfigError: no masks, an empty side, or settings that do not fit.
    """
    tune_allocator()
    folder = RunFolder(config.out, config.model_dump(mode="json"))
    out = folder.out
    spec = get_backbone_spec(config.backbone)
    preprocess = config.preprocess.resolved(256)
    frame = _masked_rows(config, class_names("3class"))
    write_splits(frame, {"segmentation": True}, out)
    images, masks, frame, skipped = image_mask_pairs(frame, preprocess, progress)
    sides = {side: (frame["split"] == side).to_numpy() for side in ("train", "val", "test")}
    torch.manual_seed(config.seed)
    net = create_segmenter(config.backbone, pretrained=config.pretrained, weights=config.weights)
    net = net.to(memory_format=torch.channels_last)
    module = SegmenterModule(net, config)

    def loader(side: str, train: bool) -> DataLoader:
        dataset = _Pairs(images[sides[side]], masks[sides[side]], spec.mean, spec.std, spec.in_chans,
                         config.augment and train)
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=train,
                          generator=torch.Generator().manual_seed(config.seed))

    trainer = L.Trainer(max_epochs=config.epochs, accelerator="auto", devices=1, logger=L.pytorch.loggers.CSVLogger(out, name="logs"),
                        callbacks=[L.pytorch.callbacks.EarlyStopping("val_dice", mode="max", patience=config.patience)],
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=config.progress_bar,
                        num_sanity_val_steps=0, deterministic=True, log_every_n_steps=1)
    fit_start = time.perf_counter()
    trainer.fit(module, loader("train", True), loader("val", False))
    fit_seconds = time.perf_counter() - fit_start
    net.load_state_dict(module.best_state)
    net.eval()
    save_segmenter(net, out / SEGMENTER, config.backbone, preprocess,
                   {"best_epoch": module.best_epoch, "val_dice": module.best_dice, "weights": net.weights_origin,
                    "seen": seen_record(frame[sides["train"]])})  # masks it predicts for these are in-sample
    summary = {"status": "ok", "backbone": config.backbone, "size": config.size, "weights": net.weights_origin,
               "images": {side: int(m.sum()) for side, m in sides.items()}, "skipped": len(skipped),
               "best_epoch": module.best_epoch, "epochs_run": trainer.current_epoch,
               "val": overlap_summary(net, images[sides["val"]], masks[sides["val"]], frame[sides["val"]], spec),
               "test": overlap_summary(net, images[sides["test"]], masks[sides["test"]], frame[sides["test"]], spec),
               "timing": {"seconds_fit": round(fit_seconds, 1),
                          "seconds_per_epoch": round(fit_seconds / max(trainer.current_epoch, 1), 2)}}
    _metrics_csv(out)
    test = sides["test"]
    if test.any():
        shown = np.flatnonzero(test)[:8]
        cleaned = [clean_lung_mask(p > 0.5) for p in predict_probabilities(net, images[shown], spec)]
        plot_mask_overlays(images[shown], masks[shown], cleaned,
                           [f"{Path(frame.at[i, 'image']).name[:22]}\nDice {dice_iou(c, masks[i])[0]:.3f}"
                            for i, c in zip(shown, cleaned, strict=True)], out / "test_overlays.png")
    return folder.finish(summary)


def overlap_summary(net: torch.nn.Module, images: np.ndarray, masks: np.ndarray, rows: pd.DataFrame, spec) -> dict:
    """Mean, median and 5th percentile of Dice and IoU, raw and after :func:`clean_lung_mask`, overall
    and per source."""
    if len(images) == 0:
        return {"n": 0}
    probs = predict_probabilities(net, images, spec)
    table = []
    for p, t, source in zip(probs, masks, rows.get("source", pd.Series("", index=rows.index)).fillna(""), strict=True):
        raw = p > 0.5
        d, j = dice_iou(raw, t)
        dc, jc = dice_iou(clean_lung_mask(raw), t)
        table.append({"source": source, "dice": d, "iou": j, "dice_clean": dc, "iou_clean": jc})
    frame = pd.DataFrame(table)

    def stats(part: pd.DataFrame) -> dict:
        return {"n": int(len(part)), **{f"{k}_{s}": float(getattr(part[k], s)()) for k in ("dice", "iou", "dice_clean",
                                                                                        "iou_clean") for s in ("mean", "median")},
                "dice_clean_p05": float(part["dice_clean"].quantile(0.05))}

    return {**stats(frame), "per_source": {s: stats(part) for s, part in frame.groupby("source")}}


def _metrics_csv(out: Path) -> None:
    """Lightning's CSV log (one row per logged step) folded into one row per epoch."""
    logs = sorted((out / "logs").glob("version_*/metrics.csv"))
    if logs:
        frame = pd.read_csv(logs[-1]).groupby("epoch").first().reset_index()
        atomic_write_text(out / METRICS, frame.to_csv(index=False))
