"""Export a finished run as a study's or a search's ``best-model`` folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from cxrlab.core.run_folder import CONFIG, CURVES, METRICS, MODEL, ORIGIN, SOURCES, SPLITS, SPLITS_INFO, SUMMARY
from cxrlab.core.io import atomic_write_text
from cxrlab.data.manifest import read_table, resolve_paths, write_table
from cxrlab.train import add_screening_reference

log = logging.getLogger(__name__)

FILES = (MODEL, CONFIG, SOURCES, SUMMARY, METRICS, SPLITS_INFO, CURVES)


def export_run(source: Path, target: Path, origin: dict) -> Path:
    """Copy a run folder's model and records to ``target`` (replaced atomically), with the split's
    image paths rewritten for the new folder and ``origin.json`` naming where it came from.

    Runs of a study or search are trained without the screening reference; the exported one gets
    it here, from its own training and validation images (a model without it still predicts,
    without the out-of-distribution checks, and a warning says why)."""
    try:
        add_screening_reference(source)
    except Exception as err:  # noqa: BLE001 -- a finished study must still export its model
        log.warning("%s: exported without a screening reference: %s: %s", source, type(err).__name__, err)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in FILES:
        if (source / name).exists():
            shutil.copy2(source / name, tmp / name)
    # image paths in splits.csv are relative to its folder: rewrite them for the new one
    write_table(resolve_paths(read_table(source / SPLITS), source), tmp / SPLITS)
    atomic_write_text(tmp / ORIGIN, json.dumps({**origin, "run": str(source)}) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
