"""One predictor: the same images and model give the same probabilities and class through every door
(predict, explain, serve, evaluate, the study's test side), for every kind of model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.data.findings import NO_FINDING
from cxrlab.models import EnsembleClassifier, create_classifier, load_model, save_model
from cxrlab.models.predictor import Predictor
from cxrlab.preprocess import PreprocessConfig, Preprocessor

CLASSES = ("COVID-19", "Pneumonia", "Normal")
FINDINGS = ("Consolidation", "Infiltration", "Pneumonia")
TOLERANCE = 1e-4  # the doors differ in batch size and memory layout only: float rounding, far below this


def _images(phantoms: Path, count: int = 4) -> pd.DataFrame:
    """Rows of the phantom manifest (absolute paths), one per class and source first."""
    table = pd.read_csv(phantoms)
    rows = table.groupby(["label", "source"]).head(1).head(count)
    for column in ("image", "mask", "lesion"):
        rows[column] = [str(phantoms.parent / v) for v in rows[column]]
    return rows.reset_index(drop=True)


def _segmenter(path: Path, images: list[str]) -> Path:
    """An untrained lung segmenter whose output is shifted so that about half of each image is "lung":
    its masks are arbitrary but not empty, and every door must take the same ones."""
    from cxrlab.models.segmenter import create_segmenter, predict_probabilities, save_segmenter
    from cxrlab.models.registry import get_backbone_spec

    torch.manual_seed(0)
    net = create_segmenter(pretrained="none").eval()
    pre = Preprocessor(PreprocessConfig(size=64))
    pixels = np.stack([pre(image).pixels for image in images])
    probability = predict_probabilities(net, pixels, get_backbone_spec("efficientnet_lite0"))
    logits = np.log(probability) - np.log1p(-probability)
    with torch.no_grad():
        net.segmentation_head[0].bias -= float(np.median(logits))
    save_segmenter(net, path, "efficientnet_lite0", PreprocessConfig(size=64))
    return path


def _between(values: np.ndarray) -> float:
    """A threshold in the widest gap between sorted ``values`` (some above it, some below): far from every
    image's probability, so rounding at one door cannot move an image across it."""
    ordered = np.sort(values)
    gap = int(np.argmax(np.diff(ordered)))
    return float(ordered[gap] + ordered[gap + 1]) / 2


def _model(kind: str, folder: Path, images: list[str], segmenter: Path | None = None) -> Path:
    """A model file of ``kind`` (untrained: the doors must agree on any weights) with an operating point
    set between the images' probabilities, so that it, not the most probable class, decides some calls."""
    torch.manual_seed(1)
    common = {"pretrained": "none", "fine_tune": 1}
    names, preprocess = CLASSES, PreprocessConfig(size=64)
    if kind == "multilabel":
        model, names = create_classifier("efficientnet_lite0", 3, class_names=FINDINGS, multilabel=True, **common), FINDINGS
    elif kind == "ensemble":
        members = [create_classifier("efficientnet_lite0", 3, class_names=CLASSES, seed=s, **common) for s in (1, 2)]
        model, preprocess = EnsembleClassifier(members, tta="crops"), PreprocessConfig(size=64, contrast="clahe")
    else:
        attention = kind == "lung_attention"
        model = create_classifier("efficientnet_lite0", 3, class_names=CLASSES, lung_attention=attention, **common)
        preprocess = PreprocessConfig(size=64, lung_crop=kind == "lung_crop", keep_mask=attention)
    path = save_model(model, folder / "model.pt", preprocess)
    predictor = Predictor(path, segmenter=segmenter)
    probs = np.array([list(predictor.predict_file(image).probabilities.values()) for image in images])
    if kind == "multilabel":
        point = {"per_finding": {n: _between(probs[:, i]) for i, n in enumerate(names)}, "chosen_on": "validation"}
    else:
        point = {"positive": "COVID-19", "threshold": _between(probs[:, 0]), "method": "youden", "chosen_on": "validation"}
    return save_model(model, path, preprocess, {"screening": {"operating_point": point}})


def _through_every_door(model: Path, rows: pd.DataFrame, tmp_path: Path, segmenter: Path | None,
                        data: Path | None = None) -> dict[str, pd.DataFrame]:
    """``{door: table of image, probability per class, predicted}`` for predict, explain, serve, evaluate and
    the study's test side."""
    from fastapi.testclient import TestClient

    from cxrlab.serve import ServeSettings, create_app
    from cxrlab.workflows.predictions import predict_test_side

    names = list(load_model(model)[0].class_names)
    images = rows["image"].tolist()
    extra = ["--segmenter", str(segmenter)] if segmenter else []
    runner = CliRunner()
    tables = {}
    for door, stem in (("predict", "predictions"), ("explain", "explanations")):
        result = runner.invoke(app, [door, str(model), *images, "--out", str(tmp_path / door), *extra])
        assert result.exit_code == 0, result.output
        tables[door] = pd.read_csv(tmp_path / door / f"{stem}.csv", keep_default_na=False)
    assert tables["predict"].columns.tolist() == tables["explain"].columns.tolist()  # one vocabulary
    with TestClient(create_app(model, ServeSettings(segmenter=segmenter))) as client:
        answers = []
        for image in images:
            response = client.post("/predict", files={"file": (Path(image).name, Path(image).read_bytes())})
            assert response.status_code == 200, response.text
            body = response.json()
            answers.append({"image": image, **body["probabilities"], "predicted": body["predicted"]})
    tables["serve"] = pd.DataFrame(answers)
    if data is None:
        data = tmp_path / "manifest.csv"
        rows.to_csv(data, index=False)
    result = runner.invoke(app, ["evaluate", str(model), "--data", str(data), "--out", str(tmp_path / "evaluate"),
                                 "--no-gradcam", "--n-boot", "20", *extra])
    assert result.exit_code == 0, result.output
    tables["evaluate"] = pd.read_csv(tmp_path / "evaluate" / "predictions.csv", keep_default_na=False)
    if segmenter is None and not load_model(model)[0].multilabel:  # the study's test side: its own cached table
        run = tmp_path / "test-side"
        run.mkdir()
        (run / "model.pt").symlink_to(model if model.is_file() else model / "model.pt")
        side = predict_test_side(run, rows, run / "work")
        tables["test side"] = side.assign(predicted=Predictor(model).decision.decide_all(side[names].to_numpy()))
    return {door: t.assign(image=[Path(i).name for i in t["image"]]).set_index("image")[[*names, "predicted"]]
            for door, t in tables.items()}


