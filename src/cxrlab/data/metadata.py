"""Metadata CSVs of the public COVID-19 collections.

Schemas (auto-detected from the columns):

* ``cohen`` — ieee8023/covid-chestxray-dataset: ``patientid, finding, view, modality,
  folder, filename``; image at ``<folder>/<filename>``.
* ``actualmed`` — Actualmed COVID-19 CXR initiative: ``patientid, finding, view, modality,
  imagename``; image at ``images/<imagename>``.
* ``figure1`` — Figure 1 COVID-19 CXR initiative: ``patientid, finding, view, modality``;
  image at ``images/<patientid>.{jpg,jpeg,png}``. Ids ending in a letter (``COVID-00003a``,
  ``COVID-00003b``) are images of one patient.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from cxrlab.core.errors import ConfigError
from cxrlab.core.io import absolute_path
from cxrlab.data.classes import LabelMapper
from cxrlab.data.manifest import Manifest, SkippedItem, finalise_manifest, read_table, require_columns

MetadataSchema = Literal["auto", "cohen", "actualmed", "figure1"]
FRONTAL_VIEWS = ("PA", "AP")  # prefixes: AP Supine, AP erect, APS count as frontal
XRAY_MODALITIES = ("x-ray", "xray", "cr", "dx")
_BASE_COLUMNS = ("patientid", "finding", "view", "modality")
_EXTRA_COLUMNS = ("sex", "age", "offset", "date", "location", "license")


def detect_schema(columns: Sequence[str]) -> str | None:
    """Return the metadata schema whose columns are all present, or ``None``."""
    cols = {c.lower() for c in columns}
    if not set(_BASE_COLUMNS) <= cols:
        return None
    if {"folder", "filename"} <= cols:
        return "cohen"
    if "imagename" in cols:
        return "actualmed"
    return "figure1"


def _image_path(schema: str, row: pd.Series, base: Path) -> str:
    if schema == "cohen":
        return str(absolute_path(base / row["folder"] / row["filename"]))
    if schema == "actualmed":
        return str(absolute_path(base / "images" / row["imagename"]))
    for suffix in (".jpg", ".jpeg", ".png"):
        candidate = base / "images" / f"{row['patientid']}{suffix}"
        if candidate.exists():
            return str(absolute_path(candidate))
    return str(absolute_path(base / "images" / f"{row['patientid']}.jpg"))


def _patient(schema: str, raw: str) -> str:
    return re.sub(r"(?<=\d)[a-z]$", "", raw) if schema == "figure1" else raw


def _filter_reason(view: str, modality: str, views: Sequence[str], keep_blank_view: bool) -> str | None:
    if modality and modality.lower().replace(" ", "") not in XRAY_MODALITIES:
        return f"modality {modality!r} is not X-ray"
    if not view:
        return None if keep_blank_view else "view is blank (pass --keep-blank-view to keep)"
    if not any(view.upper().startswith(v.upper()) for v in views):
        return f"view {view!r} is not frontal ({'/'.join(views)})"
    return None


def read_metadata_csv(path: str | Path, mapper: LabelMapper | None = None, *,
                      schema: MetadataSchema = "auto", source: str | None = None,
                      views: Sequence[str] = FRONTAL_VIEWS, keep_blank_view: bool = False,
                      check_files: bool = True, table: pd.DataFrame | None = None) -> Manifest:
    """Read a COVID-19 collection's metadata CSV into a manifest.

    Args:
        path: The metadata CSV; image paths resolve against its folder.
        mapper: Finding → class mapping and scheme (default: 3-class rules).
        schema: ``cohen``, ``actualmed``, ``figure1`` or ``auto`` (detect from columns).
        source: Source name (default: the schema name).
        views: Accepted view prefixes (frontal: PA, AP).
        keep_blank_view: Keep rows whose view is blank (Figure 1 often leaves it blank).
        check_files: Skip rows whose image file does not exist.
        table: The file's content when the caller has already read it.

    Returns:
        A :class:`Manifest`; rows dropped by a filter or an unmapped finding are in ``skipped``.

    Raises:
        ManifestError: missing columns or unknown schema.
    """
    path = Path(path)
    mapper = mapper or LabelMapper()
    frame = (read_table(path) if table is None else table).copy()
    frame.columns = [c.lower() for c in frame.columns]
    detected = detect_schema(frame.columns)
    if schema == "auto":
        if detected is None:
            require_columns(frame, _BASE_COLUMNS, path)
        schema = detected  # type: ignore[assignment]
    elif schema not in ("cohen", "actualmed", "figure1"):
        raise ConfigError(f"schema: unknown metadata schema {schema!r}; choose cohen, actualmed or figure1")
    needed = _BASE_COLUMNS + {"cohen": ("folder", "filename"), "actualmed": ("imagename",),
                              "figure1": ()}[schema]
    require_columns(frame, needed, path)
    source = source or schema
    base = path.parent
    rows, skipped = [], []
    for _, row in frame.iterrows():
        image = _image_path(schema, row, base)
        reason = _filter_reason(row["view"].strip(), row["modality"].strip(), views, keep_blank_view)
        if reason:
            skipped.append(SkippedItem(image, reason))
            continue
        record = {
            "image": image,
            "label": row["finding"],
            "patient_id": f"{source}:{_patient(schema, row['patientid'].strip())}",
            "source": source,
            "view": row["view"].strip(),
            "finding": row["finding"],
        }
        record.update({c: row[c] for c in _EXTRA_COLUMNS if c in frame.columns})
        rows.append(record)
    table = pd.DataFrame(rows, columns=["image", "label", "patient_id", "source", "view", "finding",
                                        *[c for c in _EXTRA_COLUMNS if c in frame.columns]])
    return finalise_manifest(table, mapper, skipped, check_files=check_files)
