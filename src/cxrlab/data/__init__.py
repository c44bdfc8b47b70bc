"""Data layer: sources (folders, metadata CSVs, manifests, DICOM), classes, splits, audit, phantoms."""

from __future__ import annotations

from cxrlab.data.audit import AuditReport, audit_splits, dedupe_splits
from cxrlab.data.classes import CLASS_SCHEMES, LabelMapper, class_names
from cxrlab.data.dicom import dicom_to_uint8, read_dicom_header
from cxrlab.data.duplicates import compute_hashes, duplicate_groups, find_near_duplicates, group_patients
from cxrlab.data.folders import read_folder_tree
from cxrlab.data.images import DecodedImage, decode_image, find_images, read_image, read_mask
from cxrlab.data.manifest import Manifest, SkippedItem, read_manifest, write_manifest, write_table
from cxrlab.data.metadata import read_metadata_csv
from cxrlab.data.sources import load_source
from cxrlab.data.splitfile import read_splits, write_splits
from cxrlab.data.splits import (
    SplitConfig,
    assign_folds,
    balanced_class_weights,
    check_no_leakage,
    leave_one_source_out,
    make_splits,
    split_by_patient,
    undersample,
)
from cxrlab.data.synthetic import generate_phantoms

__all__ = [
    "CLASS_SCHEMES", "AuditReport", "DecodedImage", "LabelMapper", "Manifest", "SkippedItem",
    "SplitConfig", "assign_folds", "audit_splits", "balanced_class_weights", "check_no_leakage",
    "class_names", "compute_hashes", "dedupe_splits", "dicom_to_uint8", "duplicate_groups",
    "find_images", "find_near_duplicates", "generate_phantoms", "group_patients", "leave_one_source_out", "load_source",
    "make_splits", "decode_image", "read_dicom_header", "read_folder_tree", "read_image", "read_manifest",
    "read_mask", "read_metadata_csv", "read_splits", "split_by_patient",
    "undersample", "write_manifest", "write_splits", "write_table",
]
