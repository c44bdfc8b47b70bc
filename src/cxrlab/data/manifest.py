"""The manifest: one table of images with label, patient, source and view.

In memory, ``image`` and ``mask`` hold absolute paths. On disk (CSV or Parquet) they are
written relative to the table's own folder and resolved against it when read, so a data
folder and its tables move together.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from cxrlab.core.errors import ManifestError
from cxrlab.core import storage
from cxrlab.core.io import absolute_path, atomic_write_bytes, printable, relative_to_or_absolute
from cxrlab.data.boxes import is_boxes
from cxrlab.data.classes import LabelMapper

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "label", "patient_id", "source", "view")
PATH_COLUMNS = ("image", "mask", "lesion")  # lesion: a mask of the finding (phantoms), or boxes (data.boxes)
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class SkippedItem:
    """An input left out, with the reason (a file, or a metadata row); ``unreadable`` when the file
    itself is the problem (missing, not a file, does not decode), not a choice (a label outside the
    scheme, a lateral view, a repeated row)."""

    image: str
    reason: str
    unreadable: bool = False


@dataclass(frozen=True)
class Manifest:
    """A table of usable images plus what was left out and why.

    Attributes:
        table: One row per image; columns :data:`REQUIRED_COLUMNS` (``label`` is a class of
            ``class_names``), optional ``mask`` and metadata. Paths are absolute.
        class_names: Classes of the scheme, in canonical order.
        skipped: Inputs left out (unknown label, filtered view, missing file, ...).
    """

    table: pd.DataFrame
    class_names: tuple[str, ...]
    skipped: tuple[SkippedItem, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in self.table.columns]
        if missing:
            raise ManifestError(f"manifest table: missing column(s) {', '.join(missing)}")

    def __len__(self) -> int:
        return len(self.table)

    def class_counts(self) -> dict[str, int]:
        """Images per class, in class order (per finding: images on which it is present)."""
        counts = self.table["label"].astype(str).str.split("|").explode().value_counts()  # no class name has a |
        return {c: int(counts.get(c, 0)) for c in self.class_names}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet table with every column as text (empty cells → ``""``).

    Raises:
        ManifestError: missing file, unknown suffix, or unparsable content.
    """
    source: str | Path | io.BytesIO = path if storage.is_url(path) else Path(path)
    if storage.problem(path):
        raise ManifestError(f"{path}: file not found")
    suffix = Path(urlsplit(str(path)).path).suffix.lower()
    if storage.is_url(path):  # an object store's table, read whole
        source = io.BytesIO(storage.read_bytes(path))
    try:
        if suffix == ".csv":
            raw = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
            source = io.BytesIO(raw)  # read once: pandas parses these bytes
            if b"\x00" in raw:  # pandas cuts a cell at a NUL byte: the row would point at another file
                rows = [n for n, line in enumerate(raw.split(b"\n"), start=1) if b"\x00" in line]
                raise ManifestError(f"{path}: line(s) {', '.join(map(str, rows[:10]))} hold NUL bytes (a damaged "
                                    "or binary file?); fix or remove them")
            frame = pd.read_csv(source, dtype=str, keep_default_na=False)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(source)
            for column in frame.columns:  # text columns as in a CSV: nulls become ""
                if not pd.api.types.is_numeric_dtype(frame[column]):
                    frame[column] = frame[column].fillna("").astype(str)
        else:
            raise ManifestError(f"{path}: unsupported table type {suffix!r}; use .csv or .parquet")
    except ManifestError:
        raise
    except Exception as err:  # pandas/pyarrow raise many parser error types
        raise ManifestError(f"{path}: cannot parse table ({err})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: str | Path) -> None:
    """Raise :class:`ManifestError` naming ``path`` and the missing columns, if any."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)} (required: {', '.join(columns)}; "
            f"found: {', '.join(map(str, frame.columns)) or 'none'})")


def resolve_paths(frame: pd.DataFrame, base: str | Path) -> pd.DataFrame:
    """Make the path columns absolute, resolving relative entries against ``base`` (a folder or a
    folder URL; entries that are URLs stay as they are)."""
    frame = frame.copy()
    url = storage.is_url(base)
    base = base if url else absolute_path(base)
    for column in PATH_COLUMNS:
        if column in frame.columns:
            frame[column] = [
                p if is_boxes(p) else  # a lesion given as boxes, not a file
                (storage.resolve(p, base) if url or storage.is_url(p) else str(absolute_path(base / p)))
                if isinstance(p, str) and p else "" for p in frame[column]
            ]
    return frame


def read_manifest(path: str | Path, mapper: LabelMapper | None = None,
                  check_files: bool = True, table: pd.DataFrame | None = None) -> Manifest:
    """Read a manifest (CSV/Parquet with at least ``image, label, patient_id``).

    ``source`` defaults to the manifest folder's name and ``view`` to empty when absent.
    Rows whose label maps to no class, or whose image is missing, are skipped and reported.

    Args:
        path: The manifest file; relative image paths resolve against its folder.
        mapper: Label mapping and class scheme (default: 3-class).
        check_files: Skip rows whose image file does not exist.
        table: The file's content when the caller has already read it (saves a second read).

    Returns:
        A :class:`Manifest`.

    Raises:
        ManifestError: the file is missing, unparsable or lacks required columns.
    """
    url = storage.is_url(path)
    path = path if url else Path(path)
    mapper = mapper or LabelMapper()
    frame = read_table(path) if table is None else table
    require_columns(frame, ("image", "label", "patient_id"), path)
    folder = posixpath.dirname(str(path)) if url else path.parent
    frame = resolve_paths(frame, folder)
    if "source" not in frame.columns:
        frame["source"] = posixpath.basename(folder) if url else path.parent.resolve().name
    if "view" not in frame.columns:
        frame["view"] = ""
    return finalise_manifest(frame, mapper, check_files=check_files)


def image_ids(images: list[str]) -> list[str]:
    """A patient id for each image that has none: ``image:`` and its path below the images' common
    folder, so ``COVID/001.png`` and ``Normal/001.png`` stay two patients (never merged by file name)."""
    if not images:
        return []
    folders = [posixpath.dirname(p.replace(os.sep, "/")) for p in images]
    try:
        root = posixpath.commonpath(folders)
    except ValueError:  # mixed absolute and relative, or URLs of different hosts: keep whole paths
        root = ""
    return [f"image:{posixpath.relpath(p.replace(os.sep, '/'), root) if root else p}" for p in images]


def finalise_manifest(frame: pd.DataFrame, mapper: LabelMapper, skipped: list[SkippedItem] | None = None,
                      check_files: bool = True) -> Manifest:
    """Map labels onto the scheme, drop unmappable rows and missing files, fill patient ids.

    Args:
        frame: Rows with ``image`` (absolute), ``label`` (raw) and the other required columns.
        mapper: Label mapping and scheme.
        skipped: Items already left out by the reader, to carry along.
        check_files: Skip rows whose image does not exist.
    """
    skipped = list(skipped or [])
    frame = frame.reset_index(drop=True).copy()
    mapped = mapper.map_many(frame["label"].tolist())
    keep = []
    for i, (image, raw, label) in enumerate(zip(frame["image"], frame["label"], mapped)):
        if isinstance(image, str) and printable(image) != image:  # surrogates: a name's bytes that are not UTF-8
            skipped.append(SkippedItem(printable(image), "file name is not valid UTF-8, which a table cannot hold: "
                                                         "rename the file", unreadable=True))
        elif label is None:
            skipped.append(SkippedItem(image, f"unknown label {raw!r} for scheme {mapper.scheme}"))
        elif not image:
            skipped.append(SkippedItem(f"row {i + 2}", "empty image path"))
        elif check_files and (problem := storage.problem(image)):
            skipped.append(SkippedItem(image, problem, unreadable=True))
        else:
            keep.append(i)
    frame["label"] = mapped
    frame = frame.iloc[keep].reset_index(drop=True)
    for column in ("mask", "lesion"):  # a mask whose name is not UTF-8 cannot be written either: dropped, named
        if column in frame.columns:
            names = frame[column].fillna("").astype(str)
            bad = names.map(lambda v: printable(v) != v)
            for value in names[bad]:
                log.warning("%s: file name is not valid UTF-8, which a table cannot hold: left out as a %s (rename "
                            "the file)", printable(value), column)
            frame.loc[bad, column] = ""
    duplicated = frame["image"].duplicated(keep="first")
    for image in frame.loc[duplicated, "image"]:
        skipped.append(SkippedItem(image, "listed more than once; first row kept"))
    frame = frame.loc[~duplicated].reset_index(drop=True)
    blank = frame["patient_id"].astype(str).str.strip() == ""
    if blank.any():
        log.warning("%d image(s) have no patient id; each is its own patient (id 'image:' and its path), so two "
                    "images of one person can still land on both sides of a split; give patient ids where the "
                    "collection has them", int(blank.sum()))
        frame.loc[blank, "patient_id"] = image_ids(frame.loc[blank, "image"].astype(str).tolist())
    for column in ("patient_id", "source", "view"):
        frame[column] = frame[column].fillna("").astype(str)
    ordered = list(REQUIRED_COLUMNS) + [c for c in frame.columns if c not in REQUIRED_COLUMNS]
    return Manifest(frame[ordered], mapper.class_names, tuple(skipped))


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table to CSV or Parquet (by suffix) atomically, paths relative to its folder.

    Returns:
        The written path.

    Raises:
        ManifestError: unsupported suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ManifestError(f"{path}: unsupported table type {suffix!r}; use .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = frame.copy()
    for column in PATH_COLUMNS:
        if column in out.columns:
            out[column] = [p if is_boxes(p) else relative_to_or_absolute(p, path.parent) if p else "" for p in out[column]]
    if suffix == ".csv":
        data = out.to_csv(index=False).encode("utf-8")
    else:
        data = out.to_parquet(index=False)
    atomic_write_bytes(path, data)
    return path


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write ``manifest.table`` with :func:`write_table`."""
    return write_table(manifest.table, path)


def table_info(path: str | Path) -> Path:
    """The record beside a table: ``manifest.csv`` -> ``manifest.json`` (``splits.csv`` -> ``splits.json``)."""
    return Path(path).with_suffix(".json")


def write_table_info(path: str | Path, info: dict) -> Path:
    """Write what a table was made with (its ``scheme``, say) beside it: :func:`table_info`."""
    import json

    target = table_info(path)
    atomic_write_bytes(target, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return target


def recorded_scheme(path: str | Path | None) -> str | None:
    """The class scheme a manifest or split table was written with (``cxrlab manifest --scheme``,
    ``cxrlab split``): from the record beside it, or ``None`` (a folder, a URL, no record, an
    unreadable record)."""
    import json

    if not path or storage.is_url(path) or Path(path).suffix.lower() not in TABLE_SUFFIXES:
        return None
    try:
        info = json.loads(table_info(path).read_text())
    except (OSError, ValueError):
        return None
    scheme = info.get("scheme") if isinstance(info, dict) else None
    return scheme if isinstance(scheme, str) and scheme else None
