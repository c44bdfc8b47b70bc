"""Several collections in one manifest, with one identity per person.

Collections reuse each other's images: RSNA Pneumonia's 26 684 DICOMs are ChestX-ray14 images read
again, and COVIDx takes RSNA's (its ``rsna`` rows carry RSNA's ``patientId``, so both readers write
``rsna:<patientId>``). Merged, one person can then sit under two patient ids and on both sides of a
split. An *identity table* says which ids are one person: a CSV with ``patient_id`` (as a manifest
writes it: ``rsna:0004cfab-…``) and ``same_as`` (the id to use: ``nih:17``, or a ChestX-ray14 image
name such as ``00000017_001.png``, read as that image's patient). Rows it maps keep their own id in
``source_patient_id``. Without such a table, the content check of ``cxrlab split --dedupe regroup``
and ``cxrlab audit`` still joins copies it can see.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxrlab.core.errors import ManifestError
from cxrlab.data.manifest import REQUIRED_COLUMNS, Manifest, SkippedItem, read_table

log = logging.getLogger(__name__)

NIH_IMAGE = re.compile(r"^(\d{8})_\d{3}\.png$")  # a ChestX-ray14 image name: its first part is the patient


def _identity_id(value: str) -> str:
    """``same_as`` as a patient id: a ChestX-ray14 image name becomes its patient (``nih:17``)."""
    match = NIH_IMAGE.match(value.strip())
    return f"nih:{int(match.group(1))}" if match else value.strip()


def read_identity(path: str | Path) -> dict[str, str]:
    """An identity table: patient id -> the id of the same person.

    Raises:
        ManifestError: a table without ``patient_id`` and ``same_as``, or an id mapped two ways.
    """
    table = read_table(Path(path))
    missing = [c for c in ("patient_id", "same_as") if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: not an identity table; missing column(s) {', '.join(missing)} "
                            "(patient_id as a manifest writes it, same_as the id of the same person)")
    table = table.assign(patient_id=table["patient_id"].fillna("").astype(str).str.strip(),
                         same_as=table["same_as"].fillna("").astype(str).map(_identity_id))
    table = table[(table["patient_id"] != "") & (table["same_as"] != "")].drop_duplicates()
    twice = table["patient_id"][table["patient_id"].duplicated()]
    if len(twice):
        raise ManifestError(f"{path}: patient id {twice.iloc[0]!r} is mapped to two people "
                            f"({', '.join(table.loc[table['patient_id'] == twice.iloc[0], 'same_as'])})")
    return dict(zip(table["patient_id"], table["same_as"]))


def merge_manifests(manifests: Sequence[Manifest], identity: dict[str, str] | None = None) -> tuple[Manifest, dict]:
    """One manifest of several (the same scheme), patients joined through ``identity``.

    Args:
        manifests: Each read with the same scheme (its finding names are already cxrlab's).
        identity: Patient id -> the id of the same person (:func:`read_identity`).

    Returns:
        ``(manifest, report)``: the rows of all, an image listed twice kept once (the first),
        and what the merge joined: ``{"images": {source: n}, "identity_mapped": n,
        "patients_joined": n, "shared_patients": [(id, [sources])...]}`` (patients whose images
        come from more than one source after the mapping).

    Raises:
        ManifestError: no manifest, or manifests of different schemes.
    """
    if not manifests:
        raise ManifestError("nothing to merge")
    names = {m.class_names for m in manifests}
    if len(names) > 1:
        raise ManifestError(f"cannot merge manifests of different schemes: {' / '.join(', '.join(n) for n in names)}")
    frame = pd.concat([m.table for m in manifests], ignore_index=True)
    for column in frame.columns:  # a column one collection lacks is blank, not NaN text
        if frame[column].dtype == object:
            frame[column] = frame[column].fillna("")
    skipped: list[SkippedItem] = [s for m in manifests for s in m.skipped]
    twice = frame["image"].duplicated(keep="first")
    skipped += [SkippedItem(str(i), "listed by two of the merged inputs; the first kept") for i in frame.loc[twice, "image"]]
    frame = frame.loc[~twice].reset_index(drop=True)
    mapped = frame["patient_id"].map(identity or {})
    joined = mapped.notna()
    if joined.any():
        frame["source_patient_id"] = frame["patient_id"].where(joined, "")
        frame.loc[joined, "patient_id"] = mapped[joined]
    sources = frame.groupby("patient_id")["source"].agg(lambda s: sorted(set(s)))
    shared = sources[sources.map(len) > 1]
    report = {"images": frame["source"].value_counts().to_dict(), "identity_mapped": int(joined.sum()),
              "patients_joined": int(frame.loc[joined, "patient_id"].nunique()),
              "shared_patients": [(p, s) for p, s in shared.items()]}
    if identity and not joined.any():
        log.warning("the identity table maps none of the merged patient ids (e.g. %s; ids look like %s)",
                    next(iter(identity)), frame["patient_id"].iloc[0])
    ordered = list(REQUIRED_COLUMNS) + [c for c in frame.columns if c not in REQUIRED_COLUMNS]
    return Manifest(frame[ordered], manifests[0].class_names, tuple(skipped)), report
