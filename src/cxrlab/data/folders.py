"""Folder-per-class trees: ``ROOT/<class>/*.{png,jpg,jpeg,dcm}``.

Also reads the nested layouts of the public sets: Kaggle's COVID-19 Radiography Database
(``ROOT/COVID/images/*.png`` with ``ROOT/COVID/masks/*.png``) and Kermany's pneumonia set
(``ROOT/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg``). An image's class is its nearest
parent folder that is not a container (``images``, ``train``, ...); mask folders hold masks.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxrlab.core.errors import InvalidImageError, ManifestError
from cxrlab.data.classes import LabelMapper
from cxrlab.data.dicom import DICOM_SUFFIXES, read_dicom_header
from cxrlab.data.images import IMAGE_SUFFIXES, is_image_file
from cxrlab.data.manifest import Manifest, SkippedItem, finalise_manifest

log = logging.getLogger(__name__)

CONTAINER_DIRS = frozenset({"images", "image", "imgs", "img", "train", "test", "val", "valid",
                            "validation", "training", "testing"})
MASK_DIRS = frozenset({"masks", "mask", "lung_masks", "lung masks"})
# Kermany file names carry the patient: person1_bacteria_1.jpeg, IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg
KERMANY_PATIENT_PATTERNS = (r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-")


def _patient_from_name(stem: str, patterns: Sequence[str]) -> str | None:
    for pattern in patterns:
        match = re.search(pattern, stem)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return None


def _class_dir(rel_parts: tuple[str, ...]) -> str | None:
    for part in reversed(rel_parts[:-1]):
        if part.lower() not in CONTAINER_DIRS:
            return part
    return None


def read_folder_tree(root: str | Path, mapper: LabelMapper | None = None, *,
                     source: str | None = None,
                     patient_patterns: Sequence[str] = KERMANY_PATIENT_PATTERNS) -> Manifest:
    """Build a manifest from a folder-per-class tree.

    Args:
        root: The tree's root folder.
        mapper: Maps class-folder names to the scheme's classes (default: 3-class).
        source: Source name for every image (default: the root folder's name).
        patient_patterns: Regexes whose first group extracts the patient id from a file
            name; DICOM files use their ``PatientID`` instead. Images matching none are
            their own patient (logged).

    Returns:
        A :class:`Manifest`; files in unknown class folders are listed in ``skipped``.

    Raises:
        ManifestError: ``root`` is not a folder or holds no image files.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    mapper = mapper or LabelMapper()
    source = source or root.name
    rows, masks, skipped = [], {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).parts
        in_mask_dir = any(p.lower() in MASK_DIRS for p in rel_dir)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or not is_image_file(path):  # by suffix, or by content (.jfif, none)
                continue
            parts = (*rel_dir, name)
            class_dir = _class_dir(tuple(p for p in parts if p.lower() not in MASK_DIRS))
            if in_mask_dir:
                masks[(class_dir, _mask_key(path.stem))] = str(path)
                continue
            if class_dir is None:
                skipped.append(SkippedItem(str(path), "not inside a class folder"))
                continue
            rows.append(_row_for(path, class_dir, source, patient_patterns, skipped))
    if not rows and not skipped:
        raise ManifestError(f"{root}: no image files found (looked for {', '.join(IMAGE_SUFFIXES)}, and by "
                            "content for other names)")
    frame = pd.DataFrame([r for r in rows if r is not None],
                         columns=["image", "label", "patient_id", "source", "view", "class_dir"])
    frame["mask"] = [masks.get((c, _mask_key(Path(p).stem)), "")
                     for c, p in zip(frame["class_dir"], frame["image"])]
    frame = frame.drop(columns="class_dir")
    return finalise_manifest(frame, mapper, skipped)


def _mask_key(stem: str) -> str:
    return re.sub(r"(_mask|_lungs|-mask)$", "", stem, flags=re.IGNORECASE)


def _row_for(path: Path, class_dir: str, source: str, patterns: Sequence[str],
             skipped: list[SkippedItem]) -> dict | None:
    patient, view = None, ""
    if path.suffix.lower() in DICOM_SUFFIXES:
        try:
            header = read_dicom_header(path)
        except InvalidImageError as err:
            skipped.append(SkippedItem(str(path), err.reason, unreadable=True))
            return None
        patient, view = header["patient_id"] or None, header["view"]
    patient = patient or _patient_from_name(path.stem, patterns)
    return {
        "image": str(path),
        "label": class_dir,
        "patient_id": f"{source}:{patient}" if patient else "",
        "source": source,
        "view": view,
        "class_dir": class_dir,
    }
