"""The training recipe's parts: discriminative learning rates, warm-up, label smoothing, mixup, AdamW,
radiograph augmentation (grey levels and shifts) and the moving average of the weights."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrlab.models import create_classifier
from cxrlab.train import build_config, train
from cxrlab.train.augment import Augmenter
from cxrlab.train.config import AugmentConfig
from cxrlab.train.module import ClassifierModule


def test_each_trainable_block_below_the_head_trains_at_a_decayed_rate():
    model = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune=3)
    groups = model.param_groups(1e-3, 0.5)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])  # head, then 3 blocks
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable) and len(grouped) == len(set(grouped))  # each once, no frozen one
    assert len(model.param_groups(1e-3)) == 4 and all(g["lr"] == 1e-3 for g in model.param_groups(1e-3))


class _StepRates(L.Callback):
    """The learning rate each optimizer step ran at (the head's group)."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rates.append(optimizer.param_groups[0]["lr"])


def test_warm_up_grows_the_rate_linearly_then_hands_back_to_the_schedule(tmp_path, phantoms):
    rates = _StepRates()
    config = build_config({"data": str(phantoms), "out": str(tmp_path / "w"), "size": 32, "epochs": 3, "batch_size": 8,
                           "ratios": (0.6, 0.2, 0.2), "lr": 1e-3, "warmup_epochs": 1, "schedule": "cosine",
                           "optimizer": "adamw", "weight_decay": 0.05, "label_smoothing": 0.1, "patience": 5,
                           "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    result = train(config, callbacks=[rates], screening=False)
    steps = len(rates.rates) // result.summary["epochs_run"]
    warm = rates.rates[:steps]
    assert warm == pytest.approx([1e-3 * (i + 1) / steps for i in range(steps)])  # linear up to the rate
    cosine = 1e-3 * (1 + np.cos(np.pi * np.arange(3) / 3)) / 2  # then the schedule's own values, epoch by epoch
    assert rates.rates[steps:2 * steps] == pytest.approx([cosine[1]] * steps)
    assert rates.rates[2 * steps:] == pytest.approx([cosine[2]] * steps)


def test_label_smoothing_changes_the_training_loss_only():
    model = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune=1, seed=0).eval()
    config = build_config({"data": "x.csv", "label_smoothing": 0.2})
    module = ClassifierModule(model, config.optim, config.schedule, 1e-3, 1)
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        logits, train_loss, _ = module._step((x, y), "train")
        _, val_loss, _ = module._step((x, y), "val")
    assert val_loss.item() == pytest.approx(F.cross_entropy(logits, y).item())
    assert train_loss.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.2).item())
    assert train_loss.item() != pytest.approx(val_loss.item())


def test_mixup_mixes_the_inputs_and_weighs_the_two_targets_losses_as_the_plain_loss():
    from cxrlab.core import ConfigError

    model = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune=1, seed=0).eval()
    config = build_config({"data": "x.csv", "mixup": 0.4, "label_smoothing": 0.1})
    module = ClassifierModule(model, config.optim, config.schedule, 1e-3, 1, class_weights=[1.0, 2.0, 3.0])
    x, y = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        torch.manual_seed(5)
        loss = module._mixup_loss((x, y))
        torch.manual_seed(5)  # the same draws, made by hand
        lam = float(torch.distributions.Beta(0.4, 0.4).sample())
        order = torch.randperm(6)
        logits = model(lam * x + (1 - lam) * x[order])
        weight = torch.tensor([1.0, 2.0, 3.0])
        expected = (lam * F.cross_entropy(logits, y, weight=weight, label_smoothing=0.1)
                    + (1 - lam) * F.cross_entropy(logits, y[order], weight=weight, label_smoothing=0.1))
        torch.manual_seed(5)
        again = module._mixup_loss((x, y))
    assert 0 < lam < 1 and not torch.equal(order, torch.arange(6))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and again.item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="mixup: not with attention_loss"):
        build_config({"data": "x.csv", "mixup": 0.4, "attention_loss": 1.0})


