"""Prepared shards as a PyTorch dataset: what a training data loader reads directly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrlab.core.errors import ConfigError, ManifestError
from cxrlab.data.findings import finding_targets
from cxrlab.preprocess.shards import ShardReader
from cxrlab.preprocess.transforms import to_model_input

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ShardDataset(Dataset):
    """Images of prepared shards as normalised tensors with class indices.

    Args:
        shards: A prepared folder or an open :class:`ShardReader` (shared, not copied).
        class_names: Classes in model-output order; a row's label gives its index.
        images: Absolute image paths to use (e.g. one side of ``splits.csv``), in order;
            default: every row. Paths not in the shards raise, naming how many are missing.
        mean: Per-channel normalisation mean (the backbone's; ImageNet's by default).
        std: Per-channel normalisation standard deviation.
        in_chans: Channels the model expects (the grayscale image is replicated).
        transform: Optional augmentation on the ``(H, W) uint8`` image (training only); with masks it
            gets ``(H, W, 2)``, image and mask (0/255) stacked, so both move together.
        with_masks: Append each image's stored lung mask as a last 0/1 channel.
        multilabel: ``class_names`` are independent findings: a row's ``label`` lists its positive
            ones (``|``-joined) and ``unlabelled`` those of unknown value.

    Returns (per item):
        ``(x, y)``: ``x`` is ``(in_chans, H, W) float32``, ``(v / 255 - mean) / std`` (plus the mask
        channel); ``y`` an ``int64`` class index, or for ``multilabel`` a ``(F,) float32`` of 1 / 0
        with NaN where the finding is unknown.

    Raises:
        ConfigError: a label is not in ``class_names``.
        ManifestError: requested images are not in the shards, or masks are asked of shards without.
    """

    def __init__(self, shards: str | Path | ShardReader, class_names: Sequence[str], *,
                 images: Sequence[str] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, in_chans: int = 3,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None, with_masks: bool = False,
                 multilabel: bool = False) -> None:
        self.reader = shards if isinstance(shards, ShardReader) else ShardReader(shards)
        if with_masks and not self.reader.has_masks:
            raise ManifestError("the prepared shards hold no lung masks; prepare them with keep_mask "
                                "(a model with lung attention needs a mask per image)")
        self.with_masks = with_masks
        self.class_names = tuple(class_names)
        if images is None:
            self.rows = np.arange(len(self.reader))
        else:
            self.rows = self.reader.select(list(images))
            if len(self.rows) != len(images):
                raise ManifestError(f"{len(images) - len(self.rows)} requested image(s) are not in the shards "
                                    "(skipped while preparing, or prepared from another input)")
        labels = self.reader.table["label"].to_numpy()[self.rows]
        self.multilabel = multilabel
        if multilabel:
            targets, known = finding_targets(labels, self.reader.table["unlabelled"].to_numpy()[self.rows],
                                             self.class_names)
            self.targets = np.where(known, targets, np.nan).astype(np.float32)
        else:
            unknown = sorted(set(labels) - set(self.class_names))
            if unknown:
                raise ConfigError(f"class_names: shard labels {unknown} are not among {list(self.class_names)}")
            index = {c: i for i, c in enumerate(self.class_names)}
            self.targets = np.array([index[label] for label in labels], dtype=np.int64)
        if len(mean) not in (1, in_chans) or len(std) not in (1, in_chans):
            raise ConfigError(f"mean/std: need 1 or {in_chans} values for in_chans={in_chans}, "
                              f"got {len(mean)} and {len(std)}")
        self.mean, self.std, self.in_chans, self.transform = tuple(mean), tuple(std), in_chans, transform

    @property
    def shard_of(self) -> np.ndarray:
        """``(len,)`` the shard file each item is in (for :class:`ShardAwareSampler`)."""
        return self.reader.shard_of[self.rows]

    @property
    def streaming(self) -> bool:
        """Whether the pixels stream from the shard files (see :class:`ShardReader`)."""
        return self.reader.lazy

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[i])
        image = self.reader.image(row)
        mask = self.reader.mask(row) if self.with_masks else None
        if self.transform is not None and mask is not None:
            moved = self.transform(np.dstack([image, mask * np.uint8(255)]))
            image, mask = moved[..., 0], moved[..., 1] > 127
        elif self.transform is not None:
            image = self.transform(image)
        x = to_model_input(np.ascontiguousarray(image), self.mean, self.std, self.in_chans, mask)
        return torch.from_numpy(x), torch.tensor(self.targets[i])


class ShardAwareSampler(torch.utils.data.Sampler[int]):
    """Shuffled indices that visit a few shards at a time: what streamed shards need (random access
    would reread a shard file per image).

    Each epoch the shards are put in a random order and taken ``buffer`` at a time; the images of
    those shards are shuffled together and yielded before the next group starts. With ``weights``
    (class-balanced sampling) each group draws its own number of images with replacement, in
    proportion to the weights. The order is a function of ``(seed, epoch)`` alone (:meth:`set_epoch`,
    which Lightning calls every epoch), so a resumed run replays it; :meth:`state_dict` /
    :meth:`load_state_dict` carry the position inside an epoch.

    Args:
        shard_of: ``(N,)`` the shard each item is in (``ShardDataset.shard_of``).
        seed: Seed.
        buffer: Shards shuffled together (their images are in memory at once, per worker).
        weights: Optional per-item sampling weights.
    """

    def __init__(self, shard_of: Sequence[int] | np.ndarray, seed: int = 0, buffer: int = 16,
                 weights: Sequence[float] | np.ndarray | None = None) -> None:
        self.shard_of = np.asarray(shard_of, dtype=np.int64)
        self.seed, self.buffer, self.epoch, self._skip = seed, max(1, buffer), 0, 0
        self.weights = None if weights is None else np.asarray(weights, dtype=float)

    def __len__(self) -> int:
        return len(self.shard_of)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """This epoch's indices, in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        shards = rng.permutation(np.unique(self.shard_of))
        parts = []
        for start in range(0, len(shards), self.buffer):
            members = np.flatnonzero(np.isin(self.shard_of, shards[start:start + self.buffer]))
            if self.weights is None:
                parts.append(rng.permutation(members))
            else:
                p = self.weights[members] / self.weights[members].sum()
                parts.append(rng.choice(members, size=len(members), replace=True, p=p))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def __iter__(self):
        order, self._skip = self.order()[self._skip:], 0
        return iter(order.tolist())

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict, consumed: int = 0) -> None:
        """Resume at ``state``'s epoch, ``consumed`` items into it."""
        self.epoch, self.seed, self._skip = int(state["epoch"]), int(state["seed"]), int(consumed)
