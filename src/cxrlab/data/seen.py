"""Which patients and images a model was fitted on, so that no evaluation calls them test data.

A model file carries the record (``extra.seen``) of every patient and image it trained on or chose
its epoch on: patient ids and image paths as truncated SHA-256 digests (enough to recognise them
again, without writing a collection's ids or folder layout into a file that may be shared), and
each image's content signature (:class:`cxrlab.data.duplicates.Signatures`: a digest of its
decoded pixels, its pHash and a 16 x 16 thumbnail), so that a copy under a new name and a new
patient id, or a re-encoded near-copy, is recognised too.
Written here because no library keeps such a record; the digests come from :mod:`hashlib`.
"""

from __future__ import annotations

import hashlib
import os

import pandas as pd

from cxrlab.core.runtime import default_workers
from cxrlab.data.duplicates import Signatures, compute_signatures, copies_of

SEEN_REASON = "patient or image seen in training or validation (not test data for this model)"
COPY_REASON = "a copy of an image the model trained or validated on (same decoded pixels)"
NEAR_COPY_REASON = "a near-copy of an image the model trained or validated on (re-encoded, resized or re-contrasted)"
REASONS = {"patient": SEEN_REASON, "image": SEEN_REASON, "copy": COPY_REASON, "near copy": NEAR_COPY_REASON}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _image_key(path: str) -> str:
    return _digest(os.path.realpath(path)) if path else ""


def _signatures(frame: pd.DataFrame) -> Signatures:
    paths = frame["image"].astype(str).tolist()
    return compute_signatures(paths, workers=default_workers() if len(paths) > 2000 else 1)


def seen_record(frame: pd.DataFrame, content: bool = True) -> dict:
    """The digests of ``frame``'s patients (``patient_id``) and images (real paths), sorted; with
    ``content``, the images' content signatures too (``content``; one decode each, ~2 ms an image)."""
    record: dict = {"patients": sorted({_digest(str(p)) for p in frame["patient_id"]}),
                    "images": sorted({_image_key(str(p)) for p in frame["image"]} - {""})}
    if content:
        record["content"] = _signatures(frame.drop_duplicates("image")).to_record()
    return record


def merge_records(*records: dict | None) -> dict:
    """One record holding every patient, image and content signature of ``records`` (``None`` skipped)."""
    present = [r for r in records if r]
    merged: dict = {key: sorted(set().union(*(r.get(key, []) for r in present))) for key in ("patients", "images")}
    contents = [s for r in present if (s := Signatures.from_record(r.get("content"))) is not None]
    if contents:
        merged["content"] = Signatures.concat(contents).to_record()
    return merged


def seen_as(frame: pd.DataFrame, record: dict | None) -> pd.Series:
    """Per row: why the model has seen it (``patient``, ``image``, ``copy``, ``near copy``) or ``""``.

    Rows are matched by patient id and image path, then (when the record has content signatures:
    every model file written since they were kept) by content: the same decoded pixels, or a
    confirmed near-duplicate (:func:`cxrlab.data.duplicates.copies_of`).
    """
    out = pd.Series("", index=frame.index, dtype=object)
    if not record or frame.empty:
        return out
    patients, images = set(record.get("patients", [])), set(record.get("images", []))
    out[[_image_key(str(i)) in images for i in frame["image"]]] = "image"
    out[[_digest(str(p)) in patients for p in frame["patient_id"]]] = "patient"
    reference = Signatures.from_record(record.get("content"))
    if reference is not None:
        unmatched = out == ""
        if unmatched.any():
            out[unmatched] = copies_of(_signatures(frame[unmatched]), reference)
    return out


def split_seen(frame: pd.DataFrame, record: dict | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows the model has not seen, rows it has)``, the latter with ``seen_as`` (:func:`seen_as`);
    with no record (a model file from before records were kept) every row counts as unseen."""
    why = seen_as(frame, record)
    seen = why != ""
    return frame[~seen], frame[seen].assign(seen_as=why[seen])
