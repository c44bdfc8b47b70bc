"""Prepared shards as a PyTorch dataset: what a training data loader reads directly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrlab.core.errors import ConfigError, ManifestError
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

    Returns (per item):
        ``(x, y)``: ``x`` is ``(in_chans, H, W) float32``, ``(v / 255 - mean) / std`` (plus the mask
        channel); ``y`` an ``int64`` class index.

    Raises:
        ConfigError: a label is not in ``class_names``.
        ManifestError: requested images are not in the shards, or masks are asked of shards without.
    """

    def __init__(self, shards: str | Path | ShardReader, class_names: Sequence[str], *,
                 images: Sequence[str] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, in_chans: int = 3,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None, with_masks: bool = False) -> None:
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
        unknown = sorted(set(labels) - set(self.class_names))
        if unknown:
            raise ConfigError(f"class_names: shard labels {unknown} are not among {list(self.class_names)}")
        index = {c: i for i, c in enumerate(self.class_names)}
        self.targets = np.array([index[label] for label in labels], dtype=np.int64)
        if len(mean) not in (1, in_chans) or len(std) not in (1, in_chans):
            raise ConfigError(f"mean/std: need 1 or {in_chans} values for in_chans={in_chans}, "
                              f"got {len(mean)} and {len(std)}")
        self.mean, self.std, self.in_chans, self.transform = tuple(mean), tuple(std), in_chans, transform

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
