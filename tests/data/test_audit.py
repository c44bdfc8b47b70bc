from __future__ import annotations

import cv2
import numpy as np

from cxrlab.data import SplitConfig, audit_splits, check_no_leakage, dedupe_splits, group_patients, load_source, make_splits


def _split_with_planted_copy(phantoms, tmp_path):
    manifest = load_source(phantoms)
    frame, _ = make_splits(manifest.table, manifest.class_names, SplitConfig(ratios=(0.6, 0.2, 0.2), folds=2))
    train_row = frame[frame.split == "train"].iloc[0]
    # a re-published copy: re-encoded as JPEG, brighter, under another patient in another source
    copy = np.clip(cv2.imread(train_row["image"], 0).astype(int) + 12, 0, 255).astype(np.uint8)
    copy_path = tmp_path / "copy.jpg"
    cv2.imwrite(str(copy_path), copy, [cv2.IMWRITE_JPEG_QUALITY, 80])
    extra = train_row.copy()
    extra["image"], extra["patient_id"], extra["source"], extra["split"], extra["fold"] = (
        str(copy_path), "other:1", "other", "test", -1)
    frame.loc[len(frame)] = extra
    return frame, train_row["image"], str(copy_path)


def test_audit_finds_planted_copy_across_sides_and_sources(phantoms, tmp_path):
    frame, original, copy = _split_with_planted_copy(phantoms, tmp_path)
    report = audit_splits(frame)
    assert report.leakage is None
    pairs = {frozenset((r.image_a, r.image_b)) for r in report.cross_side.itertuples()}
    assert frozenset((original, copy)) in pairs
    assert frozenset((original, copy)) in {frozenset((r.image_a, r.image_b)) for r in report.cross_source.itertuples()}
    assert len(report.cross_side) == 1  # the phantoms themselves are not near-duplicates
    text = report.to_markdown()
    assert "across sides: 1" in text and "| test |" in text


def test_drop_and_regroup_remove_the_cross_side_copy(phantoms, tmp_path):
    frame, original, copy = _split_with_planted_copy(phantoms, tmp_path)
    report = audit_splits(frame)
    dropped = dedupe_splits(frame, report, "drop")
    assert copy not in set(dropped.image) and original in set(dropped.image)
    regrouped = dedupe_splits(frame, report, "regroup")
    sides = regrouped.set_index("image").loc[[original, copy], "split"]
    assert sides.nunique() == 1 and len(regrouped) == len(frame)
    check_no_leakage(regrouped)
    assert audit_splits(regrouped).cross_side.empty


def test_group_patients_joins_linked_patients():
    groups = np.array([0, 1, 1, 2, 3])  # images 1 and 2 are copies
    ids = group_patients(["a", "b", "c", "c", "d"], groups)
    assert ids[1] == ids[2] == ids[3] and len({ids[0], ids[1], ids[4]}) == 3


def _republished(phantoms, tmp_path, copies: int = 12):
    """The phantoms plus ``copies`` re-published images (JPEG, brighter) under new patient ids."""
    import pandas as pd

    table = load_source(phantoms).table.reset_index(drop=True)
    originals = table.drop_duplicates("patient_id").head(copies)
    rows = []
    for i, row in enumerate(originals.itertuples()):
        copy = np.clip(cv2.imread(row.image, 0).astype(int) + 12, 0, 255).astype(np.uint8)
        path = tmp_path / f"copy{i}.jpg"
        cv2.imwrite(str(path), copy, [cv2.IMWRITE_JPEG_QUALITY, 80])
        rows.append({**row._asdict(), "image": str(path), "patient_id": f"other:{i}", "source": "other"})
    frame = pd.concat([table, pd.DataFrame(rows).drop(columns="Index")], ignore_index=True)
    frame.to_csv(tmp_path / "republished.csv", index=False)
    return tmp_path / "republished.csv", dict(zip([f"other:{i}" for i in range(copies)], originals["patient_id"],
                                                  strict=True))


