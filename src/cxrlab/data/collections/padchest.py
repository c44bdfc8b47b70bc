"""PadChest (Bustos et al., Medical Image Analysis 2020): 160 000 images of San Juan hospital,
174 findings read from Spanish reports (27% by physicians, the rest by a trained labeller).

Layout: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz)`` beside the images, in
numbered folders (``<ImageDir>/<ImageID>``) or all in one. Frontal projections (PA, AP,
AP_horizontal) are kept. A finding not among an image's ``Labels`` is absent; ``normal`` means
none. No official split.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from cxrlab.data.classes import LabelMapper
from cxrlab.data.collections._common import find_file, finish, frontal, index_files, read_label_table
from cxrlab.data.collections._common import require, skip_rows
from cxrlab.data.findings import NO_FINDING, FindingPolicy, canonical_finding
from cxrlab.data.manifest import Manifest, SkippedItem

TABLES = ("PADCHEST_chest_x_ray_images_labels_160K*.csv*",)


def detect(root: Path) -> bool:
    return find_file(root, TABLES) is not None


def _labels(text: str) -> list[str]:
    """``"['pneumonia', 'normal']"`` -> canonical finding names (``normal`` is none); unparsable: none."""
    try:
        parsed = ast.literal_eval(text) if text else []
    except (ValueError, SyntaxError):
        return []
    return [canonical_finding(str(w)) for w in parsed if str(w).strip() and str(w).strip().lower() != "normal"]


def read(root: Path, mapper: LabelMapper, policy: FindingPolicy, check_files: bool = True) -> Manifest:
    """Read a PadChest folder (see the module docstring)."""
    path = find_file(root, TABLES)
    table = read_label_table(path)
    require(table, ("ImageID", "ImageDir", "PatientID", "Projection", "Labels"), path, "PadChest")
    images = index_files(root, (".png",))
    labels = table["Labels"].map(_labels)
    year = pd.to_numeric(table.get("StudyDate_DICOM", ""), errors="coerce") // 10000
    birth = pd.to_numeric(table.get("PatientBirth", ""), errors="coerce")
    raw = pd.DataFrame({"image": [images.get(i, str((root / d / i).resolve())) for i, d in
                                  zip(table["ImageID"], table["ImageDir"])],
                        "patient_id": "padchest:" + table["PatientID"], "source": "padchest",
                        "view": table["Projection"], "sex": table.get("PatientSex_DICOM", ""),
                        "age": (year - birth).map(lambda a: "" if pd.isna(a) else str(int(a))),
                        "study_id": table.get("StudyID", "")})
    raw["finding"] = labels.map(lambda ls: "|".join(ls) or NO_FINDING)
    wanted = mapper.class_names if mapper.multilabel else ()  # 174 findings: only the scheme's are tabled
    values = pd.DataFrame({n: labels.map(lambda ls, n=n: float(n in ls)) for n in wanted}, index=table.index)
    unread = table["Labels"].str.strip().isin(["", "[]"]).to_numpy()
    skipped: list[SkippedItem] = []
    kept = skip_rows(raw, unread, "no labels in the table", skipped)
    kept = skip_rows(kept, ~frontal(kept["view"]), "projection " + kept["view"].astype(str) + " is not frontal",
                     skipped)
    return finish(kept, values.loc[kept.index], mapper, policy, skipped, check_files)
