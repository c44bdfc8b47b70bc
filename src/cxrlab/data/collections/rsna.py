"""RSNA Pneumonia Detection Challenge (2018): 26 684 DICOMs from ChestX-ray14, read again by
radiologists for lung opacities suspicious of pneumonia.

Layout: ``stage_2_train_labels.csv`` (``patientId, x, y, width, height, Target``; one row per box),
optionally ``stage_2_detailed_class_info.csv`` (``patientId, class``: ``Lung Opacity``,
``No Lung Opacity / Not Normal``, ``Normal``) and ``stage_2_train_images/<patientId>.dcm``. One
image per patient. ``Target`` 1 is the finding ``Pneumonia``, its boxes the image's ``lesion``
(``boxes:x,y,w,h;...``, the regions the pointing game checks Grad-CAM against); the 3-class scheme keeps ``Normal``
and ``Pneumonia`` images and leaves out "not normal" ones. View, sex and age come from the DICOM
headers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom

from cxrlab.data.classes import LabelMapper
from cxrlab.data.collections._common import find_file, finish, frontal, read_label_table, require, skip_rows
from cxrlab.data.boxes import format_boxes
from cxrlab.data.findings import FindingPolicy
from cxrlab.data.manifest import Manifest, SkippedItem

TABLES = ("stage_2_train_labels.csv", "stage_1_train_labels.csv")


def detect(root: Path) -> bool:
    return find_file(root, TABLES) is not None


def _header(path: str) -> dict[str, str]:
    """View, sex and age from a DICOM header (empty when the file cannot be read: the manifest then
    names the file as unreadable)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ViewPosition", "PatientSex", "PatientAge"])
    except Exception:  # pydicom raises many error types; a missing or broken file is reported later
        return {"view": "", "sex": "", "age": ""}
    return {"view": str(ds.get("ViewPosition", "")), "sex": str(ds.get("PatientSex", "")),
            "age": str(ds.get("PatientAge", "")).lstrip("0")}


def _boxes(boxes: pd.DataFrame) -> pd.Series:
    """Per patient, its opacity boxes as a manifest's ``lesion`` value (``boxes:x,y,w,h;...``, in the
    1024-px image's pixels): what the pointing game checks a map against."""
    if not {"x", "y", "width", "height"} <= set(boxes.columns):
        return pd.Series(dtype=str)
    numbers = boxes[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce")
    rows = boxes.assign(**numbers)[numbers.notna().all(axis=1) & (numbers["width"] > 0) & (numbers["height"] > 0)]
    return rows.groupby("patientId").apply(
        lambda part: format_boxes(part[["x", "y", "width", "height"]].itertuples(index=False)), include_groups=False)


def read(root: Path, mapper: LabelMapper, policy: FindingPolicy, check_files: bool = True) -> Manifest:
    """Read an RSNA Pneumonia folder (see the module docstring)."""
    path = find_file(root, TABLES)
    boxes = read_label_table(path)
    require(boxes, ("patientId", "Target"), path, "RSNA Pneumonia labels")
    table = boxes.assign(Target=pd.to_numeric(boxes["Target"], errors="coerce")).groupby(
        "patientId", sort=True, as_index=False)["Target"].max()
    info = find_file(root, [path.name.replace("train_labels", "detailed_class_info")])
    detail = (read_label_table(info).drop_duplicates("patientId").set_index("patientId")["class"]
              if info else pd.Series(dtype=str))
    folder = root / path.name.replace("_labels.csv", "_images")
    image = [str((folder / f"{p}.dcm").resolve()) for p in table["patientId"]]
    headers = pd.DataFrame([_header(p) for p in image])
    text = table["patientId"].map(detail).fillna("")
    finding = [("Pneumonia" if t == 1 else (c or "Normal")) for t, c in zip(table["Target"], text)]
    raw = pd.DataFrame({"image": image, "patient_id": "rsna:" + table["patientId"], "source": "rsna",
                        "view": headers["view"], "sex": headers["sex"], "age": headers["age"], "finding": finding,
                        "lesion": table["patientId"].map(_boxes(boxes)).fillna("")})
    values = pd.DataFrame({"Pneumonia": table["Target"].astype(float)})
    skipped: list[SkippedItem] = []
    odd = (~frontal(raw["view"])) & (raw["view"] != "")  # an unreadable header: the file check names it
    kept = skip_rows(raw, odd, "view " + raw["view"] + " is not frontal", skipped)
    return finish(kept, values.loc[kept.index], mapper, policy, skipped, check_files)
