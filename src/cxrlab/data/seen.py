"""Which patients and images a model was fitted on, so that no evaluation calls them test data.

A model file carries the record (``extra.seen``) of every patient and image it trained on or chose
its epoch on. Patient ids and image paths are kept as truncated SHA-256 digests: enough to recognise
them again, without writing a collection's ids or folder layout into a file that may be shared.
Written here because no library keeps such a record; the digests come from :mod:`hashlib`.
"""

from __future__ import annotations

import hashlib
import os

import pandas as pd

SEEN_REASON = "patient or image seen in training or validation (not test data for this model)"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _image_key(path: str) -> str:
    return _digest(os.path.realpath(path)) if path else ""


def seen_record(frame: pd.DataFrame) -> dict[str, list[str]]:
    """The digests of ``frame``'s patients (``patient_id``) and images (real paths), sorted."""
    return {"patients": sorted({_digest(str(p)) for p in frame["patient_id"]}),
            "images": sorted({_image_key(str(p)) for p in frame["image"]} - {""})}


def merge_records(*records: dict | None) -> dict[str, list[str]]:
    """One record holding every patient and image of ``records`` (``None`` entries skipped)."""
    present = [r for r in records if r]
    return {key: sorted(set().union(*(r.get(key, []) for r in present))) for key in ("patients", "images")}


def split_seen(frame: pd.DataFrame, record: dict | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows the model has not seen, rows whose patient or image it has)``; with no record (a model
    file from before records were kept) every row counts as unseen."""
    if not record:
        return frame, frame.iloc[:0]
    patients, images = set(record.get("patients", [])), set(record.get("images", []))
    seen = pd.Series([_digest(str(p)) in patients or _image_key(str(i)) in images
                      for p, i in zip(frame["patient_id"], frame["image"], strict=True)], index=frame.index, dtype=bool)
    return frame[~seen], frame[seen]