def _side_of_copies(frame, pairs, column: str) -> list[bool]:
    side = frame.groupby("patient_id")[column].first()
    return [side[copy] == side[original] for copy, original in pairs.items() if copy in side and original in side]


def test_every_split_keeps_republished_copies_with_their_originals(phantoms, tmp_path):
    from cxrlab.models import get_backbone_spec
    from cxrlab.study import StudyConfig
    from cxrlab.workflows.crossval import crossval_split
    from cxrlab.study.plan import study_split
    from cxrlab.train import build_config
    from cxrlab.train.data import load_train_data

    data, pairs = _republished(phantoms, tmp_path)
    spec = get_backbone_spec("efficientnet_lite0")
    for dedupe in (True, False):
        config = build_config({"data": str(data), "out": str(tmp_path / f"t{dedupe}"), "size": 32, "ratios": (0.6, 0.2, 0.2),
                               "dedupe": dedupe})
        trained = load_train_data(config, spec, tmp_path / f"t{dedupe}").frame
        study = study_split(StudyConfig(data=str(data), folds=3, dedupe=dedupe, grid={"size": [32]}), tmp_path / f"s{dedupe}")
        cross = crossval_split(config.replace({"folds": 3, "out": str(tmp_path / f"c{dedupe}")}),
                               tmp_path / f"c{dedupe}")
        together = [_side_of_copies(trained, pairs, "split"), _side_of_copies(study, pairs, "split"),
                    _side_of_copies(study[study["split"] != "test"], pairs, "fold"), _side_of_copies(cross, pairs, "fold")]
        if dedupe:  # by default every copy sits with its original: on one side, in one fold
            assert all(all(t) for t in together), together
        else:  # opted out, 12 copies split by patient id alone land apart (chance of not: < 1e-4)
            assert not any(all(t) for t in together if len(t) >= 6), together
    merged = __import__("json").loads((tmp_path / "tTrue" / "splits.json").read_text())["duplicates"]
    assert merged["patients_joined"] == 24 and len(merged["groups"]) == 12


def test_without_duplicates_the_grouped_split_is_the_patient_split(phantoms):
    from cxrlab.data.duplicates import regroup_duplicates

    table, merged = regroup_duplicates(load_source(phantoms).table)
    assert merged["pairs"] == 0 and (table["group_id"] == table["patient_id"].astype(str)).all()
    by_group, _ = make_splits(table, ("COVID-19", "Pneumonia", "Normal"), SplitConfig(group_column="group_id"))
    by_patient, _ = make_splits(table, ("COVID-19", "Pneumonia", "Normal"), SplitConfig())
    assert by_group["split"].tolist() == by_patient["split"].tolist()


def test_a_given_split_with_copies_on_two_sides_is_refused(phantoms, tmp_path):
    import pytest

    from cxrlab.core.errors import LeakageError
    from cxrlab.data.audit import check_no_copies

    frame, _, copy = _split_with_planted_copy(phantoms, tmp_path)
    with pytest.raises(LeakageError, match=r"1 pair\(s\) of copies .*copy.jpg \(test\).*--fix regroup"):
        check_no_copies(frame, "my/splits.csv")
    check_no_copies(frame[frame["image"] != copy], "my/splits.csv")  # without it: accepted


def test_leave_one_source_out_keeps_copies_of_the_held_out_source_out_of_training(phantoms, tmp_path):
    from cxrlab.data import leave_one_source_out
    from cxrlab.data.duplicates import regroup_duplicates

    frame, original, copy = _split_with_planted_copy(phantoms, tmp_path)  # the copy is in source "other"
    grouped, _ = regroup_duplicates(frame.drop(columns=["split", "fold"]))
    names = ("COVID-19", "Pneumonia", "Normal")
    held_other = leave_one_source_out(grouped, names, val_ratio=0.2, group_column="group_id")["other"]
    assert held_other.set_index("image").loc[copy, "split"] == "test"
    assert original not in set(held_other["image"])  # its copy is the test side: left out of training
    by_patient = leave_one_source_out(grouped, names, val_ratio=0.2)["other"]
    assert original in set(by_patient["image"])  # patient ids alone would have trained on it
