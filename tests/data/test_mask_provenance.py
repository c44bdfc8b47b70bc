"""Masks whose presence or origin tracks the class are refused by every mask-using setting."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrlab.core import ConfigError
from cxrlab.data.mask_provenance import check_uniform_masks, mask_coverage, provenance
from cxrlab.train import build_config, train


def _table(masks: list[str], sources: list[str], splits: list[str] | None = None, in_sample=None) -> pd.DataFrame:
    n = len(masks)
    frame = pd.DataFrame({"image": [f"i{i}.png" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                          "label": ["COVID-19", "Normal"] * (n // 2), "mask": masks, "mask_source": sources,
                          "split": splits or ["train"] * n})
    return frame if in_sample is None else frame.assign(mask_in_sample=in_sample)


def test_masks_only_on_covid_images_are_refused_with_the_counts_per_class():
    frame = _table(["m0", "", "m2", ""], ["v7labs", "", "v7labs", ""])  # cxr-real's pattern
    with pytest.raises(ConfigError, match=r"2 of 4 have none \(Normal 2 of 2\).*segment predict"):
        check_uniform_masks(frame, "lung_crop", "data.csv")


def test_hand_drawn_and_predicted_masks_mixed_are_refused():
    frame = _table(["m0", "m1", "m2", "m3"], ["v7labs", "predicted", "v7labs", "predicted"])
    with pytest.raises(ConfigError, match="masks of one origin, but they come from 2 .*v7labs: COVID-19 2 of 2"):
        check_uniform_masks(frame, "lung_attention", "data.csv")


def test_uniform_masks_pass_and_in_sample_predictions_only_on_the_training_side():
    check_uniform_masks(_table(["m"] * 4, ["predicted"] * 4), "lung_crop", "d")
    check_uniform_masks(_table([""] * 4, [""] * 4), "artifacts: inpaint", "d")  # none anywhere: uniform
    on_train = _table(["m"] * 4, ["predicted"] * 4, ["train", "train", "val", "test"], [True, True, False, False])
    check_uniform_masks(on_train, "lung_crop", "d")
    leaked = on_train.assign(mask_in_sample=[True, False, True, False])
    with pytest.raises(ConfigError, match="1 validation/test image.*trained on their patients"):
        check_uniform_masks(leaked, "lung_crop", "d")


def test_coverage_per_side_class_and_origin():
    frame = _table(["m0", "", "m2", "m3"], ["v7labs", "", "", "v7labs"], ["train", "train", "val", "val"])
    assert list(provenance(frame)) == ["v7labs", "none", "given", "v7labs"]
    assert mask_coverage(frame) == {"train": {"COVID-19": {"v7labs": 1}, "Normal": {"none": 1}},
                                    "val": {"COVID-19": {"given": 1}, "Normal": {"v7labs": 1}}}


def test_training_with_lung_crop_refuses_partial_masks_before_any_work(phantoms, tmp_path):
    table = pd.read_csv(phantoms)
    table.loc[table["label"] != "COVID-19", "mask"] = ""  # masks only on COVID-19 images
    table.assign(image=[str(phantoms.parent / p) for p in table["image"]],
                 mask=[str(phantoms.parent / p) if p else "" for p in table["mask"].fillna("")]
                 ).to_csv(tmp_path / "partial.csv", index=False)
    config = build_config({"data": str(tmp_path / "partial.csv"), "out": str(tmp_path / "run"), "size": 32,
                           "epochs": 1, "lung_crop": True})
    with pytest.raises(ConfigError, match="lung_crop needs a lung mask on every image or on none"):
        train(config)
    assert not (tmp_path / "run" / "prepared").exists()
