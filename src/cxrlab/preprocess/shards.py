"""Preprocessed shards: Parquet files of uint8 images with their labels.

Layout of ``OUT/shards/part-NNNNN.parquet`` (one row group per file):

========== ======== ===========================================================
column     type     content
========== ======== ===========================================================
image      string   source path, relative to OUT (absolute if on another drive)
label      string   class of the scheme
patient_id string   patient
source     string   source collection
view       string   view position
height     int32    stored array height (= size)
width      int32    stored array width (= size)
orig_h     int32    height of the source file
orig_w     int32    width of the source file
pixels     binary   ``height * width`` bytes, row-major uint8 grayscale
mask       binary   (``keep_mask`` only) the lung mask on the same grid, 0/1 bytes
========== ======== ===========================================================

The file's key-value metadata holds ``cxrlab.config`` (preprocessing settings) and
``cxrlab.skipped`` (JSON list of ``[image, reason]`` for the shard's inputs that failed), so a
finished shard file is the complete record of its part of the work.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxrlab.core.errors import ManifestError
from cxrlab.core.io import atomic_write_bytes
from cxrlab.data.manifest import resolve_paths

SHARD_DIR = "shards"
SHARD_SCHEMA = pa.schema([
    ("image", pa.string()), ("label", pa.string()), ("patient_id", pa.string()),
    ("source", pa.string()), ("view", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
    ("orig_h", pa.int32()), ("orig_w", pa.int32()), ("pixels", pa.binary()),
])
META_COLUMNS = [f.name for f in SHARD_SCHEMA if f.name != "pixels"]
MASK_FIELD = pa.field("mask", pa.binary())


def shard_path(out_dir: str | Path, index: int) -> Path:
    """Path of shard ``index`` under ``out_dir``."""
    return Path(out_dir) / SHARD_DIR / f"part-{index:05d}.parquet"


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
    columns = {f.name: [r[f.name] for r in records] for f in schema}
    schema = schema.with_metadata({"cxrlab.config": json.dumps(config, sort_keys=True),
                                         "cxrlab.skipped": json.dumps(skipped),
                                         "cxrlab.artifacts": json.dumps(artifacts or {})})
    table = pa.table(columns, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, len(records)), compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def read_shard_info(path: str | Path) -> tuple[int, list[tuple[str, str]], dict[str, int]]:
    """``(rows, skipped, artifact pixels per image)`` of a finished shard from its footer, without
    reading pixels.

    Raises:
        ManifestError: the file is not a readable shard.
    """
    try:
        meta = pq.read_metadata(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise ManifestError(f"{path}: not a readable shard ({err})") from err
    kv = meta.metadata or {}
    skipped = json.loads(kv.get(b"cxrlab.skipped", b"[]"))
    return meta.num_rows, [tuple(s) for s in skipped], json.loads(kv.get(b"cxrlab.artifacts", b"{}"))


class ShardReader:
    """Read every shard of a prepared folder (or of several, prepared alike) into memory.

    Attributes:
        table: ``pandas.DataFrame`` of the metadata columns (``image`` absolute).
        config: Preprocessing settings the shards were made with.

    Example:
        >>> reader = ShardReader("prepared/")  # doctest: +SKIP
        >>> image, row = reader[0]
        >>> image.shape, row["label"]
        ((224, 224), 'COVID-19')
    """

    def __init__(self, out_dir: str | Path | Sequence[str | Path]) -> None:
        folders = [Path(out_dir)] if isinstance(out_dir, str | Path) else [Path(f) for f in out_dir]
        pixels, masks, shapes, tables, configs = [], [], [], [], []
        for folder in folders:  # several folders: e.g. each CV fold's validation images, read as one set
            files = sorted((folder / SHARD_DIR).glob("part-*.parquet"))
            if not files:
                raise ManifestError(f"{folder}: no shards found (run 'cxrlab prepare' first)")
            parts = [pq.read_table(f) for f in files]
            arrow = pa.concat_tables([t.replace_schema_metadata(None) for t in parts])
            configs.append(json.loads((parts[0].schema.metadata or {}).get(b"cxrlab.config", b"{}")))
            if configs[-1] != configs[0]:
                raise ManifestError(f"{folder}: prepared with other settings than {folders[0]}")
            pixels += arrow.column("pixels").to_pylist()
            masks.append(arrow.column("mask").to_pylist() if "mask" in arrow.column_names else None)
            shapes += list(zip(arrow.column("height").to_pylist(), arrow.column("width").to_pylist()))
            bulky = [c for c in ("pixels", "mask") if c in arrow.column_names]
            tables.append(resolve_paths(arrow.drop_columns(bulky).to_pandas(), folder))
        self.config = configs[0]
        self._pixels, self._shapes = pixels, shapes
        self._masks = None if any(m is None for m in masks) else [m for part in masks for m in part]
        self.table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]

    def __len__(self) -> int:
        return len(self._pixels)

    def image(self, index: int) -> np.ndarray:
        """``(H, W) uint8`` image of row ``index`` (a read-only view of the stored bytes)."""
        return np.frombuffer(self._pixels[index], np.uint8).reshape(self._shapes[index])

    @property
    def has_masks(self) -> bool:
        """True when the shards hold lung masks (prepared with ``keep_mask``)."""
        return self._masks is not None

    def mask(self, index: int) -> np.ndarray:
        """``(H, W) uint8`` 0/1 lung mask of row ``index``.

        Raises:
            ManifestError: the shards hold no masks.
        """
        if self._masks is None:
            raise ManifestError("these shards hold no lung masks (prepare them with keep_mask)")
        return np.frombuffer(self._masks[index], np.uint8).reshape(self._shapes[index])

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict]:
        return self.image(index), self.table.iloc[index].to_dict()

    def images(self) -> np.ndarray:
        """All images stacked as ``(N, H, W) uint8`` (all shards share one size)."""
        return np.stack([self.image(i) for i in range(len(self))]) if len(self) else np.zeros((0, 0, 0), np.uint8)

    def select(self, images: pd.Series) -> np.ndarray:
        """Row indices whose ``image`` is in ``images`` (absolute paths), in the given order."""
        lookup = {p: i for i, p in enumerate(self.table["image"])}
        return np.array([lookup[p] for p in images if p in lookup], dtype=np.int64)
