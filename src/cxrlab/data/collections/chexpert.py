"""CheXpert (Irvin et al., AAAI 2019) and MIMIC-CXR-JPG (Johnson et al., 2019): 14 findings from the
CheXpert labeller, each 1 (present), 0 (absent), -1 (uncertain) or blank (not mentioned).

CheXpert layout: ``train.csv`` and ``valid.csv`` (columns ``Path, Sex, Age, Frontal/Lateral, AP/PA``
and the findings) beside ``train/patientNNNNN/studyN/viewN_frontal.jpg``; ``Path`` starts with the
release folder's name (``CheXpert-v1.0-small/train/...``). Official split: train / valid (its
test labels are not public, so ``valid`` is the usual test side).

MIMIC-CXR-JPG layout: ``mimic-cxr-2.0.0-metadata.csv.gz`` (``dicom_id, subject_id, study_id,
ViewPosition``), ``mimic-cxr-2.0.0-chexpert.csv.gz`` (findings per study) and
``mimic-cxr-2.0.0-split.csv.gz`` (train / validate / test per image), images at
``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``.

What uncertain and blank cells become is the reader's :class:`~cxrlab.data.findings.FindingPolicy`,
except that a pathology left blank beside ``No Finding`` is absent, and every finding of a MIMIC
study the labeller has no row for is unknown (never negative).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.classes import LabelMapper
from cxrlab.data.collections._common import findings_text, find_file, finish, frontal, read_label_table, require, skip_rows
from cxrlab.data.findings import FindingPolicy
from cxrlab.data.manifest import Manifest, SkippedItem

log = logging.getLogger(__name__)

FINDINGS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices")
MIMIC = {"metadata": "mimic-cxr-2.0.0-metadata.csv*", "chexpert": "mimic-cxr-2.0.0-chexpert.csv*",
         "split": "mimic-cxr-2.0.0-split.csv*"}


SIDES = (("train.csv", "train"), ("valid.csv", "val"))


def _tables(root: Path) -> list[tuple[Path, str]]:
    """CheXpert's label tables present in ``root`` (a ``train.csv`` of another layout is not one)."""
    found = []
    for name, side in SIDES:
        path = root / name
        if path.is_file():
            with path.open(errors="replace") as f:
                if "Frontal/Lateral" in f.readline():
                    found.append((path, side))
    return found


def detect(root: Path) -> bool:
    """``train.csv`` and/or ``valid.csv`` with CheXpert's columns (a copy with one of them is still
    CheXpert: read, with a warning, rather than taken for a class-folder tree)."""
    return bool(_tables(root))


def detect_mimic(root: Path) -> bool:
    return find_file(root, [MIMIC["metadata"]]) is not None and find_file(root, [MIMIC["chexpert"]]) is not None


def incomplete_mimic(root: Path) -> str | None:
    """Why a folder with one of MIMIC-CXR-JPG's two tables cannot be read (None: it has both, or neither)."""
    meta, labels = find_file(root, [MIMIC["metadata"]]), find_file(root, [MIMIC["chexpert"]])
    if (meta is None) == (labels is None):
        return None
    have, lack = (meta, "mimic-cxr-2.0.0-chexpert.csv.gz (the labels)") if labels is None else \
        (labels, "mimic-cxr-2.0.0-metadata.csv.gz (images and views)")
    return f"MIMIC-CXR-JPG's {have.name} without {lack}"


def _values(table: pd.DataFrame) -> pd.DataFrame:
    """The finding columns as floats (blank: NaN). ``No Finding`` is not a finding: where the labeller
    set it, every pathology it left blank is absent (what No Finding asserts), whatever ``--blank``
    makes of other blank cells; Support Devices may be listed beside it, so its blank stays blank."""
    values = pd.DataFrame({f: pd.to_numeric(table[f], errors="coerce") for f in FINDINGS[1:] if f in table},
                          index=table.index)
    if "No Finding" in table:
        normal = (pd.to_numeric(table["No Finding"], errors="coerce") == 1).to_numpy()
        pathologies = [f for f in values.columns if f != "Support Devices"]
        values.loc[normal, pathologies] = values.loc[normal, pathologies].fillna(0.0)
    return values