def _augmented(settings: AugmentConfig, image: np.ndarray, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    return Augmenter(settings)(image)


def test_grey_level_changes_touch_the_image_not_its_mask_and_shifts_move_both():
    y, x = np.mgrid[0:64, 0:64]
    image = ((x + y) * 2).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    levels = AugmentConfig(enabled=True, rotation=0, crop_scale=(1, 1), hflip=False, brightness=0.2, contrast=0.3,
                           gamma=0.3)
    out = _augmented(levels, np.dstack([image, mask]), 1)
    assert np.array_equal(out[..., 1], mask) and not np.array_equal(out[..., 0], image)
    order = np.argsort(image.ravel(), kind="stable")  # monotone grey-level maps keep the order of pixels
    assert (np.diff(out[..., 0].ravel()[order].astype(int)) >= 0).all()
    assert np.array_equal(_augmented(levels, image, 1), out[..., 0])  # same seed, same draws
    shift = AugmentConfig(enabled=True, rotation=0, crop_scale=(1, 1), hflip=False, translate=0.2)
    moved = _augmented(shift, np.dstack([image, mask]), 2)
    rows, cols = np.nonzero(moved[..., 1] > 127)
    dy, dx = rows.mean() - 31.5, cols.mean() - 31.5
    assert 0 < max(abs(dy), abs(dx)) <= 0.2 * 64 + 1  # moved, within the stated range
    assert abs(moved[..., 0].astype(int)[rows, cols].mean() - image[rows - round(dy), cols - round(dx)].mean()) < 3
    assert set(np.unique(moved[..., 1])) <= {0, 255}  # the mask moves with nearest-neighbour interpolation


def test_two_loader_workers_draw_their_own_augmentations_each_epoch_and_a_seed_replays_them(tmp_path, phantoms):
    """With workers, each worker's draws come from the seed PyTorch gives it for that epoch: no two
    workers or epochs replay the same augmentations (the old augmenter's generator was copied into
    every worker and never re-seeded), and the loader's seed replays the whole sequence."""
    from cxrlab.data import load_source
    from cxrlab.preprocess import PreprocessConfig, ShardDataset, prepare
    from cxrlab.train.data import loader

    manifest = load_source(phantoms)
    prepare(manifest, tmp_path / "prep", PreprocessConfig(size=32), workers=1)
    settings = AugmentConfig(enabled=True, rotation=20, crop_scale=(0.7, 1.0), brightness=0.2)
    dataset = ShardDataset(tmp_path / "prep", manifest.class_names, images=[str(p) for p in manifest.table["image"][:8]],
                           transform=Augmenter(settings))
    config = build_config({"data": "x.csv", "batch_size": 4, "num_workers": 2, "class_balance": "none"})

    def epochs(seed: int) -> list[list[torch.Tensor]]:
        batches = loader(dataset, config, train=False, seed=seed)  # no shuffling: batch b holds the same images
        return [[x for x, _ in batches] for _ in range(2)]

    first, again = epochs(0), epochs(0)
    assert all(torch.equal(a, b) for e, f in zip(first, again, strict=True) for a, b in zip(e, f, strict=True))
    assert not torch.equal(first[0][0], first[1][0])  # epoch 2 draws anew for the same images
    assert not torch.equal(first[0][0], first[0][1])  # and so does the other worker


@pytest.mark.parametrize(("select_on", "decay"), [("loss", 0.5), ("last", 0.999999)])
def test_the_moving_average_of_the_weights_is_what_is_validated_and_kept(tmp_path, phantoms, select_on, decay):
    """The kept model's validation loss, recomputed from model.pt, is the one logged for the kept epoch
    (Lightning swaps the raw weights back before the keeper would run). Decay ~1 keeps the average at
    the initial weights, so there every epoch scores the same and a raw-weight file would not."""
    import pandas as pd

    from cxrlab.data import load_source
    from cxrlab.models.predictor import Predictor

    config = build_config({"data": str(phantoms), "out": str(tmp_path / "ema"), "size": 32, "epochs": 3,
                           "batch_size": 8, "ratios": (0.6, 0.2, 0.2), "lr": 1e-2, "fine_tune": 1, "ema_decay": decay,
                           "select_on": select_on, "select_smoothing": 1, "min_epochs": 1, "class_balance": "none",
                           "precision": "32", "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    result = train(config, screening=False)
    logged = pd.read_csv(result.out / "metrics.csv")
    kept = logged.loc[logged["epoch"] == result.summary["best_epoch"], "val_loss"].item()
    val = load_source(result.out / "splits.csv").table.query("split == 'val'")
    scored = Predictor(result.out).predict_frame(val, tmp_path / "work")
    probs = torch.from_numpy(scored.logits).log_softmax(1)
    recomputed = -probs[torch.arange(len(probs)), torch.as_tensor(scored.y_true)].mean().item()
    assert recomputed == pytest.approx(kept, rel=1e-4)
    if select_on == "last":
        assert result.summary["best_epoch"] == 2 and logged["val_loss"].max() - logged["val_loss"].min() < 1e-3
