"""What every collection reader shares: its raw table in, a manifest out.

A reader gives one row per image with ``image`` (absolute path), ``patient_id``, ``source``,
``view``, ``finding`` (the collection's own finding text, ``|``-joined), ``official_split`` (the
collection's published side, or empty) and metadata, plus a value per finding it reads (1 / 0 /
-1 uncertain / NaN blank). :func:`finish` turns that into labels of the chosen scheme: the
finding text through the class rules for a single-label scheme, or the finding values through
the uncertainty policy for a multi-label one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.errors import ManifestError
from cxrlab.data.classes import LabelMapper
from cxrlab.data.findings import NO_FINDING, FindingPolicy, canonical_finding, encode_findings
from cxrlab.data.manifest import Manifest, SkippedItem, finalise_manifest

log = logging.getLogger(__name__)

FRONTAL = ("PA", "AP")  # view prefixes kept (AP Supine, AP_horizontal, APS count as frontal)
COLUMNS = ("image", "label", "patient_id", "source", "view", "sex", "age", "study_id", "finding", "official_split")


def find_file(root: Path, patterns: Iterable[str]) -> Path | None:
    """The first file in ``root`` matching one of ``patterns`` (sorted; newest revision last wins)."""
    for pattern in patterns:
        found = sorted(root.glob(pattern))
        if found:
            return found[-1]
    return None


def index_files(root: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    """File name -> absolute path of every file below ``root`` with one of ``suffixes`` (the first
    found for a name): collections ship their images in numbered sub-folders."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(suffixes):
                found.setdefault(name, os.path.join(dirpath, name))
    return found


def read_label_table(path: Path, **kwargs) -> pd.DataFrame:
    """A collection's CSV (plain or compressed) as text, or a one-line error naming it."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except Exception as err:  # pandas raises many parser error types
        raise ManifestError(f"{path}: cannot parse label table ({err})") from err


def require(frame: pd.DataFrame, columns: Iterable[str], path: Path, what: str) -> None:
    """Raise naming ``path`` and the columns a ``what`` table lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: not a {what} table; missing column(s) {', '.join(missing)}")


def frontal(views: pd.Series) -> np.ndarray:
    """Whether each view is frontal (PA or AP, any suffix)."""
    upper = views.fillna("").astype(str).str.strip().str.upper()
    return upper.str.startswith(FRONTAL).to_numpy()


def findings_text(values: pd.DataFrame, normal: pd.Series | None = None) -> list[str]:
    """The positive findings of each row joined by ``|`` (``No Finding`` when none). With ``normal``
    (a labeller's own "no finding" column, as CheXpert's): ``No Finding`` where it is set (support
    devices may still be listed there), and an empty text for a row with neither a positive finding
    nor that mark (no single label: such a row is left out of a single-label scheme)."""
    text = pd.Series("", index=values.index, dtype=object)
    for name in values.columns:  # column by column: vectorised over 100 000s of rows
        text = text + np.where(values[name].to_numpy(dtype=float) == 1, name + "|", "")
    if normal is None:
        return [t[:-1] if t else NO_FINDING for t in text]
    return [NO_FINDING if n else t[:-1] for t, n in zip(text, normal.to_numpy(dtype=bool))]


def _by_finding(frame: pd.DataFrame, how: str) -> pd.DataFrame:
    """``frame`` with its columns under canonical finding names; two names of one finding combined."""
    frame = frame.reset_index(drop=True)
    frame.columns = [canonical_finding(c) for c in frame.columns]
    return frame.T.groupby(level=0).agg(how).T if frame.columns.has_duplicates else frame


def finish(raw: pd.DataFrame, values: pd.DataFrame | None, mapper: LabelMapper, policy: FindingPolicy,
           skipped: list[SkippedItem], check_files: bool = True, unknown: pd.DataFrame | None = None) -> Manifest:
    """The manifest of a reader's rows.

    Args:
        raw: Rows with :data:`COLUMNS` (``label`` may be absent: it is made here).
        values: Per-finding values of the same rows (1 / 0 / -1 / NaN), columns named as the
            collection does (canonicalised here); ``None`` for a single-label collection.
        mapper: The scheme.
        policy: Uncertain and blank cells under a multi-label scheme.
        skipped: Rows the reader left out, carried along.
        unknown: Per-finding booleans of the same rows: True where the collection's own conventions
            say the value is not known (a study the labeller never read, a finding a release's
            labels cannot tell), whatever the policy makes of blank and uncertain cells.
    """
    raw = raw.reset_index(drop=True).copy()
    if mapper.multilabel:
        findings = list(mapper.class_names)
        table = pd.DataFrame(index=raw.index)
        if values is not None:
            values = _by_finding(values, "max")  # two names of one finding: either one counts
        if unknown is not None:
            unknown = _by_finding(unknown.astype(bool), "any")
        for finding in findings:
            column = values[finding].to_numpy(dtype=float) if values is not None and finding in values else None
            if column is None:  # the collection never reads this finding
                table[finding] = np.nan
            else:
                table[finding] = [policy.resolve(finding, v) for v in column]
            if unknown is not None and finding in unknown:
                table.loc[unknown[finding].to_numpy(dtype=bool), finding] = np.nan
        absent = [f for f in findings if table[f].isna().all()]
        if absent:
            log.warning("%s: no image has a known value of %s (left out of loss and metrics)",
                        ", ".join(sorted(set(raw["source"]))), ", ".join(absent))
        raw["label"], raw["unlabelled"] = encode_findings(table.to_numpy(), findings)
    else:
        raw["label"] = raw["finding"]
    for column in COLUMNS:
        if column not in raw:
            raw[column] = ""
    return finalise_manifest(raw, mapper, skipped, check_files=check_files)


def skip_rows(raw: pd.DataFrame, drop: np.ndarray, reason: str | pd.Series, skipped: list[SkippedItem]) -> pd.DataFrame:
    """``raw`` without the rows where ``drop``; each left-out row recorded with its reason."""
    reasons = reason if isinstance(reason, pd.Series) else pd.Series(reason, index=raw.index)
    for image, why in zip(raw.loc[drop, "image"], reasons[drop]):
        skipped.append(SkippedItem(str(image), str(why)))
    return raw.loc[~drop]
