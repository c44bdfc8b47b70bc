"""Preprocessed shards: Parquet files of uint8 images with their labels.

Layout of ``OUT/shards/part-NNNNN.parquet`` (one row group per file):

========== ======== ===========================================================
column     type     content
========== ======== ===========================================================
image      string   source path, relative to OUT (absolute if on another drive)
label      string   class of the scheme (multi-label: the positive findings, ``|``-joined)
patient_id string   patient
source     string   source collection
view       string   view position
height     int32    stored array height (= size)
width      int32    stored array width (= size)
orig_h     int32    height of the source file
orig_w     int32    width of the source file
pixels     binary   ``height * width`` bytes, row-major uint8 grayscale
mask       binary   (``keep_mask`` only) the lung mask on the same grid, 0/1 bytes
unlabelled string   (multi-label only) findings of unknown value, ``|``-joined
========== ======== ===========================================================

The file's key-value metadata holds ``cxrlab.config`` (preprocessing settings) and
``cxrlab.skipped`` (JSON list of ``[image, reason]`` for the shard's inputs that failed), so a
finished shard file is the complete record of its part of the work.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxrlab.core.errors import ManifestError
from cxrlab.core import storage
from cxrlab.data.manifest import resolve_paths

SHARD_DIR = "shards"
SHARD_SCHEMA = pa.schema([
    ("image", pa.string()), ("label", pa.string()), ("patient_id", pa.string()),
    ("source", pa.string()), ("view", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
    ("orig_h", pa.int32()), ("orig_w", pa.int32()), ("pixels", pa.binary()),
])
META_COLUMNS = [f.name for f in SHARD_SCHEMA if f.name != "pixels"]
MASK_FIELD = pa.field("mask", pa.binary())
UNLABELLED_FIELD = pa.field("unlabelled", pa.string())


def shard_path(out_dir: str | Path, index: int) -> str | Path:
    """Path (or URL) of shard ``index`` under ``out_dir``."""
    return storage.join(out_dir, SHARD_DIR, f"part-{index:05d}.parquet")


def write_shard(path: str | Path, records: list[dict], skipped: list[tuple[str, str]], config: dict,
                artifacts: dict[str, int] | None = None) -> None:
    """Write one shard atomically (complete file or none).

    Args:
        path: Destination ``.parquet``.
        records: Dicts with the schema's columns; ``pixels`` as ``bytes``.
        skipped: ``(image, reason)`` of the shard's failed inputs.
        config: Preprocessing settings, stored in the metadata.
        artifacts: Pixels painted out per image (images with none are left out), stored too.
    """
    schema = SHARD_SCHEMA.append(MASK_FIELD) if config.get("keep_mask") else SHARD_SCHEMA
    if any(r.get("unlabelled") for r in records):
        schema = schema.append(UNLABELLED_FIELD)
    columns = {f.name: [r[f.name] for r in records] for f in schema}
    schema = schema.with_metadata({"cxrlab.config": json.dumps(config, sort_keys=True),
                                         "cxrlab.skipped": json.dumps(skipped),
                                         "cxrlab.artifacts": json.dumps(artifacts or {})})
    table = pa.table(columns, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, len(records)), compression="zstd")
    storage.write_bytes(path, buf.getvalue())


def read_shard_info(path: str | Path) -> tuple[int, list[tuple[str, str]], dict[str, int]]:
    """``(rows, skipped, artifact pixels per image)`` of a finished shard from its footer, without
    reading pixels.

    Raises:
        ManifestError: the file is not a readable shard.
    """
    try:
        meta = pq.read_metadata(io.BytesIO(storage.read_bytes(path)) if storage.is_url(path) else path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise ManifestError(f"{path}: not a readable shard ({err})") from err
    kv = meta.metadata or {}
    skipped = json.loads(kv.get(b"cxrlab.skipped", b"[]"))
    return meta.num_rows, [tuple(s) for s in skipped], json.loads(kv.get(b"cxrlab.artifacts", b"{}"))


IN_MEMORY_BYTES = 2 << 30  # prepared pixels up to 2 GiB are read into memory (faster); larger sets stream


class ShardReader:
    """Read the shards of a prepared folder (or of several, prepared alike): their metadata at once,
    their pixels into memory when they fit, else lazily, a shard at a time.

    Args:
        out_dir: The prepared folder(s).
        lazy: Stream the pixels (read a shard file when one of its images is asked for, keeping the
            ``cache_shards`` most recently used ones): memory independent of the number of images.
            Default: only when the pixels exceed :data:`IN_MEMORY_BYTES` (``CXRLAB_IN_MEMORY_GB``
            overrides it). Random access then rereads shards: train with :class:`ShardAwareSampler`.
        cache_shards: Shard files kept decoded per process when streaming.

    Attributes:
        table: ``pandas.DataFrame`` of the metadata columns (``image`` absolute).
        config: Preprocessing settings the shards were made with.
        lazy: Whether the pixels stream.
        shard_of: ``(N,) int64`` the shard file each row is in (what a shard-aware sampler groups by).

    Example:
        >>> reader = ShardReader("prepared/")  # doctest: +SKIP
        >>> image, row = reader[0]
        >>> image.shape, row["label"]
        ((224, 224), 'COVID-19')
    """

    def __init__(self, out_dir: str | Path | Sequence[str | Path], lazy: bool | None = None,
                 cache_shards: int = 64) -> None:
        folders = [Path(out_dir)] if isinstance(out_dir, str | Path) else [Path(f) for f in out_dir]
        tables, configs, self._files = [], [], []
        for folder in folders:  # several folders: e.g. each CV fold's validation images, read as one set
            files = sorted((folder / SHARD_DIR).glob("part-*.parquet"))
            if not files:
                raise ManifestError(f"{folder}: no shards found (run 'cxrlab prepare' first)")
            for f in files:
                handle = pq.ParquetFile(f)
                configs.append(json.loads((handle.schema_arrow.metadata or {}).get(b"cxrlab.config", b"{}")))
                if configs[-1] != configs[0]:
                    raise ManifestError(f"{folder}: prepared with other settings than {folders[0]}")
                names = [c for c in handle.schema_arrow.names if c not in ("pixels", "mask")]
                part = resolve_paths(handle.read(columns=names).to_pandas(), folder)
                tables.append(part.assign(_file=len(self._files), _row=np.arange(len(part))))
                self._files.append((f, "mask" in handle.schema_arrow.names))
        self.config = configs[0]
        meta = pd.concat(tables, ignore_index=True)
        self.shard_of = meta.pop("_file").to_numpy(np.int64)
        self._row_in_shard = meta.pop("_row").to_numpy(np.int64)
        self._shapes = list(zip(meta["height"].tolist(), meta["width"].tolist()))
        meta["unlabelled"] = meta["unlabelled"].fillna("") if "unlabelled" in meta else ""
        self.table = meta
        self._has_masks = all(has for _, has in self._files)
        size = float(meta["height"].astype(np.int64).mul(meta["width"]).sum()) * (2 if self._has_masks else 1)
        limit = float(os.environ.get("CXRLAB_IN_MEMORY_GB", IN_MEMORY_BYTES / 2**30)) * 2**30
        self.lazy = size > limit if lazy is None else lazy
        self._cache: OrderedDict[int, tuple[list, list | None]] = OrderedDict()
        self._cache_shards = max(1, cache_shards)
        if not self.lazy:
            pixels, masks = [], []
            for index in range(len(self._files)):
                shard_pixels, shard_masks = self._read(index)
                pixels += shard_pixels
                masks += shard_masks or []
            self._pixels, self._masks = pixels, (masks if self._has_masks else None)

    def _read(self, index: int) -> tuple[list, list | None]:
        """A shard file's pixels (and masks) as lists of bytes, in its row order."""
        path, has_mask = self._files[index]
        table = pq.read_table(path, columns=["pixels", "mask"] if has_mask else ["pixels"])
        return table.column("pixels").to_pylist(), table.column("mask").to_pylist() if has_mask else None

    def _shard(self, index: int) -> tuple[list, list | None]:
        """A streamed shard, from the per-process cache of recently used ones."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        self._cache[index] = self._read(index)
        while len(self._cache) > self._cache_shards:
            self._cache.popitem(last=False)
        return self._cache[index]

    def _bytes(self, index: int, masks: bool = False) -> bytes:
        if not self.lazy:
            return (self._masks if masks else self._pixels)[index]
        pixels, mask = self._shard(int(self.shard_of[index]))
        return (mask if masks else pixels)[int(self._row_in_shard[index])]

    def __len__(self) -> int:
        return len(self.table)

    def image(self, index: int) -> np.ndarray:
        """``(H, W) uint8`` image of row ``index`` (a read-only view of the stored bytes)."""
        return np.frombuffer(self._bytes(index), np.uint8).reshape(self._shapes[index])

    @property
    def has_masks(self) -> bool:
        """True when the shards hold lung masks (prepared with ``keep_mask``)."""
        return self._has_masks

    def mask(self, index: int) -> np.ndarray:
        """``(H, W) uint8`` 0/1 lung mask of row ``index``.

        Raises:
            ManifestError: the shards hold no masks.
        """
        if not self._has_masks:
            raise ManifestError("these shards hold no lung masks (prepare them with keep_mask)")
        return np.frombuffer(self._bytes(index, masks=True), np.uint8).reshape(self._shapes[index])

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict]:
        return self.image(index), self.table.iloc[index].to_dict()

    def images(self) -> np.ndarray:
        """All images stacked as ``(N, H, W) uint8`` (all shards share one size)."""
        return np.stack([self.image(i) for i in range(len(self))]) if len(self) else np.zeros((0, 0, 0), np.uint8)

    def select(self, images: pd.Series) -> np.ndarray:
        """Row indices whose ``image`` is in ``images`` (absolute paths), in the given order."""
        lookup = {p: i for i, p in enumerate(self.table["image"])}
        return np.array([lookup[p] for p in images if p in lookup], dtype=np.int64)
