"""VinDr-CXR (Nguyen et al., Scientific Data 2022): 18 000 DICOMs of two Vietnamese hospitals, each
training image read by three radiologists, each test image by a consensus of five.

Layouts: PhysioNet's (``annotations/annotations_train.csv``, ``annotations/annotations_test.csv``,
optionally ``annotations/image_labels_{train,test}.csv`` with global labels such as Pneumonia;
images ``train/<image_id>.dicom``, ``test/...``) or the Kaggle competition's (``train.csv``:
``image_id, class_name, rad_id``, boxes; ``train/<image_id>.dicom``). A finding is present when
any radiologist reports it. VinDr's one class ``Nodule/Mass`` stands for two findings: where it is
reported, Nodule and Mass are both unknown (which one is not said); where it is not, both are
absent. Images carry no patient id (each is its own patient: logged).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlab.data.classes import LabelMapper
from cxrlab.data.collections._common import findings_text, finish, index_files, read_label_table, require
from cxrlab.data.findings import NO_FINDING, FindingPolicy, canonical_finding
from cxrlab.data.manifest import Manifest

LOCAL = "image_id,class_name"
NODULE_MASS = "Nodule/Mass"


def _tables(root: Path) -> list[tuple[Path, str]]:
    physionet = [(root / "annotations" / f"annotations_{s}.csv", s) for s in ("train", "test")]
    if any(p.is_file() for p, _ in physionet):
        return [(p, s) for p, s in physionet if p.is_file()]
    kaggle = root / "train.csv"
    return [(kaggle, "")] if kaggle.is_file() and LOCAL in kaggle.open().readline().replace(" ", "") else []


def detect(root: Path) -> bool:
    return bool(_tables(root))


def read(root: Path, mapper: LabelMapper, policy: FindingPolicy, check_files: bool = True) -> Manifest:
    """Read a VinDr-CXR folder (see the module docstring)."""
    images = index_files(root, (".dicom", ".dcm", ".png", ".jpg"))
    parts = []
    for path, side in _tables(root):
        table = read_label_table(path)
        require(table, ("image_id", "class_name"), path, "VinDr-CXR annotations")
        found = table.assign(finding=table["class_name"].map(canonical_finding))[["image_id", "finding"]]
        glob = path.parent / f"image_labels_{side}.csv"
        if side and glob.is_file():  # global labels: one column per label, 1 where a reader gave it
            wide = read_label_table(glob)
            long = wide.melt(id_vars=[c for c in wide.columns if c.lower() in ("image_id", "rad_id")],
                             var_name="finding", value_name="value")
            long = long[pd.to_numeric(long["value"], errors="coerce") == 1]
            found = pd.concat([found, long.assign(finding=long["finding"].map(canonical_finding))[["image_id",
                                                                                                  "finding"]]])
        present = pd.crosstab(found["image_id"], found["finding"]).clip(upper=1).astype(float)
        present = present.drop(columns=[NO_FINDING], errors="ignore")
        normal = pd.Series(present.sum(axis=1) == 0, index=present.index)
        stems = present.index.to_series()
        parts.append((pd.DataFrame({
            "image": [images.get(f"{s}.dicom") or images.get(f"{s}.dcm") or images.get(f"{s}.png")
                      or str((root / (side or "train") / f"{s}.dicom").resolve()) for s in stems],
            "patient_id": "", "source": "vindr", "view": "PA", "study_id": stems.to_numpy(),
            "finding": findings_text(present, normal), "official_split": side}), present.reset_index(drop=True)))
    raw = pd.concat([p[0] for p in parts], ignore_index=True)
    values = pd.concat([p[1] for p in parts], ignore_index=True).fillna(0.0)  # what no reader reported is absent
    raw["patient_id"] = "vindr:" + raw["study_id"]  # no patient ids in the release: an image is a patient
    # one class for two findings: where it is reported, which one is not known; where not, neither is there
    combined = values.pop(NODULE_MASS).astype(bool) if NODULE_MASS in values else pd.Series(False, index=values.index)
    values = values.assign(Nodule=0.0, Mass=0.0)
    unknown = pd.DataFrame({"Nodule": combined, "Mass": combined})
    return finish(raw, values, mapper, policy, [], check_files, unknown)
