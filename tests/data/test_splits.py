from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlab.core import ConfigError, LeakageError
from cxrlab.data import (
    SplitConfig,
    check_no_leakage,
    leave_one_source_out,
    load_source,
    make_splits,
    read_splits,
    write_splits,
)


def _table(n_patients=120, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = ("COVID-19", "Pneumonia", "Normal")[p % 3]
        for k in range(int(rng.integers(1, 4))):
            rows.append({"image": f"/x/p{p}-{k}.png", "label": label, "patient_id": f"s:{p}",
                         "source": f"src{p % 4}", "view": "PA"})
    return pd.DataFrame(rows)


CLASSES = ("COVID-19", "Pneumonia", "Normal")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.8, 0.2, 0.0), (0.7, 0.15, 0.15)])
def test_split_is_grouped_stratified_and_near_ratios(seed, ratios):
    table = _table(seed=seed)
    frame, info = make_splits(table, CLASSES, SplitConfig(ratios=ratios, folds=5, seed=seed))
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    assert (frame[frame.split == "train"].groupby("patient_id")["fold"].nunique() == 1).all()
    for side, share in zip(("train", "val", "test"), ratios):
        assert abs((frame.split == side).mean() - share) < 0.06
    for side in ("train", "val", "test"):
        rows = frame[frame.split == side]
        if len(rows) and ratios[("train", "val", "test").index(side)] >= 0.1:
            assert set(rows.label) == set(CLASSES)  # stratified: every class on every side
    assert sorted(frame.loc[frame.split == "train", "fold"].unique()) == [0, 1, 2, 3, 4]
    assert (frame.loc[frame.split != "train", "fold"] == -1).all()
    assert info["counts"]["train"]["images"] == int((frame.split == "train").sum())


def test_same_seed_same_split_other_seed_other_split():
    table = _table()
    a, _ = make_splits(table, CLASSES, SplitConfig(seed=3))
    b, _ = make_splits(table, CLASSES, SplitConfig(seed=3))
    c, _ = make_splits(table, CLASSES, SplitConfig(seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


def test_patient_with_two_labels_stays_on_one_side():
    table = _table()
    table.loc[table.patient_id == "s:0", "label"] = ["COVID-19", "Normal", "Normal"][: (table.patient_id == "s:0").sum()]
    frame, _ = make_splits(table, CLASSES, SplitConfig())
    assert frame.loc[frame.patient_id == "s:0", "split"].nunique() == 1


def test_undersample_and_weights():
    table = _table()
    table = pd.concat([table, table[table.label == "COVID-19"].assign(
        image=lambda f: f.image + "b", patient_id=lambda f: f.patient_id + "b")])
    frame, _ = make_splits(table, CLASSES, SplitConfig(balance="undersample"))
    counts = frame[frame.split == "train"].label.value_counts()
    assert counts.nunique() == 1
    everywhere, _ = make_splits(table, CLASSES, SplitConfig(balance="undersample", balance_scope="all"))
    assert everywhere.label.value_counts().nunique() == 1
    _, info = make_splits(table, CLASSES, SplitConfig(balance="weights"))
    weights = info["class_weights"]
    assert weights["COVID-19"] < weights["Normal"]


def test_leakage_guard_names_patient_and_sides(tmp_path):
    frame, info = make_splits(_table(), CLASSES, SplitConfig())
    patient = frame.loc[frame.split == "test", "patient_id"].iloc[0]
    frame.loc[frame.index[(frame.patient_id == patient)][0], "split"] = "train"
    frame.loc[frame.patient_id == patient, "fold"] = -1
    if (frame.patient_id == patient).sum() == 1:  # need two images to straddle
        extra = frame[frame.patient_id == patient].assign(split="test", image="/x/extra.png")
        frame = pd.concat([frame, extra])
    with pytest.raises(LeakageError, match=f"patient '{patient}' is on sides test and train"):
        check_no_leakage(frame)
    write_splits(frame, info, tmp_path)  # a bad file on disk ...
    with pytest.raises(LeakageError, match=patient):  # ... is refused by every reader
        read_splits(tmp_path / "splits.csv")
    with pytest.raises(LeakageError):
        load_source(tmp_path / "splits.csv")


def test_fold_leakage_is_refused():
    frame, _ = make_splits(_table(), CLASSES, SplitConfig())
    patient = frame.loc[frame.split == "train"].groupby("patient_id").size().idxmax()
    rows = frame.index[frame.patient_id == patient]
    frame.loc[rows[0], "fold"] = (frame.loc[rows[1], "fold"] + 1) % 5
    with pytest.raises(LeakageError, match="CV folds"):
        check_no_leakage(frame)


def test_leave_one_source_out():
    table = _table()
    splits = leave_one_source_out(table, CLASSES, val_ratio=0.1)
    assert sorted(splits) == ["src0", "src1", "src2", "src3"]
    for source, frame in splits.items():
        assert set(frame.loc[frame.split == "test", "source"]) == {source}
        assert source not in set(frame.loc[frame.split != "test", "source"])


@pytest.mark.parametrize("kwargs, field", [
    ({"ratios": (0.5, 0.6, 0.1)}, "ratios"), ({"ratios": (0.0, 0.5, 0.5)}, "ratios"),
    ({"folds": -1}, "folds"), ({"balance": "smote"}, "balance"),
])
def test_bad_config_names_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SplitConfig(**kwargs)


def test_odd_ratios_and_too_few_patients():
    with pytest.raises(ConfigError, match="multiples of 1/20"):
        make_splits(_table(), CLASSES, SplitConfig(ratios=(0.83, 0.17, 0.0)))
    with pytest.raises(ConfigError, match="too few patients"):
        make_splits(_table(n_patients=6), CLASSES, SplitConfig(ratios=(0.9, 0.05, 0.05)))


def test_a_manifest_too_small_for_the_ratios_or_folds_is_refused_with_what_to_set():
    small = pd.DataFrame({"image": [f"/x/{i}.png" for i in range(24)], "label": [CLASSES[i % 3] for i in range(24)],
                          "patient_id": [f"p{i}" for i in range(24)], "source": "s", "view": "PA"})
    with pytest.raises(ConfigError, match=r"split 8:1:1: .* the largest has 8; set coarser ratios, e\.g\. --ratios 6:1:1"):
        make_splits(small, CLASSES, SplitConfig((0.8, 0.1, 0.1), folds=0))
    frame, _ = make_splits(small, CLASSES, SplitConfig((0.75, 0.125, 0.125), folds=0))  # what the message proposed
    assert set(frame["split"]) == {"train", "val", "test"}
    assert (frame[frame["split"] == "val"]["label"].value_counts() == 1).all()  # one per class: stratified
    with pytest.raises(ConfigError, match=r"9 CV folds: .* largest has 6; set --folds 6 or fewer"):
        make_splits(small, CLASSES, SplitConfig((0.75, 0.125, 0.125), folds=9))
