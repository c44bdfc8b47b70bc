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
