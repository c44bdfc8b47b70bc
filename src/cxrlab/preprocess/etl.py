"""The prepare job: manifest → preprocessed shards, resumable, with a report of skipped inputs.

Work is cut into shards of ``shard_size`` images. A shard is written atomically by whichever
engine processes it (local process pool or Spark tasks run the same :func:`run_shard`), so
both engines give identical files, and a rerun after an interruption only does the shards
whose file does not exist yet. Sources and ``OUT`` may be local paths or fsspec URLs
(:mod:`cxrlab.core.storage`: ``s3://``, ``gs://``, ``hdfs://``, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxrlab.core.defaults import DEFAULT_SHARD_SIZE
from cxrlab.core.errors import ConfigError, InvalidImageError
from cxrlab.core import storage
from cxrlab.core.runtime import default_workers, exit_with_parent, tune_allocator
from cxrlab.data.manifest import Manifest, write_table
from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.preprocess.pipeline import Preprocessor
from cxrlab.preprocess.shards import SHARD_DIR, read_shard_info, shard_path, write_shard

log = logging.getLogger(__name__)

Engine = Literal["local", "spark"]
PLAN_FILE = "plan.json"
REPORT_FILE = "prepare_report.json"
SKIPPED_FILE = "skipped.csv"
_ROW_KEYS = ("image", "label", "patient_id", "source", "view", "mask")


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: preprocess ``rows`` into the shard file ``out_path``."""

    index: int
    rows: tuple[dict, ...]
    out_path: str
    out_dir: str
    config: dict


@dataclass(frozen=True)
class ShardResult:
    """What one shard produced."""

    index: int
    written: int
    skipped: tuple[tuple[str, str], ...]
    seconds: float = 0.0
    artifacts: dict[str, int] = field(default_factory=dict)


def run_shard(task: ShardTask) -> ShardResult:
    """Preprocess one shard's images and write the shard file; bad images are skipped.

    Never raises for a bad image: its path and reason go into the shard's ``skipped`` list.
    """
    start = time.perf_counter()
    config = PreprocessConfig.from_dict(task.config)
    pre = Preprocessor(config)
    records, skipped, artifacts = [], [], {}
    for row in task.rows:
        try:
            out = pre(row["image"], row.get("mask") or None)
        except InvalidImageError as err:
            skipped.append((row["image"], err.reason))
            continue
        except Exception as err:  # a decoder bug must not kill a long run; report it instead
            skipped.append((row["image"], f"unexpected {type(err).__name__}: {err}"))
            continue
        records.append({
            "image": storage.relative(row["image"], task.out_dir),
            "label": row["label"], "unlabelled": row.get("unlabelled", ""), "patient_id": row["patient_id"],
            "source": row["source"],
            "view": row.get("view", ""), "height": out.pixels.shape[0], "width": out.pixels.shape[1],
            "orig_h": out.orig_height, "orig_w": out.orig_width, "pixels": out.pixels.tobytes(),
            "mask": None if out.mask is None else out.mask.astype(np.uint8).tobytes(),
        })
        if out.artifact_pixels:
            artifacts[row["image"]] = out.artifact_pixels
    write_shard(task.out_path, records, skipped, task.config, artifacts)
    return ShardResult(task.index, len(records), tuple(skipped), time.perf_counter() - start, artifacts)


def _fingerprint(rows: list[dict]) -> str:
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def plan_shards(manifest: Manifest, out_dir: Path, config: PreprocessConfig, shard_size: int,
                overwrite: bool = False) -> list[ShardTask]:
    """Cut the manifest into shard tasks and record (or check) ``plan.json``.

    Raises:
        ConfigError: ``out_dir`` holds shards of another input or other settings (unless
            ``overwrite``), or ``shard_size`` < 1.
    """
    if shard_size < 1:
        raise ConfigError(f"shard_size: must be >= 1, got {shard_size}")
    table = manifest.table.sort_values("image").reset_index(drop=True)
    rows = [{k: str(r.get(k, "") or "") for k in _ROW_KEYS} for r in table.to_dict("records")]
    for row, record in zip(rows, table.to_dict("records")):  # multi-label: the findings of unknown value
        if record.get("unlabelled"):  # (only where set: a plan without them keeps its fingerprint)
            row["unlabelled"] = str(record["unlabelled"])
    plan = {"config": config.to_dict(), "shard_size": shard_size, "class_names": list(manifest.class_names),
            "images": len(rows), "fingerprint": _fingerprint(rows)}
    plan_file = storage.join(out_dir, PLAN_FILE)
    if storage.exists(plan_file) and not overwrite:
        old = json.loads(storage.read_bytes(plan_file))
        if isinstance(old.get("config"), dict):  # settings added since keep their defaults
            old["config"] = {**PreprocessConfig().to_dict(), **old["config"]}
        diff = [k for k in plan if old.get(k) != plan[k]]
        if diff:
            raise ConfigError(
                f"{out_dir}: holds shards prepared from other input or settings (differs in "
                f"{', '.join(diff)}); choose a new --out or pass --overwrite")
    if overwrite:
        _remove_shards(out_dir)
    if not storage.is_url(out_dir):
        storage.local(out_dir).mkdir(parents=True, exist_ok=True)
    storage.write_bytes(plan_file, (json.dumps(plan, indent=2, sort_keys=True) + "\n").encode())
    return [ShardTask(i, tuple(rows[start:start + shard_size]), str(shard_path(out_dir, i)),
                      str(out_dir), config.to_dict())
            for i, start in enumerate(range(0, len(rows), shard_size))]


