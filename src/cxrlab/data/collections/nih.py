"""NIH ChestX-ray14 (Wang et al., CVPR 2017): 112 120 frontal images, 14 text-mined findings.

Layout (as released, or Kaggle's copy): ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``,
the 2020 revision), the images anywhere below the folder (``images/``, ``images_001/images/``, ...)
and the official patient-wise split ``train_val_list.txt`` / ``test_list.txt`` (image names). Every
image reads every finding: one not in ``Finding Labels`` is absent.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlab.data.classes import LabelMapper
from cxrlab.data.collections._common import finish, find_file, index_files, read_label_table, require
from cxrlab.data.findings import CHESTXRAY14, FindingPolicy, canonical_finding
from cxrlab.data.manifest import Manifest

TABLES = ("Data_Entry_2017_v2020.csv*", "Data_Entry_2017*.csv*")
COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def detect(root: Path) -> bool:
    return find_file(root, TABLES) is not None


def read(root: Path, mapper: LabelMapper, policy: FindingPolicy, check_files: bool = True) -> Manifest:
    """Read a ChestX-ray14 folder (see the module docstring)."""
    path = find_file(root, TABLES)
    table = read_label_table(path)
    require(table, COLUMNS, path, "ChestX-ray14 Data_Entry")
    images = index_files(root, (".png",))
    official = _official_split(root)
    raw = pd.DataFrame({
        "image": [images.get(n, str(root / "images" / n)) for n in table["Image Index"]],
        "patient_id": "nih:" + table["Patient ID"].str.lstrip("0").replace("", "0"),
        "source": "nih", "view": table["View Position"].str.strip(),
        "sex": table.get("Patient Gender", ""), "age": table.get("Patient Age", ""),
        "study_id": table.get("Follow-up #", ""), "finding": table["Finding Labels"],
        "official_split": table["Image Index"].map(official).fillna("") if official else "",
    })
    present = table["Finding Labels"].str.get_dummies(sep="|").rename(columns=canonical_finding)
    values = pd.DataFrame({f: present[f].astype(float) if f in present else 0.0 for f in CHESTXRAY14},
                          index=table.index)  # every image reads every finding
    return finish(raw, values, mapper, policy, [], check_files)  # every image is frontal (PA or AP)


def _official_split(root: Path) -> dict[str, str]:
    """Image name -> ``train`` / ``test`` from the official lists (empty when they are absent)."""
    out: dict[str, str] = {}
    for name, side in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        path = root / name
        if path.is_file():
            out.update({line.strip(): side for line in path.read_text().splitlines() if line.strip()})
    return out