def _assert_same(tables: dict[str, pd.DataFrame]) -> None:
    reference = tables["predict"]
    assert len(reference) >= 3
    for door, table in tables.items():
        table = table.loc[reference.index]
        difference = np.abs(table.drop(columns="predicted").to_numpy(float) -
                            reference.drop(columns="predicted").to_numpy(float)).max()
        assert difference < TOLERANCE, f"{door}: probabilities differ from predict's by {difference:.2e}"
        assert table["predicted"].tolist() == reference["predicted"].tolist(), door


@pytest.mark.parametrize("kind", ["single", "ensemble", "lung_crop", "lung_attention"])
def test_every_door_gives_the_same_probabilities_and_class(kind, phantoms, tmp_path):
    rows = _images(phantoms)
    images = rows["image"].tolist()
    segmenter = _segmenter(tmp_path / "segmenter.pt", images) if kind.startswith("lung") else None
    model = _model(kind, tmp_path, images, segmenter)
    tables = _through_every_door(model, rows, tmp_path, segmenter)
    _assert_same(tables)
    predicted, probs = tables["predict"]["predicted"], tables["predict"][list(CLASSES)]
    threshold = load_model(model)[2]["extra"]["screening"]["operating_point"]["threshold"]
    # the operating point decides at every door: COVID-19 from its threshold on, whether or not it is the top class
    assert ((probs["COVID-19"] >= threshold) == (predicted == "COVID-19")).all()
    assert 0 < (predicted == "COVID-19").sum() < len(predicted)
    if segmenter is not None:  # the masks evaluate used are the segmenter's, for every image
        table = pd.read_csv(tmp_path / "evaluate" / "predictions.csv", keep_default_na=False)
        assert (table["mask"] != "").all() and all(str(tmp_path / "evaluate") in m for m in table["mask"])


def test_a_multilabel_model_calls_the_same_findings_at_every_door(nih_phantoms, tmp_path):
    images = sorted((nih_phantoms / "images_001" / "images").glob("*.png"))
    entry = pd.read_csv(nih_phantoms / "Data_Entry_2017_v2020.csv")
    keep = entry["Image Index"].isin({p.name for p in images[:4]})
    data = tmp_path / "nih"  # ChestX-ray14's layout over four of its images
    (data / "images_001" / "images").mkdir(parents=True)
    for image in images[:4]:
        (data / "images_001" / "images" / image.name).symlink_to(image.resolve())
    entry[keep].to_csv(data / "Data_Entry_2017_v2020.csv", index=False)
    rows = pd.DataFrame({"image": [str(p) for p in images[:4]]})
    model = _model("multilabel", tmp_path, rows["image"].tolist())
    tables = _through_every_door(model, rows, tmp_path, None, data=data)
    _assert_same(tables)
    thresholds = load_model(model)[2]["extra"]["screening"]["operating_point"]["per_finding"]
    for row in tables["predict"].itertuples():  # each finding at its own threshold of the model file
        called = [n for n in FINDINGS if getattr(row, n) >= thresholds[n]]
        assert set(row.predicted.split("|")) == (set(called) or {NO_FINDING})


def test_a_trained_run_answers_alike_at_every_door(run_dir, tmp_path):
    """The real thing: a trained run with its operating point and screening reference, on its test side."""
    split = pd.read_csv(run_dir / "splits.csv")
    rows = split[split["split"] == "test"].head(4).copy()
    rows["image"] = [str((run_dir / v).resolve()) if not Path(v).is_absolute() else v for v in rows["image"]]
    rows = rows.drop(columns=[c for c in ("mask", "lesion") if c in rows.columns])
    tables = _through_every_door(run_dir, rows, tmp_path, None)
    _assert_same(tables)
    records = json.loads((tmp_path / "explain" / "explanations.json").read_text())
    assert all(r["ood"] is not None for r in records)  # explain flags out-of-distribution images as predict does


def test_one_image_and_a_table_of_images_run_the_same_steps(phantoms, tmp_path):
    rows = _images(phantoms)
    model = _model("ensemble", tmp_path, rows["image"].tolist())
    predictor = Predictor(model)
    batch = predictor.predict_frame(rows, tmp_path / "work")
    for i, image in enumerate(rows["image"]):
        single = predictor.predict_file(image)
        np.testing.assert_allclose(list(single.probabilities.values()), batch.probs[i], atol=TOLERANCE)
        assert single.predicted == batch.predicted[i]


def test_a_model_that_needs_masks_is_refused_at_the_one_image_doors_without_a_segmenter(phantoms, tmp_path):
    image = _images(phantoms)["image"][0]
    model = save_model(create_classifier("efficientnet_lite0", 3, pretrained="none", class_names=CLASSES),
                       tmp_path / "model.pt", PreprocessConfig(size=64, lung_crop=True))
    for door in ("predict", "explain"):
        result = CliRunner().invoke(app, [door, str(model), image, "--out", str(tmp_path / door)])
        assert result.exit_code == 1 and "--segmenter" in result.output, result.output