def _remove_shards(out_dir: storage.Location) -> None:
    if storage.is_url(out_dir):
        fs, inner = storage.filesystem(str(out_dir))
        if fs.exists(f"{inner}/{SHARD_DIR}"):
            fs.rm(f"{inner}/{SHARD_DIR}", recursive=True)
    else:
        shutil.rmtree(storage.local(out_dir) / SHARD_DIR, ignore_errors=True)


def _worker_init() -> None:
    tune_allocator()
    exit_with_parent()


def run_local(tasks: list[ShardTask], workers: int, progress: Callable[[ShardResult], None]) -> list[ShardResult]:
    """Run shard tasks in this process (``workers == 1``) or a process pool."""
    results = []
    if workers <= 1 or len(tasks) <= 1:
        tune_allocator()
        for task in tasks:
            results.append(run_shard(task))
            progress(results[-1])
        return results
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
        futures = [pool.submit(run_shard, t) for t in tasks]
        for future in as_completed(futures):
            results.append(future.result())
            progress(results[-1])
    return results


@dataclass
class PrepareSummary:
    """Outcome of :func:`prepare`: counts and every input left out, with reasons."""

    out_dir: str
    images: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    class_counts: dict = field(default_factory=dict)
    source_counts: dict = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    artifacts: dict[str, int] = field(default_factory=dict)  # image → pixels painted out (inpaint only)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def _collect_counts(out_dir: storage.Location) -> tuple[dict, dict]:
    import io

    import pyarrow.parquet as pq

    frames = [pq.read_table(io.BytesIO(storage.read_bytes(f)), columns=["label", "source"]).to_pandas()
              for f in storage.glob(storage.join(out_dir, SHARD_DIR), "part-*.parquet")]
    table = pd.concat(frames) if frames else pd.DataFrame(columns=["label", "source"])
    counts = table.groupby(["label", "source"]).size()
    by_class = {str(k): int(v) for k, v in table["label"].value_counts().sort_index().items()}
    by_source = {str(lbl): {str(s): int(n) for s, n in counts[lbl].items()} for lbl in by_class}
    return by_class, by_source


def prepare(manifest: Manifest, out_dir: str | Path, config: PreprocessConfig, *, engine: Engine = "local",
            workers: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE, spark_master: str | None = None,
            spark_conf: dict[str, str] | None = None, overwrite: bool = False,
            progress: Callable[[int], None] | None = None) -> PrepareSummary:
    """Preprocess every image of ``manifest`` into shards under ``out_dir``.

    Resumable: shards already on disk are kept (never rewritten) and their counts reused.
    Bad images are skipped and reported; nothing is lost when one fails.

    Args:
        manifest: Images to prepare (its ``skipped`` items go into the report too).
        out_dir: Output folder (shards, ``plan.json``, ``prepare_report.json``, ``skipped.csv``).
        config: Preprocessing settings.
        engine: ``local`` (process pool) or ``spark`` (PySpark job).
        workers: Processes (local) or cores (Spark ``local[N]``); default: all CPUs.
        shard_size: Images per shard.
        spark_master: Spark master URL (default ``local[workers]``).
        spark_conf: Spark settings for the session (``spark.executor.memory``, ``spark.pyspark.python``, ...).
        overwrite: Delete existing shards first.
        progress: Called with the number of images of each finished shard.

    Returns:
        A :class:`PrepareSummary` (also written to ``prepare_report.json``).

    Raises:
        ConfigError: bad settings or an ``out_dir`` prepared differently.
        MissingDependencyError: ``engine="spark"`` without Java 17+.
    """
    start = time.perf_counter()
    out = out_dir if storage.is_url(out_dir) else storage.local(out_dir).resolve()
    workers = workers or default_workers()
    tasks = plan_shards(manifest, out, config, shard_size, overwrite)
    summary = PrepareSummary(str(out))
    pending = []
    for task in tasks:
        if storage.exists(task.out_path):
            written, skipped, artifacts = read_shard_info(task.out_path)
            summary.shards_reused += 1
            summary.images += written
            summary.skipped.extend(skipped)
            summary.artifacts.update(artifacts)
            if progress:
                progress(len(task.rows))
        else:
            pending.append(task)

    def on_result(result: ShardResult) -> None:
        if progress:
            progress(result.written + len(result.skipped))

    if engine == "local":
        results = run_local(pending, workers, on_result)
    elif engine == "spark":
        from cxrlab.preprocess.etl_spark import run_spark

        results = run_spark(pending, spark_master or f"local[{workers}]", on_result, spark_conf) if pending else []
    else:
        raise ConfigError(f"engine: choose local or spark, got {engine!r}")
    for result in results:
        summary.shards_written += 1
        summary.images += result.written
        summary.skipped.extend(result.skipped)
        summary.artifacts.update(result.artifacts)
    summary.skipped = sorted(set(summary.skipped) | {(s.image, s.reason) for s in manifest.skipped})
    summary.class_counts, summary.source_counts = _collect_counts(out)
    summary.seconds = round(time.perf_counter() - start, 3)
    _write_report(out, summary)
    return summary


def _write_report(out: storage.Location, summary: PrepareSummary) -> None:
    storage.write_bytes(storage.join(out, REPORT_FILE), (json.dumps(summary.to_dict(), indent=2) + "\n").encode())
    skipped = pd.DataFrame(summary.skipped, columns=["image", "reason"])
    if storage.is_url(out):
        storage.write_bytes(storage.join(out, SKIPPED_FILE), skipped.to_csv(index=False).encode())
    else:
        write_table(skipped, storage.local(out) / SKIPPED_FILE)

