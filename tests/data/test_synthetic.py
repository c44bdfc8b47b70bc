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


def test_counterfactual_without_the_lesion_changes_only_the_lesion():
    import numpy as np

    from cxrlab.data.synthetic import random_anatomy, render_phantom

    anatomy = random_anatomy(np.random.default_rng(5))
    with_it, lungs, lesion = render_phantom(128, "Pneumonia", anatomy, np.random.default_rng(6))
    without, lungs0, lesion0 = render_phantom(128, "Pneumonia", anatomy, np.random.default_rng(6), with_lesion=False)
    assert (lungs == lungs0).all() and (lesion == lesion0).all() and lesion.any()
    near = cv2.dilate(lesion, np.ones((15, 15), np.uint8)) > 0  # the opacity's blurred rim
    difference = with_it.astype(int) - without.astype(int)
    assert (difference[~near] == 0).all()
    assert difference[lesion > 0].mean() > 40  # a dense opacity: clearly brighter
