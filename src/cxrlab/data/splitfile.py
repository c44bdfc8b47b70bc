"""``splits.csv`` + ``splits.json``: the one split every later step reads.

Reading a split file always runs the leakage guard, so a hand-edited or foreign file that
puts a patient on two sides is refused by every command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cxrlab.core.run_folder import SPLITS, SPLITS_INFO
from cxrlab.core.errors import ManifestError
from cxrlab.core.io import atomic_write_text
from cxrlab.data.manifest import read_table, require_columns, resolve_paths, write_table
from cxrlab.data.splits import SIDES, check_no_leakage

SPLIT_COLUMNS = ("image", "patient_id", "label", "source", "split", "fold")


def write_splits(frame: pd.DataFrame, info: dict, out_dir: str | Path) -> Path:
    """Write ``splits.csv`` (paths relative to it) and ``splits.json`` into ``out_dir``.

    Returns:
        Path of ``splits.csv``.
    """
    out_dir = Path(out_dir)
    first = [c for c in SPLIT_COLUMNS if c in frame.columns]
    ordered = frame[first + [c for c in frame.columns if c not in first]]
    path = write_table(ordered, out_dir / SPLITS)
    atomic_write_text(out_dir / SPLITS_INFO, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path


def read_splits(path: str | Path, group_column: str = "patient_id") -> pd.DataFrame:
    """Read a split file, resolve its image paths and refuse it if it leaks patients.

    Args:
        path: ``splits.csv`` (or a folder holding one).
        group_column: Column that must not straddle sides.

    Returns:
        The table with absolute ``image`` paths and integer ``fold`` (-1 outside train).

    Raises:
        ManifestError: missing columns or unknown side names.
        LeakageError: a patient is on two sides or in two folds, named in the message.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SPLITS
    return resolve_paths(validate_split_table(read_table(path), path, group_column), path.parent)


def validate_split_table(frame: pd.DataFrame, path: str | Path, group_column: str = "patient_id") -> pd.DataFrame:
    """Check a split table read from ``path`` (columns, side names, folds, leakage guard).

    Returns:
        The table with integer ``fold`` (-1 where absent) and a ``source`` column.

    Raises:
        ManifestError, LeakageError: as :func:`read_splits`.
    """
    frame = frame.copy()
    require_columns(frame, ("image", "patient_id", "label", "split"), path)
    bad = sorted(set(frame["split"]) - set(SIDES))
    if bad:
        raise ManifestError(f"{path}: unknown split value(s) {bad}; allowed: {', '.join(SIDES)}")
    if "fold" in frame.columns:
        try:
            frame["fold"] = pd.to_numeric(frame["fold"].replace("", "-1")).astype(int)
        except ValueError as err:
            raise ManifestError(f"{path}: column fold must hold integers ({err})") from err
    else:
        frame["fold"] = -1
    if "source" not in frame.columns:
        frame["source"] = ""
    check_no_leakage(frame, group_column, source=str(path))
    return frame


