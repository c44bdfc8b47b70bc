from __future__ import annotations

import cv2
import pandas as pd
import pytest

from cxrlab.core import ConfigError
from cxrlab.data import generate_phantoms, load_source


def test_phantoms_are_deterministic(tmp_path):
    a = generate_phantoms(tmp_path / "a", n_patients=6, size=64, seed=5)
    b = generate_phantoms(tmp_path / "b", n_patients=6, size=64, seed=5)
    for name in sorted(p.name for p in (a.parent / "images").iterdir()):
        assert (a.parent / "images" / name).read_bytes() == (b.parent / "images" / name).read_bytes()


def test_phantom_classes_lesions_and_patients(phantoms):
    manifest = load_source(phantoms)
    table = pd.read_csv(phantoms)
    assert set(manifest.table["label"]) == {"COVID-19", "Pneumonia", "Normal"}
    assert manifest.table.groupby("patient_id").size().max() > 1  # several images per patient
    assert (manifest.table.groupby("patient_id")["label"].nunique() == 1).all()
    for row in table.itertuples():
        lungs = cv2.imread(str(phantoms.parent / row.mask), 0) > 0
        lesion = cv2.imread(str(phantoms.parent / row.lesion), 0) > 0
        assert lungs.mean() > 0.1
        if row.label == "Normal":
            assert not lesion.any()
        else:
            assert lesion.any() and (lesion & lungs).sum() >= 0.9 * lesion.sum()  # opacities lie in the lungs
            halves = [lesion[:, :32].any(), lesion[:, 32:].any()]
            if row.label == "COVID-19":
                assert all(halves)  # bilateral


def test_bad_arguments():
    with pytest.raises(ConfigError, match="n_patients"):
        generate_phantoms("/tmp/never", n_patients=2)
