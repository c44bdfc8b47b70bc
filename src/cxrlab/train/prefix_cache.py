"""Frozen-prefix caching: run the frozen leading blocks once, train the rest on cached activations.

With the first blocks frozen (BatchNorm in eval mode) and no augmentation, their output for an
image never changes during training, so computing it every epoch is wasted work. This is what
makes sweeps over the fine-tuning degree affordable on a CPU (issue 3, item 5).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import timm
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset

from cxrlab.core.device import Policy, stage_record
from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.models.classifier import CxrClassifier
from cxrlab.preprocess import PreprocessConfig, ShardDataset

log = logging.getLogger(__name__)


class ActivationDataset(Dataset):
    """``(activation, target)`` pairs, or ``(activation, target, lung mask)`` with ``masks``;
    activations in memory or in a disk-backed memmap.

    ``rows`` selects rows of ``activations`` (a store shared by runs holds every image); ``masks``
    holds one ``(H, W) uint8`` mask per item, in item order.
    """

    def __init__(self, activations: np.ndarray | torch.Tensor, targets: np.ndarray,
                 rows: np.ndarray | None = None, masks: np.ndarray | None = None) -> None:
        self.activations, self.targets, self.masks = activations, targets, masks
        self.rows = np.arange(len(targets)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        act = self.activations[int(self.rows[i])]
        act = act if isinstance(act, torch.Tensor) else torch.from_numpy(np.array(act))
        if self.masks is None:
            return act, torch.tensor(self.targets[i])
        return act, torch.tensor(self.targets[i]), torch.from_numpy(self.masks[i])


def _prefix_pass(model: CxrClassifier, policy: Policy | None, record: dict | None):
    """``(run, device)``: ``run(x, start, end)`` gives blocks ``start..end-1`` of a batch as float32 on
    the host, computed on the run's own device under the training step's autocast (cached activations
    must be the ones an uncached step computes; a GPU run's prefix on the CPU ran 20x slower in emulated
    bf16); the first batch fills ``record`` with what it ran on. Moves the model to that device."""
    policy = policy or Policy()
    device, dtype = torch.device(policy.device), policy.autocast_dtype
    model.to(device)

    def run(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        with torch.autocast(policy.device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            act = model.forward_blocks(x.to(device, non_blocking=True), start, end)
        if record is not None and not record:
            record.update(stage_record(policy, act.device))
        return act.float().cpu()

    return run, device


def can_cache(model: CxrClassifier, augment: bool) -> bool:
    """True when some leading blocks are frozen, blocks run in sequence and inputs are fixed."""
    return model.frozen_blocks > 0 and model.spec.sequential and not augment


@torch.no_grad()
def compute_prefix(model: CxrClassifier, dataset: Dataset, batch_size: int = 64, max_bytes: float = 4e9,
                   spill_dir: str | Path | None = None, policy: Policy | None = None,
                   record: dict | None = None) -> ActivationDataset:
    """Activations entering block ``model.frozen_blocks`` for every item of ``dataset``.

    Args:
        model: The classifier (its frozen prefix runs in eval mode, on ``policy``'s device).
        dataset: Yields ``(x, target)``.
        batch_size: Batch size for the one pass.
        max_bytes: Keep activations in memory up to this size, else in a memmap in ``spill_dir``.
        spill_dir: Folder for the memmap file.
        policy: The run's device and the training step's precision (default: fp32 on the CPU); the
            activations are stored as float32 in host memory.
        record: Filled with :func:`stage_record` of what the pass ran on.
    """
    was_training = model.training
    model.eval()
    start = model.frozen_blocks
    run, device = _prefix_pass(model, policy, record)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
    targets, masks, store, offset = [], [], None, 0
    for x, y in loader:
        image, mask = model.split_input(x)
        if mask is not None:
            masks.append(mask.to(torch.uint8).numpy())
        act = run(image, 0, start)
        if store is None:  # sized once from the first batch, filled in place: no second, concatenated copy
            size = act[0].numel() * 4 * len(dataset)
            if size > max_bytes:
                path = Path(spill_dir or ".") / f"prefix-{start}-{len(dataset)}.f32"
                path.parent.mkdir(parents=True, exist_ok=True)
                _check_disk(path.parent, size, f"the prefix cache of {len(dataset)} images")
                store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                  shape=(len(dataset), *act.shape[1:]))
                log.info("prefix cache: %.2f GB does not fit the %.1f GB memory budget (cache_max_gb); on disk "
                         "in %s", size / 1e9, max_bytes / 1e9, path)
            else:
                store = torch.empty((len(dataset), *act.shape[1:]), dtype=torch.float32)
                log.info("prefix cache: %.2f GB in memory for %d images (budget %.1f GB)", size / 1e9, len(dataset),
                         max_bytes / 1e9)
        store[offset:offset + len(act)] = act if isinstance(store, torch.Tensor) else act.numpy()
        offset += len(act)
        targets.append(y.numpy())
    model.train(was_training)
    return ActivationDataset(store, np.concatenate(targets), masks=np.concatenate(masks) if masks else None)


def _check_disk(folder: Path, size: float, what: str, budget: float | None = None, used: float = 0.0) -> None:
    """Refuse, before writing, activations that would not fit the free space of ``folder`` (or
    ``budget`` bytes, of which ``used`` are taken).

    Raises:
        ConfigError: naming the estimate, what is free and the setting to change.
    """
    free = shutil.disk_usage(folder).free
    if size > 0.95 * free:
        raise ConfigError(f"{what} needs {size / 1e9:.1f} GB; {folder} has {free / 1e9:.1f} GB free "
                          "(free space, point the store elsewhere, or train more blocks: fewer frozen ones)")
    if budget is not None and used + size > budget:
        raise ConfigError(f"{what} needs {size / 1e9:.1f} GB; the store {folder} holds {used / 1e9:.1f} GB of its "
                          f"{budget / 1e9:.0f} GB budget (raise runtime.store_max_gb, or clear the store)")


def prefix_fingerprint(model: CxrClassifier, preprocess: PreprocessConfig, dataset: ShardDataset,
                       start: int | None = None, policy: Policy | None = None) -> str:
    """Key of the activations entering block ``start`` (default ``model.frozen_blocks``): the weights
    and buffers of blocks ``0..start-1``, the preprocessing, the input normalisation, the prepared
    images (in shard order), the precision and the torch/timm versions (their kernels make the values)."""
    start = model.frozen_blocks if start is None else start
    settings = preprocess.pixel_settings()
    digest = hashlib.sha256(json.dumps({
        "backbone": model.spec.name, "start": start, "preprocess": settings,
        "normalise": [dataset.mean, dataset.std, dataset.in_chans],
        "images": dataset.reader.table["image"].tolist(),
        "bf16": (policy or Policy()).precision == "bf16-mixed", "device": (policy or Policy()).device_type,
        "versions": [torch.__version__, timm.__version__]}, sort_keys=True).encode())
    for tensor in model.prefix_tensors(start):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _inputs(model: CxrClassifier, preprocess: PreprocessConfig, dataset: ShardDataset, store: Path,
            batch_size: int, policy: Policy | None = None):
    """Batches entering the first block to run, and that block: the deepest stored entry of the
    same frozen weights below ``model.frozen_blocks`` when there is one, else the images."""
    for base in range(model.frozen_blocks - 1, 0, -1):
        key = prefix_fingerprint(model, preprocess, dataset, base, policy)
        if (store / f"{key}.json").exists():
            stored = np.load(store / f"{key}.npy", mmap_mode="r")
            batches = (torch.from_numpy(np.array(stored[i:i + batch_size])) for i in range(0, len(stored), batch_size))
            return base, batches
    return 0, (x for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False))


@torch.no_grad()
def stored_prefix(model: CxrClassifier, datasets: Sequence[ShardDataset], preprocess: PreprocessConfig,
                  store: str | Path, batch_size: int = 64, policy: Policy | None = None,
                  record: dict | None = None, max_bytes: float | None = None) -> list[ActivationDataset]:
    """:func:`compute_prefix` through a folder shared by runs: the activations of *every* prepared
    image are computed once per key (:func:`prefix_fingerprint`) and each run reads its rows.

    Folds of a study share one entry per fine-tuning degree, and an entry is built from the deepest
    existing entry below it (a sweep from large to small k runs each frozen block about once). A
    killed run leaves no partial entry (written under a temporary name, renamed when complete).
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    first = datasets[0]
    key = prefix_fingerprint(model, preprocess, first, policy=policy)
    path, info = store / f"{key}.npy", store / f"{key}.json"
    with FileLock(str(store / f"{key}.lock")):  # parallel runs of a study: one computes, the others wait and read
        if not info.exists():
            _fill_entry(model, preprocess, first, store, key, batch_size, policy, record, max_bytes)
        elif record is not None:
            record.update({**stage_record(policy), "read_from_store": True})
    activations = np.load(path, mmap_mode="r")
    return [ActivationDataset(activations, ds.targets, rows=ds.rows,
                              masks=np.stack([ds.reader.mask(int(r)) for r in ds.rows]) if ds.with_masks else None)
            for ds in datasets]


def _fill_entry(model: CxrClassifier, preprocess: PreprocessConfig, first: ShardDataset, store: Path, key: str,
                batch_size: int, policy: Policy | None = None, record: dict | None = None,
                max_bytes: float | None = None) -> None:
    """Compute the activations of every prepared image entering the model's first trainable block."""
    path, info = store / f"{key}.npy", store / f"{key}.json"
    everything = ShardDataset(first.reader, first.class_names, mean=first.mean, std=first.std, in_chans=first.in_chans)
    was_training = model.training
    model.eval()
    run, _ = _prefix_pass(model, policy, record)
    base, batches = _inputs(model, preprocess, everything, store, batch_size, policy)
    tmp = store / f"{key}.{os.getpid()}.tmp.npy"
    target, offset = None, 0
    for x in batches:
        act = run(x, base, model.frozen_blocks)
        if target is None:  # the entry's size is known from the first batch: checked before anything is written
            size = act[0].numel() * 4 * len(everything)
            used = sum(f.stat().st_size for f in store.glob("*.npy"))
            _check_disk(store, size, f"a prefix-store entry ({len(everything)} images entering block "
                                     f"{model.frozen_blocks})", max_bytes, used)
            log.info("prefix store: computing a %.2f GB entry (%d images); the store holds %.1f GB", size / 1e9,
                     len(everything), used / 1e9)
            target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                               shape=(len(everything), *act.shape[1:]))
        target[offset:offset + len(act)] = act.numpy()
        offset += len(act)
    target.flush()
    del target
    os.replace(tmp, path)
    model.train(was_training)
    atomic_write_text(info, json.dumps({"backbone": model.spec.name, "start_block": model.frozen_blocks,
                                        "from_block": base, "images": len(everything)}) + "\n")
    log.info("prefix store: computed %s (%d images, from block %d)", path.name, len(everything), base)
