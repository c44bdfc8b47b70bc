"""A run's folder, written the same way by every job that makes one (a training run, a segmenter,
the runs of studies and searches): ``config.yaml`` first, ``summary.json`` last and atomically, so
that its presence (with ``status: ok``) marks a finished run that a rerun reuses, with the wall
time of the whole job in ``timing.seconds_total``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text

CONFIG, SUMMARY = "config.yaml", "summary.json"
MODEL = "model.pt"  # the self-contained model file every command reads


def model_file(run: str | Path) -> Path:
    """The model file of ``run``: ``RUN/model.pt`` for a run folder, else ``run`` itself.

    Raises:
        ConfigError: neither a run folder with a model file nor a file.
    """
    run = Path(run)
    path = run / MODEL if run.is_dir() else run
    if not path.is_file():
        raise ConfigError(f"{run}: no model found (expected a run folder with {MODEL}, or a model file)")
    return path


class RunFolder:
    """Start a run in ``out`` (created) with its resolved ``config`` (a JSON-ready mapping); ``write=False``
    (a data-parallel run's other ranks) only reads it."""

    def __init__(self, out: str | Path, config: dict, write: bool = True) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        if write:
            atomic_write_text(self.out / CONFIG, yaml.safe_dump(config, sort_keys=False))

    def finish(self, summary: dict) -> dict:
        """Write ``summary.json`` (with ``timing.seconds_total``, the time since the start) and return it."""
        summary["timing"] = {**summary.get("timing", {}), "seconds_total": round(time.perf_counter() - self.start, 2)}
        atomic_write_text(self.out / SUMMARY, json.dumps(summary, indent=2) + "\n")
        return summary


def finished_summary(run_dir: str | Path) -> dict | None:
    """The run's summary when it finished well (``status: ok``), else ``None`` (not run, interrupted or failed)."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("status") == "ok" else None
