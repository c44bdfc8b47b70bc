"""One entry point for every kind of input: a folder tree, a manifest or a metadata CSV."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cxrlab.core import storage
from cxrlab.core.errors import ManifestError
from cxrlab.data.classes import LabelMapper, SchemeName
from cxrlab.data.collections import detect_collection, incomplete_collection, read_collection
from cxrlab.data.findings import FindingPolicy
from cxrlab.data.folders import read_folder_tree
from cxrlab.data.manifest import TABLE_SUFFIXES, Manifest, read_manifest, read_table
from cxrlab.data.metadata import detect_schema, read_metadata_csv
from cxrlab.data.splitfile import validate_split_table


def load_source(path: str | Path, *, scheme: SchemeName = "3class",
                label_map: Mapping[str, str | None] | None = None,
                keep_blank_view: bool = False, source: str | None = None,
                policy: FindingPolicy | None = None) -> Manifest:
    """Load any supported input into a :class:`Manifest`, detecting its kind.

    * a public collection's folder (ChestX-ray14, CheXpert, MIMIC-CXR-JPG, PadChest, RSNA,
      VinDr-CXR, COVIDx) → :func:`cxrlab.data.collections.read_collection`;
    * another folder → :func:`read_folder_tree`;
    * a table with an ``image`` column → :func:`read_manifest`; a split file (``split``
      column) is first checked by the leakage guard;
    * a table in a COVID-19 collection's metadata schema → :func:`read_metadata_csv`.

    Args:
        path: Folder, ``.csv`` or ``.parquet``.
        scheme: ``"3class"`` or ``"binary"``.
        label_map: Raw label → class overrides (``None`` drops the label).
        keep_blank_view: For metadata CSVs, keep rows with a blank view.
        source: Source name for folder trees and metadata CSVs.
        policy: Uncertain and blank labels of a collection under a multi-label scheme.

    Raises:
        ManifestError: the path is missing or of no recognised kind.
        LeakageError: a split file puts a patient on two sides.
    """
    mapper = LabelMapper(scheme, dict(label_map or {}))
    if storage.is_url(path):  # a manifest in an object store (its images may be there too)
        return read_manifest(str(path), mapper)
    path = Path(path)
    if path.is_dir():
        if detect_collection(path):
            return read_collection(path, mapper, policy)
        partial = incomplete_collection(path)
        if partial:
            raise ManifestError(f"{path}: {partial}: not read as a class-folder tree either (its images would get "
                                "their folders' names as labels); add the missing file")
        return read_folder_tree(path, mapper, source=source)
    if not path.exists():
        raise ManifestError(f"{path}: not found")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ManifestError(f"{path}: expected a folder, a .csv or a .parquet file")
    table = read_table(path)
    columns = list(table.columns)
    if "split" in columns:
        validate_split_table(table, path)  # the leakage guard: a leaking split file is refused everywhere
    if "image" in columns:
        return read_manifest(path, mapper, table=table)
    if detect_schema(columns):
        return read_metadata_csv(path, mapper, source=source, keep_blank_view=keep_blank_view, table=table)
    raise ManifestError(
        f"{path}: not a manifest (needs columns image, label, patient_id) nor a COVID-19 "
        f"metadata CSV (needs patientid, finding, view, modality); found: {', '.join(columns)}")
