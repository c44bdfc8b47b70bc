"""A study's runs as jobs: each trained here or in a worker process (spawned, with its share of the CPU
threads), a failure recorded in its folder and never the study's end; the order that lets a k-sweep
reuse each frozen prefix."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import multiprocessing
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cxrlab.core.io import atomic_write_text
from cxrlab.core.logging import configure_logging, quiet_lightning
from cxrlab.core.run_folder import CHECKPOINTS, FAILED, LAST_CHECKPOINT, SUMMARY
from cxrlab.core.runtime import default_workers, exit_with_parent
from cxrlab.data import write_splits
from cxrlab.study.config import StudyConfig
from cxrlab.study.plan import Cell, run_config
from cxrlab.train import train

log = logging.getLogger("cxrlab.study.runner")  # the study's messages, whichever module says them


def run_status(run_dir: Path) -> tuple[str, dict | None, str | None]:
    summary, failed = run_dir / SUMMARY, run_dir / FAILED
    if summary.exists():
        data = json.loads(summary.read_text())
        return ("done" if data.get("status") == "ok" else "failed"), data, data.get("status")
    if failed.exists():
        return "failed", None, json.loads(failed.read_text()).get("error")
    return "todo", None, None

def record_failure(run_dir: Path, error: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / FAILED, json.dumps({"error": error}) + "\n")

def run_jobs(work: list[tuple[tuple, tuple]], workers: int,
              finished: Callable[[tuple, tuple[dict | None, str | None]], None]) -> None:
    """Train each job (``(job, train_run's arguments)``), here or in ``workers`` processes, and call
    ``finished(job, outcome)`` in this process as each one ends."""
    if workers <= 1 or len(work) <= 1:
        for job, arguments in work:
            finished(job, train_run(*arguments))
        return
    threads = max(1, default_workers() // workers)
    context = multiprocessing.get_context("spawn")  # fork after torch and MLflow threads is unsafe
    slots = context.Value("i", 0)  # each worker takes the next slot: its GPU on a multi-GPU machine
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=worker_init,
                                                initargs=(threads, logging.getLogger("cxrlab").level, slots,
                                                          gpu_count())) as pool:
        futures = {pool.submit(train_run, *arguments): job for job, arguments in work}
        for future in concurrent.futures.as_completed(futures):
            try:
                outcome = future.result()
            except Exception as err:  # noqa: BLE001 -- a worker that died (memory): record, go on
                outcome = (None, f"{type(err).__name__}: {err}")
            finished(futures[future], outcome)

def gpu_count() -> int:
    """CUDA devices this process sees (0 without a GPU; asked without creating a CUDA context)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_gpu(slot: int, count: int, visible: str | None) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` of worker ``slot`` on a machine with ``count`` GPUs: one each, in
    turn, out of the ones the parent may use (``visible``, its own ``CUDA_VISIBLE_DEVICES``); None
    without a GPU. Several workers on one node all took ``cuda:0`` before."""
    if count <= 0:
        return None
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(count)]
    return ids[slot % len(ids)] if ids else None


def worker_init(threads: int, level: int, slots=None, gpus: int = 0) -> None:
    """A worker process: its share of the CPU threads and one GPU of its own (:func:`worker_gpu`);
    warnings only (the parent reports progress)."""
    import os

    if slots is not None and gpus:
        with slots.get_lock():
            slot, slots.value = slots.value, slots.value + 1
        gpu = worker_gpu(slot, gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if gpu is not None:  # before CUDA starts in this process: "cuda"/"auto" is then that GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    exit_with_parent()
    torch.set_num_threads(threads)
    configure_logging()
    logging.getLogger("cxrlab").setLevel(max(level, logging.WARNING))
    quiet_lightning()

def execution_order(plan: list[Cell]) -> list[Cell]:
    """Cells with more trainable blocks (fewer frozen ones) first: the prefix store then builds each
    deeper entry from the previous one, so a k-sweep runs each frozen block about once per image."""
    def trainable(cell: Cell) -> float:
        k = cell.settings.get("fine_tune")
        return float("inf") if k == "all" else (k if isinstance(k, int) else -1)

    return sorted(plan, key=trainable, reverse=True)

def train_run(config: StudyConfig, cell: Cell, part: str, run_dir: Path, split: pd.DataFrame, out: Path,
               uri: str, parent: str, repeat: int = 0,
               overrides: dict | None = None) -> tuple[dict | None, str | None]:
    """Train one run on ``split`` (``part``: ``fold0``…, ``fold0-repeat1``, ``without-<source>`` or
    ``refit``) with seed ``config.seed + repeat`` and ``overrides`` over the cell's settings; record a
    failure."""
    if run_dir.exists() and not (run_dir / CHECKPOINTS / LAST_CHECKPOINT).exists():
        shutil.rmtree(run_dir)  # a run interrupted before its first epoch ended: start it again
    run_dir.mkdir(parents=True, exist_ok=True)  # one with a checkpoint resumes from it (cxrlab.train)
    tags = {"mlflow.parentRunId": parent, "cxrlab.study": config.name, "cxrlab.cell": cell.id, "cxrlab.part": part}
    try:
        train_config = run_config(config.model_copy(update={"mlflow_uri": uri}), cell, run_dir, out / "shared", tags,
                                  repeat, overrides)
        write_splits(split, {"study": config.name, "cell": cell.id, "part": part}, run_dir)
        result = train(train_config, screening=False)  # the exported run gets its reference then
        return result.summary, None
    except Exception as err:  # noqa: BLE001 -- one bad cell (setting, NaN, bug, memory) must not stop the study
        message = f"{type(err).__name__}: {err}"
        log.warning("study: %s %s failed: %s", cell.label(), part, message)
        log.debug("study: traceback of the failure", exc_info=True)
        if not (run_dir / SUMMARY).exists():
            record_failure(run_dir, message)
        return None, message
