"""PadChest (Bustos et al., Medical Image Analysis 2020): 160 000 images of San Juan hospital,
174 findings read from Spanish reports (27% by physicians, the rest by a trained labeller).

Layout: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz)`` beside the images, in
numbered folders (``<ImageDir>/<ImageID>``) or all in one. Frontal projections (PA, AP,
AP_horizontal) are kept. No official split.

PadChest names sub-types (``laminar atelectasis``, ``loculated pleural effusion``, ``apical pleural
thickening``, ``multiple nodules``): ``padchest_findings.csv`` says, label by label, which finding
each one *counts* for, which finding it leaves *unknown* (a sign or a related pattern: the report may
not have named the finding, so it is neither present nor absent) and which look-alikes do *not*
count (``pseudonodule``, ``pericardial effusion``, ``subcutaneous emphysema``). A label not in that
table is a finding of its own name. A finding not among an image's labels is absent, except on an
image labelled only ``unchanged`` (the report compares with an earlier one and names nothing: every
finding unknown); ``normal`` means none; images labelled ``exclude`` are left out.
"""

from __future__ import annotations

import ast
import functools
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.classes import LabelMapper
from cxrlab.data.collections._common import find_file, finish, frontal, index_files, read_label_table
from cxrlab.data.collections._common import require, skip_rows
from cxrlab.data.findings import NO_FINDING, FindingPolicy, canonical_finding
from cxrlab.data.manifest import Manifest, SkippedItem

TABLES = ("PADCHEST_chest_x_ray_images_labels_160K*.csv*",)
RELATIONS = ("counts", "unknown", "not")
UNCHANGED, EXCLUDE, NORMAL = "unchanged", "exclude", "normal"


def detect(root: Path) -> bool:
    return find_file(root, TABLES) is not None


@functools.cache
def finding_table() -> pd.DataFrame:
    """``padchest_findings.csv``: ``label`` (lower case), ``finding``, ``relation`` (counts / unknown /
    not) and ``why``; a label may relate to two findings (``hydropneumothorax``)."""
    with resources.files(__package__).joinpath("padchest_findings.csv").open() as f:
        table = pd.read_csv(f, dtype=str, keep_default_na=False)
    table["label"] = table["label"].str.strip().str.lower()
    bad = set(table["relation"]) - set(RELATIONS)
    if bad:  # the shipped table is the package's own: a wrong relation is a packaging error
        raise ValueError(f"padchest_findings.csv: unknown relation(s) {sorted(bad)}")
    return table


def _labels(text: str) -> list[str]:
    """``"['pneumonia', ' normal']"`` -> ``["pneumonia", "normal"]`` (lower case, stripped); unparsable: none."""
    try:
        parsed = ast.literal_eval(text) if text else []
    except (ValueError, SyntaxError):
        return []
    return [w for w in (str(x).strip().lower() for x in parsed) if w]


def read_findings(labels: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """What each image's labels say, through :func:`finding_table`.

    Args:
        labels: Per image, its lower-case labels (:func:`_labels`).

    Returns:
        ``(present, unknown, text)``: booleans per image and finding (present: a label counts for
        it; unknown: not present, and a label leaves it unknown, or the image is labelled only
        ``unchanged``), and the image's finding text (the present findings joined by ``|``,
        ``No Finding`` when none, empty for an ``unchanged``-only image).
    """
    long = labels.explode().dropna().rename("label").reset_index()
    long = long[~long["label"].isin([NORMAL, UNCHANGED, EXCLUDE])]
    related = long.merge(finding_table(), on="label", how="left")
    own = related["finding"].isna()  # a label the table does not name: a finding of its own name
    related.loc[own, "finding"] = related.loc[own, "label"].map(canonical_finding)
    related.loc[own, "relation"] = "counts"
    index = labels.index
    columns = pd.Index(sorted(set(related["finding"])))
    position = pd.Series(range(len(index)), index=index)

    def table(rows: pd.DataFrame) -> pd.DataFrame:  # (image, finding) pairs -> booleans; crosstab is 20x slower
        out = np.zeros((len(index), len(columns)), dtype=bool)
        out[position[rows["index"]].to_numpy(), columns.get_indexer(rows["finding"])] = True
        return pd.DataFrame(out, index=index, columns=columns)

    counts = related[related["relation"] == "counts"]
    present = table(counts)
    unknown = table(related[related["relation"] == "unknown"]) & ~present
    only_unchanged = labels.map(lambda ls: UNCHANGED in ls and not set(ls) - {UNCHANGED, NORMAL}).to_numpy()
    unknown.loc[only_unchanged] = True
    named: dict = {}
    for image, finding in zip(counts["index"], counts["finding"]):  # in the order the report names them
        named.setdefault(image, {})[finding] = None
    text = pd.Series([NO_FINDING if i not in named else "|".join(named[i]) for i in index], index=index)
    return present, unknown, text.where(~only_unchanged, "")


def read(root: Path, mapper: LabelMapper, policy: FindingPolicy, check_files: bool = True) -> Manifest:
    """Read a PadChest folder (see the module docstring)."""
    path = find_file(root, TABLES)
    table = read_label_table(path)
    require(table, ("ImageID", "ImageDir", "PatientID", "Projection", "Labels"), path, "PadChest")
    images = index_files(root, (".png",))
    labels = table["Labels"].map(_labels)
    year = pd.to_numeric(table.get("StudyDate_DICOM", ""), errors="coerce") // 10000
    birth = pd.to_numeric(table.get("PatientBirth", ""), errors="coerce")
    raw = pd.DataFrame({"image": [images.get(i) or os.path.join(root, d, i) for i, d in  # root is resolved
                                  zip(table["ImageID"], table["ImageDir"])],
                        "patient_id": "padchest:" + table["PatientID"], "source": "padchest",
                        "view": table["Projection"], "sex": table.get("PatientSex_DICOM", ""),
                        "age": (year - birth).map(lambda a: "" if pd.isna(a) else str(int(a))),
                        "study_id": table.get("StudyID", "")})
    present, unknown, raw["finding"] = read_findings(labels)
    vocabulary = set(present.columns) | set(finding_table()["finding"])  # what PadChest reads (else: never read)
    wanted = [n for n in (mapper.class_names if mapper.multilabel else ()) if n in vocabulary]
    values = present.reindex(columns=wanted, fill_value=False).astype(float)  # 174 findings: the scheme's only
    unknown = unknown.reindex(columns=wanted, fill_value=False)
    skipped: list[SkippedItem] = []
    kept = skip_rows(raw, labels.map(len).eq(0).to_numpy(), "no labels in the table", skipped)
    kept = skip_rows(kept, labels[kept.index].map(lambda ls: EXCLUDE in ls).to_numpy(),
                     "labelled 'exclude' by PadChest (an unusable image)", skipped)
    kept = skip_rows(kept, ~frontal(kept["view"]), "projection " + kept["view"].astype(str) + " is not frontal",
                     skipped)
    return finish(kept, values.loc[kept.index], mapper, policy, skipped, check_files, unknown.loc[kept.index])
