"""Integration on a few images of ../shared/data/cxr-real (skipped when the folder is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlab.data import SplitConfig, load_source, make_splits, read_manifest
from cxrlab.data.manifest import Manifest
from cxrlab.preprocess import PreprocessConfig, ShardReader, prepare

pytestmark = pytest.mark.realdata


def test_real_manifest_loads_and_splits_without_leakage(real_data):
    manifest = read_manifest(real_data / "manifest.csv")
    assert len(manifest) == 527 and not manifest.skipped
    assert set(manifest.table["source"]) == {"cohen", "actualmed", "figure1", "nih"}
    frame, info = make_splits(manifest.table, manifest.class_names, SplitConfig(seed=0))
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()  # incl. the 6 two-label patients
    assert info["counts"]["test"]["images"] > 30


def test_prepare_a_few_real_images(real_data, tmp_path):
    manifest = read_manifest(real_data / "manifest.csv")
    few = manifest.table.groupby("source").head(3)  # three images of each source
    subset = Manifest(few, manifest.class_names)
    summary = prepare(subset, tmp_path, PreprocessConfig(size=224, contrast="clahe"), workers=1)
    assert summary.images == len(few) and not summary.skipped
    images = ShardReader(tmp_path).images()
    assert images.shape == (len(few), 224, 224)
    assert images.std(axis=(1, 2)).min() > 20  # real contrast, not blank arrays


def test_lung_crop_on_real_masks(real_data, tmp_path):
    manifest = load_source(real_data / "manifest.csv")
    with_mask = manifest.table[manifest.table["mask"] != ""].head(4)
    summary = prepare(Manifest(with_mask, manifest.class_names), tmp_path,
                      PreprocessConfig(size=128, lung_crop=True), workers=1)
    assert summary.images == 4
    assert np.all(ShardReader(tmp_path).images().mean(axis=(1, 2)) > 10)


def test_real_xrays_through_the_screening_service(real_data, run_dir):
    from fastapi.testclient import TestClient

    from cxrlab.serve import create_app

    table = read_manifest(real_data / "manifest.csv").table
    one_per_source = table.groupby("source").head(1)
    with TestClient(create_app(run_dir)) as client:
        for image in one_per_source["image"]:
            with open(image, "rb") as handle:
                response = client.post("/predict", files={"file": (image.rsplit("/", 1)[-1], handle.read())})
            assert response.status_code == 200, response.text
            body = response.json()
            assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
            # a model trained on synthetic phantoms sees real radiographs as unlike its training data
            assert body["ood"] is True, (image, body["ood_score"])


def test_the_hash_index_finds_the_same_near_duplicates_as_all_pairs_on_real_images(real_data):
    from cxrlab.data.duplicates import compute_hashes, find_near_duplicates

    table = read_manifest(real_data / "manifest.csv").table
    hashes = compute_hashes(table["image"].tolist(), workers=2)
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    for max_distance in (4, 10):  # the default, and a looser one that pairs more of these images
        i, j = np.nonzero(np.triu(distance <= max_distance, k=1))
        expected = [(int(a), int(b), int(distance[a, b])) for a, b in zip(i, j)]
        assert find_near_duplicates(hashes, max_distance) == expected
