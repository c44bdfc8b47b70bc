"""Distributed data-parallel training on Lightning: which process this is, the per-rank loaders, and
validation predictions gathered from every rank.

``devices: N`` (and ``num_nodes: M``) with ``strategy: ddp`` trains N x M processes, each on its share of
every batch; Lightning launches them (or ``torchrun`` / SLURM does: Lightning reads their
environment). ``batch_size`` is per process, as in Lightning: the global batch is N x M x batch_size.
Each rank's training share comes from a sampler seeded by the seed and the epoch (so a resumed run
replays it), the validation images are split across ranks without repeats, and the metrics that
choose the kept epoch are computed on all of them, gathered, so every rank takes the same decisions.
Only rank 0 writes files (the run folder, ``metrics.csv``, ``model.pt``, MLflow, plots).
"""

from __future__ import annotations

import os

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from cxrlab.preprocess import ShardAwareSampler
from cxrlab.train.config import TrainConfig
from cxrlab.train.loading import loading

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_rank_zero(config: TrainConfig | None = None) -> bool:
    """Whether this process is rank 0 of a data-parallel run (or ``config``'s run is not one): the one
    that writes files. Read from the environment, so it holds before the process group exists
    (Lightning's launcher, torchrun and SLURM set these variables for every process they start). A
    run that is not data-parallel writes whatever its environment says: study workers started as
    ``srun`` tasks carry ``SLURM_PROCID`` 1, 2, ... and each runs runs of its own."""
    if config is not None and not is_distributed(config):
        return True
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def is_distributed(config: TrainConfig) -> bool:
    return config.runtime.strategy == "ddp"  # the config makes it ddp for several devices or machines


class _RankShare(torch.utils.data.Sampler[int]):
    """Rank ``rank``'s share (every ``world``-th index) of an epoch-seeded sampler's order."""

    def __init__(self, sampler: ShardAwareSampler, rank: int, world: int) -> None:
        self.sampler, self.rank, self.world = sampler, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, len(self.sampler), self.world))

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return iter(self.sampler.order()[self.rank::self.world].tolist())


def distributed_loader(dataset, config: TrainConfig, train: bool, seed: int, rank: int, world: int,
                       device_type: str = "cpu") -> DataLoader:
    """Rank ``rank`` of ``world``'s loader: a seeded, epoch-dependent shuffle of its share for training
    (class-balanced draws when ``class_balance: sampler``; shard-aware for streamed shards), and an
    unrepeated share of the validation images; workers and pinned memory by device (:func:`loading`)."""
    common = {"batch_size": config.optim.batch_size, **loading(config, device_type)}
    if not train:
        return DataLoader(dataset, sampler=UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank,
                                                                        shuffle=False), **common)
    weights = None
    if config.data.class_balance == "sampler":
        targets = np.asarray(dataset.targets)
        weights = 1.0 / np.bincount(targets)[targets]
    if getattr(dataset, "streaming", False):
        sampler = _RankShare(ShardAwareSampler(dataset.shard_of, seed, weights=weights), rank, world)
    elif weights is not None:
        draws = WeightedRandomSampler(weights.tolist(), len(weights), replacement=True,
                                      generator=torch.Generator().manual_seed(seed))  # the same draws on every rank
        sampler = DistributedSamplerWrapper(draws, num_replicas=world, rank=rank, shuffle=False, seed=seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    share = len(sampler)
    drop_last = share % config.optim.batch_size == 1 and share > 1  # BatchNorm cannot train on one image
    return DataLoader(dataset, sampler=sampler, drop_last=drop_last, **common)


class RunData(L.LightningDataModule):
    """A phase's training and validation sets, turned into per-rank loaders once the process group
    exists (Lightning calls these in every process it runs)."""

    def __init__(self, train_set, val_set, config: TrainConfig, seed: int) -> None:
        super().__init__()
        self.train_set, self.val_set, self.config, self.seed = train_set, val_set, config, seed

    def train_dataloader(self) -> DataLoader:
        return distributed_loader(self.train_set, self.config, True, self.seed, self.trainer.global_rank,
                                  self.trainer.world_size, self.trainer.strategy.root_device.type)

    def val_dataloader(self) -> DataLoader:
        return distributed_loader(self.val_set, self.config, False, self.seed, self.trainer.global_rank,
                                  self.trainer.world_size, self.trainer.strategy.root_device.type)


def gather(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's validation logits and targets, joined (as they are without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return logits, targets
    world = torch.distributed.get_world_size()
    if world == 1:
        return logits, targets
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, (logits.cpu(), targets.cpu()))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
