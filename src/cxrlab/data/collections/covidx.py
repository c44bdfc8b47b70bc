"""COVIDx (Wang et al., COVID-Net, Scientific Reports 2020): images gathered from Cohen's
collection, Actualmed, Figure 1, SIRM, RICORD, RSNA and others, with a patient-wise split.

Layout: ``train.txt`` and ``test.txt`` (and ``val.txt`` in later releases), one image a line:
``patient_id filename label source``; images in ``train/``, ``test/`` (and ``val/``). Labels are
``COVID-19`` / ``pneumonia`` / ``normal`` (COVIDx up to v8) or ``positive`` / ``negative``
(COVIDx CXR-3 and later: COVID-19 or not, which the 3-class scheme cannot use; under a multi-label
scheme, such an image's Pneumonia and Normal are unknown, not absent). ``source`` is
the collection each image came from, so per-source figures are the real sources.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlab.core.errors import ManifestError
from cxrlab.data.classes import LabelMapper
from cxrlab.data.collections._common import finish
from cxrlab.data.findings import FindingPolicy
from cxrlab.data.manifest import Manifest, SkippedItem

SIDES = (("train.txt", "train"), ("val.txt", "val"), ("test.txt", "test"))
BINARY = {"positive": "COVID-19", "negative": "non-COVID"}


def _fields(line: str) -> list[str]:
    return line.split()


def detect(root: Path) -> bool:
    """A COVIDx side list (``train.txt``, ``val.txt`` or ``test.txt``) whose first line has COVIDx's
    fields; one side alone is still COVIDx (read with the sides it has)."""
    for name, _ in SIDES:
        path = root / name
        if path.is_file():
            with path.open(errors="replace") as f:
                first = next((line for line in f if line.strip()), "")
            if len(_fields(first)) >= 3:
                return True
    return False


def read(root: Path, mapper: LabelMapper, policy: FindingPolicy, check_files: bool = True) -> Manifest:
    """Read a COVIDx folder (see the module docstring)."""
    rows, skipped = [], []
    for name, side in SIDES:
        path = root / name
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = _fields(line)
            if not fields:
                continue
            if len(fields) < 3:
                skipped.append(SkippedItem(f"{path}:{number}", "expected 'patient_id filename label [source]'"))
                continue
            patient, filename, label = fields[:3]
            source = fields[3] if len(fields) > 3 else "covidx"
            folder = root / side if (root / side).is_dir() else root
            rows.append({"image": str((folder / filename).resolve()), "patient_id": f"{source}:{patient}",
                         "source": source, "view": "", "finding": BINARY.get(label.lower(), label),
                         "official_split": side})
    if not rows:
        raise ManifestError(f"{root}: {', '.join(n for n, _ in SIDES)} list no images")
    raw = pd.DataFrame(rows)
    text = raw["finding"].str.lower()
    three = text.isin(["covid-19", "pneumonia", "normal"])  # the older releases' classes: each one known
    values = pd.DataFrame({"COVID-19": (text == "covid-19").astype(float),
                           "Pneumonia": (text == "pneumonia").astype(float),
                           "Normal": (text == "normal").astype(float)})
    # CXR-3's "negative" says COVID-19 is absent, not whether the image shows pneumonia or is normal
    unknown = pd.DataFrame({"Pneumonia": ~three, "Normal": ~three})
    return finish(raw, values, mapper, policy, skipped, check_files, unknown)
