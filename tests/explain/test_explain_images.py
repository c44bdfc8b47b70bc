from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.models import create_classifier, save_model
from cxrlab.preprocess import PreprocessConfig


def test_explain_writes_overlays_and_tables_and_names_bad_files(phantoms, tmp_path):
    model = create_classifier("efficientnet_lite0", 3, fine_tune=1, class_names=("COVID-19", "Pneumonia", "Normal"), seed=0)
    save_model(model, tmp_path / "model.pt", PreprocessConfig(size=64, resize="letterbox"))
    image = next((phantoms.parent / "images").glob("*.png"))
    (tmp_path / "empty.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["explain", str(tmp_path / "model.pt"), str(image), str(tmp_path / "empty.png"),
                                      "--out", str(tmp_path / "out"), "--method", "gradcam++"])
    assert result.exit_code == 3, result.output  # finished, but an input failed
    records = json.loads((tmp_path / "out" / "explanations.json").read_text())
    assert records[1] == {"image": str(tmp_path / "empty.png"), "error": "empty file (0 bytes)"}
    table = pd.read_csv(tmp_path / "out" / "explanations.csv")
    assert table["error"].tolist()[1] == "empty file (0 bytes)" and table["error"].isna().tolist()[0]
    assert f"{tmp_path / 'empty.png'}: empty file" in result.output
    assert abs(sum(records[0]["probabilities"].values()) - 1) < 1e-5
    assert records[0]["predicted"] in records[0]["probabilities"]
    figure = cv2.imread(records[0]["overlay"])
    assert figure is not None and figure.shape[1] > figure.shape[0]  # image, overlay and bars side by side


def test_maps_of_a_lung_cropping_model_go_back_into_the_crop_box():
    from cxrlab.explain import cam_to_original
    from cxrlab.preprocess import PreprocessConfig
    from cxrlab.preprocess.transforms import LungCrop

    lungs = np.zeros((200, 100), bool)
    lungs[50:150, 20:80] = True
    config = PreprocessConfig(size=32, lung_crop=True, crop_margin=0.0)
    cam = np.zeros((32, 32), np.float32)
    cam[:16, :16] = 1.0  # evidence in the crop's top-left quarter
    mapped = cam_to_original(cam, (200, 100), config, lungs)
    assert LungCrop(0.0).box(lungs) == (50, 150, 20, 80)
    assert mapped[:50].sum() == 0 and mapped[150:].sum() == 0 and mapped[:, :20].sum() == 0  # nothing outside the box
    assert mapped[55:95, 25:45].min() > 0.9 and mapped[110:145, 55:75].max() < 0.1
    whole = cam_to_original(cam, (200, 100), PreprocessConfig(size=32))  # no crop: the map covers the image
    assert whole[:90, :45].min() > 0.9


def test_each_model_is_judged_against_its_own_evenly_spread_baseline(phantoms):
    from cxrlab.data import load_source
    from cxrlab.data.images import read_mask
    from cxrlab.explain.lung_evidence import lung_evidence

    rows = load_source(phantoms).table.head(4).assign(predicted="COVID-19")
    model = create_classifier("efficientnet_lite0", 3, class_names=("COVID-19", "Pneumonia", "Normal"), seed=0,
                              pretrained="none").eval()
    whole = lung_evidence(model, PreprocessConfig(size=32), rows)
    cropped = lung_evidence(model, PreprocessConfig(size=32, lung_crop=True, crop_margin=0.0), rows)
    assert np.allclose(whole["even_share"], whole["lung_area"])  # a whole-image map: the lungs' share of the image
    for row, baseline in zip(rows.itertuples(), cropped["even_share"], strict=True):
        mask = read_mask(row.mask, cv2.imread(row.image, 0).shape)
        ys, xs = np.nonzero(mask)
        box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]  # a lung-cropping map lives in the box only
        assert baseline == pytest.approx(box.mean(), abs=0.02) and baseline > mask.mean() + 0.1