def _release_paths(root: Path, given: pd.Series) -> list[str]:
    """``Path`` as the release writes it (``CheXpert-v1.0-small/train/...``), resolved against the one
    base under which the first listed file exists (``root``'s parent, ``root``, or ``root`` for the
    part after the release folder's name); the last of these when none exists."""
    rest = given.map(lambda p: str(Path(*Path(p).parts[1:])) if len(Path(p).parts) > 1 else p)
    bases = [(root.parent, given), (root, given), (root, rest)]
    first = next(((base, paths) for base, paths in bases for p in paths.head(50) if (base / p).is_file()), bases[-1])
    base = str(first[0].resolve())
    return [f"{base}/{p}" for p in first[1]]


def read(root: Path, mapper: LabelMapper, policy: FindingPolicy, check_files: bool = True) -> Manifest:
    """Read a CheXpert folder (see the module docstring); lateral images are left out."""
    parts, skipped = [], []
    tables = _tables(root)
    if len(tables) < len(SIDES):
        log.warning("%s: CheXpert without %s: its images are read, with no %s side", root,
                    " or ".join(n for n, _ in SIDES if n not in {p.name for p, _ in tables}),
                    " or ".join(s for n, s in SIDES if n not in {p.name for p, _ in tables}))
    for path, side in tables:
        table = read_label_table(path)
        require(table, ("Path", "Frontal/Lateral", *FINDINGS[:1]), path, "CheXpert")
        patient = table["Path"].map(lambda p: next((q for q in Path(p).parts if q.startswith("patient")), p))
        study = table["Path"].map(lambda p: next((q for q in Path(p).parts if q.startswith("study")), ""))
        view = np.where(table["Frontal/Lateral"].str.lower() == "lateral", "L", table.get("AP/PA", ""))
        raw = pd.DataFrame({"image": _release_paths(root, table["Path"]),
                            "patient_id": "chexpert:" + patient, "source": "chexpert", "view": view,
                            "sex": table.get("Sex", ""), "age": table.get("Age", ""),
                            "study_id": patient + "/" + study, "official_split": side}, index=table.index)
        values = _values(table)
        raw["finding"] = findings_text(values, pd.to_numeric(table["No Finding"], errors="coerce") == 1)
        lateral = table["Frontal/Lateral"].str.lower() != "frontal"
        kept = skip_rows(raw, lateral.to_numpy(), "lateral view", skipped)
        parts.append((kept, values.loc[kept.index]))
    raw = pd.concat([p[0] for p in parts], ignore_index=True)
    return finish(raw, pd.concat([p[1] for p in parts], ignore_index=True), mapper, policy, skipped, check_files)


def read_mimic(root: Path, mapper: LabelMapper, policy: FindingPolicy, check_files: bool = True) -> Manifest:
    """Read a MIMIC-CXR-JPG folder (see the module docstring); non-frontal images are left out."""
    paths = {k: find_file(root, [v]) for k, v in MIMIC.items()}
    meta = read_label_table(paths["metadata"])
    require(meta, ("dicom_id", "subject_id", "study_id", "ViewPosition"), paths["metadata"], "MIMIC-CXR metadata")
    labels = read_label_table(paths["chexpert"])
    require(labels, ("subject_id", "study_id"), paths["chexpert"], "MIMIC-CXR CheXpert-labeller")
    labels = labels.assign(_labelled=True)
    table = meta.merge(labels, on=["subject_id", "study_id"], how="left")
    unread = table["_labelled"].isna().to_numpy()  # a study the labeller has no row for: unknown, not negative
    if paths["split"] is not None:
        split = read_label_table(paths["split"])[["dicom_id", "split"]]
        table = table.merge(split, on="dicom_id", how="left")
    subject, study = table["subject_id"], table["study_id"]
    image = [str((root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg").resolve())
             for s, t, d in zip(subject, study, table["dicom_id"])]
    raw = pd.DataFrame({"image": image, "patient_id": "mimic:" + subject, "source": "mimic",
                        "view": table["ViewPosition"], "study_id": study,
                        "official_split": table["split"].fillna("").map(lambda s: re.sub("^validate$", "val", s))
                        if "split" in table else ""})
    values = _values(table)
    raw["finding"] = findings_text(values, pd.to_numeric(table.get("No Finding", pd.Series("", index=table.index)),
                                                         errors="coerce") == 1)
    unknown = pd.DataFrame({f: unread for f in values.columns}, index=table.index)
    skipped: list[SkippedItem] = []
    kept = skip_rows(raw, ~frontal(raw["view"]), "view " + raw["view"].astype(str) + " is not frontal", skipped)
    return finish(kept, values.loc[kept.index], mapper, policy, skipped, check_files, unknown.loc[kept.index])
