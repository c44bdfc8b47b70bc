"""Folder trees, metadata CSVs, manifests and auto-detection."""

from __future__ import annotations

import cv2
import pandas as pd
import pytest

from cxrlab.core import ManifestError
from cxrlab.data import LabelMapper, load_source, read_folder_tree, read_manifest, read_metadata_csv, write_manifest
from tests.conftest import gradient


def test_folder_tree_labels_patients_and_unknown_classes(bad_tree):
    root, _ = bad_tree
    m = read_folder_tree(root)
    by_name = {p.rsplit("/", 1)[1]: r for p, r in zip(m.table["image"], m.table.to_dict("records"))}
    assert by_name["person1_virus_1.jpeg"]["label"] == "Pneumonia"
    assert by_name["person1_virus_1.jpeg"]["patient_id"] == "tree:person1"  # Kermany pattern
    assert by_name["IM-0001-0001.jpeg"]["patient_id"] == "tree:IM-0001"
    assert by_name["good.dcm"]["patient_id"] == "tree:D7" and by_name["good.dcm"]["view"] == "PA"
    assert by_name["covid-0.png"]["patient_id"].startswith("image:")  # no patient info: own patient
    assert [s.reason for s in m.skipped if s.image.endswith("opacity-1.png")] == [
        "unknown label 'Lung_Opacity' for scheme 3class"]
    binary = read_folder_tree(root, LabelMapper("binary"))
    assert set(binary.table["label"]) == {"COVID-19", "non-COVID"}


def test_images_without_patient_ids_are_never_merged_by_file_name(tmp_path):
    """Same file names in two class folders, or CheXpert-style view1_frontal.png in every study
    folder of a table without patient ids: each image stays its own patient, named by its path."""
    for cls in ("COVID", "Normal"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "tree" / cls / "001.png"), gradient())
    tree = read_folder_tree(tmp_path / "tree").table
    assert sorted(tree["patient_id"]) == ["image:COVID/001.png", "image:Normal/001.png"]
    rows = []
    for study in range(4):
        (tmp_path / "table" / f"study{study}").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "table" / f"study{study}" / "view1_frontal.png"), gradient())
        rows.append({"image": f"study{study}/view1_frontal.png", "label": "Normal", "patient_id": ""})
    pd.DataFrame(rows).to_csv(tmp_path / "table" / "manifest.csv", index=False)
    ids = read_manifest(tmp_path / "table" / "manifest.csv").table["patient_id"].tolist()
    assert ids == [f"image:study{s}/view1_frontal.png" for s in range(4)]


def test_kaggle_layout_with_masks(tmp_path):
    for cls in ("COVID", "Normal"):
        (tmp_path / cls / "images").mkdir(parents=True)
        (tmp_path / cls / "masks").mkdir()
        cv2.imwrite(str(tmp_path / cls / "images" / f"{cls}-1.png"), gradient())
        cv2.imwrite(str(tmp_path / cls / "masks" / f"{cls}-1.png"), gradient())
    m = read_folder_tree(tmp_path, source="kaggle")
    assert len(m) == 2 and set(m.table["label"]) == {"COVID-19", "Normal"}
    assert all(mask.endswith(f"{lbl}/masks/{lbl}-1.png") for lbl, mask in zip(["COVID", "Normal"], m.table["mask"]))


def _cohen(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        cv2.imwrite(str(tmp_path / "images" / name), gradient())
    rows = [
        ("1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "a.jpg"),
        ("1", "Pneumonia/Viral/COVID-19", "L", "X-ray", "b.jpg"),
        ("2", "Pneumonia/Bacterial/Klebsiella", "AP Supine", "X-ray", "c.jpg"),
        ("3", "COVID-19", "Axial", "CT", "d.jpg"),
        ("4", "todo", "PA", "X-ray", "e.jpg"),
        ("5", "No Finding", "PA", "X-ray", "missing.jpg"),
    ]
    frame = pd.DataFrame(rows, columns=["patientid", "finding", "view", "modality", "filename"])
    frame["folder"] = "images"
    frame.to_csv(tmp_path / "metadata.csv", index=False)
    return tmp_path / "metadata.csv"


def test_cohen_metadata_filters_and_maps(tmp_path):
    m = read_metadata_csv(_cohen(tmp_path))
    assert m.table[["label", "patient_id", "view"]].values.tolist() == [
        ["COVID-19", "cohen:1", "PA"], ["Pneumonia", "cohen:2", "AP Supine"]]
    reasons = sorted(s.reason for s in m.skipped)
    assert reasons == ["file not found", "modality 'CT' is not X-ray", "unknown label 'todo' for scheme 3class",
                       "view 'L' is not frontal (PA/AP)"]


def test_actualmed_and_figure1_schemas(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("x1.png", "COVID-00003a.jpg", "COVID-00003b.jpg"):
        cv2.imwrite(str(tmp_path / "images" / name), gradient())
    pd.DataFrame([("ANON1", "COVID-19", "AP", "X-ray", "x1.png")],
                 columns=["patientid", "finding", "view", "modality", "imagename"]).to_csv(tmp_path / "am.csv", index=False)
    assert read_metadata_csv(tmp_path / "am.csv").table["patient_id"].tolist() == ["actualmed:ANON1"]
    pd.DataFrame([("COVID-00003a", "COVID-19", "", "X-ray"), ("COVID-00003b", "COVID-19", "AP erect", "X-ray")],
                 columns=["patientid", "finding", "view", "modality"]).to_csv(tmp_path / "f1.csv", index=False)
    strict = read_metadata_csv(tmp_path / "f1.csv")
    assert len(strict) == 1 and "view is blank" in strict.skipped[0].reason
    kept = read_metadata_csv(tmp_path / "f1.csv", keep_blank_view=True)
    assert kept.table["patient_id"].tolist() == ["figure1:COVID-00003", "figure1:COVID-00003"]


def test_manifest_roundtrip_csv_and_parquet(phantoms, tmp_path):
    m = read_manifest(phantoms)
    for name in ("copy.csv", "copy.parquet"):
        write_manifest(m, tmp_path / "out" / name)
        again = read_manifest(tmp_path / "out" / name)
        pd.testing.assert_frame_equal(again.table[["image", "label", "patient_id"]], m.table[["image", "label", "patient_id"]])
    assert pd.read_csv(tmp_path / "out" / "copy.csv")["image"][0].startswith("../")  # stored relative


def test_missing_columns_name_file_and_columns(tmp_path):
    pd.DataFrame({"image": ["a.png"], "label": ["COVID"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match=r"m\.csv: missing column\(s\) patient_id"):
        read_manifest(tmp_path / "m.csv")
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(ManifestError, match="odd.csv: not a manifest"):
        load_source(tmp_path / "odd.csv")


def test_load_source_detects_each_kind(phantoms, bad_tree, tmp_path):
    assert len(load_source(phantoms)) > 0
    assert len(load_source(bad_tree[0])) > 0
    assert load_source(_cohen(tmp_path)).table["source"].tolist() == ["cohen", "cohen"]
    with pytest.raises(ManifestError, match="not found"):
        load_source(tmp_path / "nothing")


def test_parquet_nulls_read_as_empty_text(phantoms, tmp_path):
    table = pd.read_csv(phantoms)
    table["image"] = [str(phantoms.parent / p) for p in table["image"]]
    table["mask"] = None
    table.to_parquet(tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    assert set(m.table["mask"]) == {""} and len(m) == len(table)
