"""Training data: split (or read the split), prepare shards, build datasets and loaders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, WeightedRandomSampler

from cxrlab.core.run_folder import PREPARED, SPLITS
from cxrlab.core.device import Policy
from cxrlab.core.errors import ConfigError
from cxrlab.core.runtime import default_workers
from cxrlab.data import SplitConfig, class_names, load_source, make_splits, write_splits
from cxrlab.data.audit import check_no_copies
from cxrlab.data.duplicates import regroup_duplicates
from cxrlab.data.findings import finding_targets
from cxrlab.data.manifest import Manifest, recorded_scheme
from cxrlab.data.mask_provenance import check_uniform_masks, mask_uses
from cxrlab.models.registry import BackboneSpec
from cxrlab.preprocess import PreprocessConfig, ShardAwareSampler, ShardDataset, ShardReader, prepare
from cxrlab.train.augment import Augmenter
from cxrlab.train.config import TrainConfig
from cxrlab.train.distributed import is_rank_zero
from cxrlab.train.loading import loading

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """What a run trains and validates on."""

    frame: pd.DataFrame
    class_names: tuple[str, ...]
    preprocess: PreprocessConfig
    reader: ShardReader
    train_images: list[str]
    val_images: list[str]
    skipped: list[tuple[str, str]]


def preprocess_for(config: TrainConfig, spec: BackboneSpec) -> PreprocessConfig:
    """Preprocessing of a run: its ``preprocess`` section at the backbone's native size unless ``size`` is
    set; lung masks kept beside the pixels when lung attention or the attention loss needs them."""
    preprocess = config.preprocess.resolved(spec.input_size)
    return preprocess.updated(keep_mask=True) if config.uses_masks and not preprocess.keep_mask else preprocess


def grouped_table(table: pd.DataFrame, dedupe: bool) -> tuple[pd.DataFrame, str, dict | None]:
    """``(table, the column a split groups by, what was merged)``: with ``dedupe``, patients linked by
    near-duplicate images share a ``group_id`` (:func:`cxrlab.data.duplicates.regroup_duplicates`)."""
    if not dedupe:
        return table, "patient_id", None
    # ~3 ms per image on one core: a process pool pays off only for large tables
    table, merged = regroup_duplicates(table, workers=default_workers() if len(table) > 2000 else 1)
    return table, "group_id", merged


def with_recorded_scheme(config: TrainConfig) -> TrainConfig:
    """``config`` with the scheme its data was written with (a manifest from ``cxrlab manifest --scheme
    chestxray14``, a split from ``cxrlab split``) when the config does not name one itself."""
    data = config.data
    if "scheme" in data.model_fields_set:
        return config
    recorded = recorded_scheme(data.splits or data.path)
    if recorded is None or recorded == data.scheme:
        return config
    log.info("%s was written with scheme %s: training that scheme", data.splits or data.path, recorded)
    return config.replace({"scheme": recorded}, "the data's recorded scheme")


def mask_settings(config: TrainConfig) -> str:
    """The settings of ``config`` that use lung masks, as text ("" when none does)."""
    return mask_uses(config.preprocess.lung_crop, config.preprocess.artifacts == "inpaint",
                     config.model.lung_attention, config.optim.attention_loss > 0)


def guidance_record(config: TrainConfig) -> dict:
    """How training steers the model towards the lung masks, for its file (empty when it does not)."""
    model, optim = config.model, config.optim
    steered = {"lung_attention": True} if model.lung_attention else {}
    if optim.attention_loss > 0:
        steered.update(attention_loss=optim.attention_loss, attention_form=optim.attention_form)
    return steered


def check_classes_present(frame: pd.DataFrame, names: Sequence[str], sides: Sequence[str] = ("train", "val"),
                          multilabel: bool = False) -> None:
    """Every class has images on each of ``sides`` (multi-label: every finding is positive on some
    training image; a validation side without one only loses that finding's validation AUC, logged).

    Raises:
        ConfigError: a side lacks a class (named).
    """
    for side in sides:
        counts = frame.loc[frame["split"] == side, "label"].astype(str).str.split("|").explode().value_counts()
        missing = [c for c in names if counts.get(c, 0) == 0]
        if missing and multilabel and side != "train":
            log.warning("the %s side has no positive image of %s: no validation AUC for it", side, ", ".join(missing))
        elif missing and multilabel:
            present = [c for c in names if c not in missing]
            raise ConfigError(f"no training image has finding(s) {', '.join(missing)}: they cannot be learned; "
                              f"choose the findings the data hold (scheme findings:{','.join(present)})")
        elif missing:
            raise ConfigError(f"the {side} side has no images of class(es) {', '.join(missing)}; "
                              "fix the split or the data before training")


def load_train_data(config: TrainConfig, spec: BackboneSpec, out: Path, progress=None) -> TrainData:
    """Read or make the split, prepare shards (into ``runtime.prepared`` or ``out/prepared``), check
    every class is present.

    Raises:
        ConfigError: a class has no image on the train or validation side (before training).
        LeakageError: the given split file puts a patient on two sides.
    """
    data = config.data
    names = class_names(data.scheme)
    if data.splits:
        manifest = load_source(data.splits, scheme=data.scheme, policy=config.finding_policy)  # the leakage guard
        frame = manifest.table
        if data.dedupe:  # patients are checked above; copies under other ids here
            check_no_copies(frame, str(data.splits), workers=default_workers() if len(frame) > 2000 else 1)
        if Path(data.splits).resolve() != (out / SPLITS).resolve() and is_rank_zero(config):  # the run keeps its split
            write_splits(frame, {"from": str(data.splits), "scheme": data.scheme}, out)
    else:
        manifest = load_source(data.path, scheme=data.scheme, policy=config.finding_policy)
        table, group, duplicates = grouped_table(manifest.table, data.dedupe)
        frame, info = make_splits(table, names, SplitConfig(ratios=data.ratios, folds=0, seed=config.runtime.seed,
                                                            group_column=group))
        if is_rank_zero(config):  # a data-parallel run's other processes make the same split and write nothing
            write_splits(frame, {**info, "scheme": data.scheme, "duplicates": duplicates}, out)
    if settings := mask_settings(config):
        check_uniform_masks(frame, settings, str(data.splits or data.path))
    skipped = [(s.image, s.reason) for s in manifest.skipped]
    if "view" not in frame.columns:
        frame = frame.assign(view="")
    preprocess = preprocess_for(config, spec)
    prepared = Path(config.runtime.prepared) if config.runtime.prepared else out / PREPARED
    prepared.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(prepared.with_name(prepared.name + ".lock"))):  # runs in parallel may share the folder
        summary = prepare(Manifest(frame.reset_index(drop=True), names), prepared, preprocess, progress=progress)
    skipped += summary.skipped
    if summary.images == 0:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise ConfigError(f"no usable images: all {len(skipped)} input(s) were skipped{first}")
    reader = ShardReader(prepared)
    present = set(reader.table["image"])
    frame = frame[frame["image"].isin(present)]
    # a refit (select_on: last) may train on everything: a validation side is then optional
    optional_val = config.select.metric == "last" and not (frame["split"] == "val").any()
    check_classes_present(frame, names, ("train",) if optional_val else ("train", "val"), config.multilabel)
    return TrainData(frame, names, preprocess, reader, frame.loc[frame["split"] == "train", "image"].tolist(),
                     frame.loc[frame["split"] == "val", "image"].tolist(), skipped)


def class_weights(data: TrainData, multilabel: bool = False) -> list[float]:
    """Balanced weights ``n / (C * count)`` from the training side; for a multi-label scheme each
    finding's positive weight, negatives / positives among the training images that know it."""
    train = data.frame[data.frame["split"] == "train"]
    if multilabel:
        targets, known = finding_targets(train["label"], train.get("unlabelled"), data.class_names)
        positives = (targets * known).sum(axis=0)
        return [float((k - p) / p) if p else 1.0 for p, k in zip(positives, known.sum(axis=0))]
    counts = train["label"].value_counts()
    total = int(counts.sum())
    return [total / (len(data.class_names) * counts[c]) for c in data.class_names]


def datasets(data: TrainData, config: TrainConfig, spec: BackboneSpec,
             augment: bool = True) -> tuple[ShardDataset, ShardDataset]:
    """Train dataset (augmented when enabled and ``augment``) and validation dataset (never augmented);
    lung masks as a last input channel when the run uses them."""
    common = {"mean": spec.mean, "std": spec.std, "in_chans": spec.in_chans, "with_masks": config.uses_masks,
              "multilabel": config.multilabel}
    augment = Augmenter(config.augment) if config.augment.enabled and augment else None  # draws: torch's seeded generator
    train = ShardDataset(data.reader, data.class_names, images=data.train_images, transform=augment, **common)
    val = ShardDataset(data.reader, data.class_names, images=data.val_images, **common)
    return train, val


def loader(dataset, config: TrainConfig, train: bool, seed: int, policy: Policy | None = None) -> DataLoader:
    """A DataLoader with a seeded generator; balanced sampling when ``class_balance="sampler"``. A
    training epoch drops a last batch of a single image: BatchNorm cannot train on one. Streamed
    shards (a prepared set too large for memory) train through :class:`ShardAwareSampler`: a few
    shards at a time, shuffled together. Workers and pinned memory follow ``policy``'s device
    (:func:`loading`)."""
    generator = torch.Generator().manual_seed(seed)
    batch_size, common = config.optim.batch_size, loading(config, (policy or Policy()).device_type)
    drop_last = train and len(dataset) % batch_size == 1 and len(dataset) > 1
    balanced = train and config.data.class_balance == "sampler"
    weights = None
    if balanced:
        targets = np.asarray(dataset.targets)
        weights = 1.0 / np.bincount(targets)[targets]
    if train and getattr(dataset, "streaming", False):
        sampler = ShardAwareSampler(dataset.shard_of, seed, weights=weights)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)
    if balanced:
        sampler = WeightedRandomSampler(weights.tolist(), len(targets), replacement=True, generator=generator)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator, drop_last=drop_last,
                      **common)
