"""The tables ``predict`` and ``explain`` write: one row per input, a failed input's row naming its
reason, rewritten as work goes on so an interrupted run keeps what it finished."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from cxrlab.core.io import atomic_write_text, printable

SAVE_EVERY = 50  # rows between rewrites of the tables: a crash loses at most this much work
# what predict and explain write after the image and its probabilities (one vocabulary for both)
COLUMNS = ["predicted", "most_probable", "ood_score", "ood", "ood_reason", "overlay"]


MAX_STEM = 100  # characters of an input's name kept in its overlay's name (file systems allow 255 bytes)


def overlay_name(image: Path, taken: set[str], suffix: str = "gradcam") -> str:
    """``<stem>_<suffix>.png``, numbered when two inputs share a stem (the same name in two folders).
    A stem that is not plain text (bytes that are not UTF-8, characters a file system may refuse) or
    longer than :data:`MAX_STEM` is shortened and cleaned, with a hash of the whole path to keep it unique."""
    stem = printable(image.stem)
    clean = "".join(c if c.isprintable() and c not in '<>:"/\\|?*' else "_" for c in stem)[:MAX_STEM]
    if clean != stem:
        clean += "-" + hashlib.sha256(os.fsencode(image)).hexdigest()[:8]
    name, n = f"{clean}_{suffix}.png", 1
    while name in taken:
        n += 1
        name = f"{clean}_{n}_{suffix}.png"
    taken.add(name)
    return name


class RecordTable:
    """Rows of one run, written to ``<out>/<stem>.csv`` and ``<out>/<stem>.json`` (atomically) every
    :data:`SAVE_EVERY` rows, on :meth:`save` and when a ``with`` block using it ends, however it ends.

    A record is a dict with ``image`` and either ``probabilities`` (``{class: p}``, spread into one
    CSV column per class) and the other fields, or ``error`` (the one-line reason it was skipped).
    The CSV has ``columns`` (``image`` first, then the class columns, then the rest) and ``error``
    last; the JSON holds the records as they are.
    """

    def __init__(self, out: Path, stem: str, class_names: list[str], columns: list[str]) -> None:
        self.out, self.stem = Path(out), stem
        self.columns = ["image", *class_names, *columns, "error"]
        self.records: list[dict] = []

    def __enter__(self) -> RecordTable:
        return self

    def __exit__(self, *exc) -> None:
        self.save()  # however the work ends (Ctrl+C, a disk error): the rows finished so far are written

    def add(self, record: dict) -> None:
        """Append a record; rewrite the tables every :data:`SAVE_EVERY` records."""
        record = {**record, "image": printable(str(record["image"]))}  # a CSV and JSON hold text only
        self.records.append(record)
        if len(self.records) % SAVE_EVERY == 0:
            self.save()

    def save(self) -> None:
        """Write both tables now."""
        rows = [{**r, **r.get("probabilities", {})} for r in self.records]
        table = pd.DataFrame(rows, columns=self.columns)
        atomic_write_text(self.out / f"{self.stem}.csv", table.to_csv(index=False))
        atomic_write_text(self.out / f"{self.stem}.json", json.dumps(self.records, indent=2) + "\n")

    @property
    def failed(self) -> list[dict]:
        """The records of inputs that were skipped."""
        return [r for r in self.records if "error" in r]
