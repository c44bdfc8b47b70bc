"""Cross-validated training: every image predicted once by a model that never saw its patient."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.core import ConfigError
from cxrlab.models import EnsembleClassifier, load_model
from cxrlab.workflows.crossval import crossval_split, fold_split, oof_figures
from cxrlab.train import build_config, train


def test_each_fold_predicts_its_own_patients_validates_on_the_next_and_trains_on_the_rest(phantoms, tmp_path):
    config = build_config({"data": str(phantoms), "out": str(tmp_path), "folds": 3})
    frame = crossval_split(config, tmp_path)
    assert set(frame["fold"]) == {0, 1, 2} and (frame.groupby("patient_id")["fold"].nunique() == 1).all()
    sides = {}
    for fold in range(3):
        split = fold_split(frame, fold, 3)
        sides[fold] = {side: set(part["patient_id"]) for side, part in split.groupby("split")}
        assert not sides[fold]["test"] & (sides[fold]["train"] | sides[fold]["val"])  # out of fold: never seen
        assert sides[fold]["val"] == set(frame.loc[frame["fold"] == (fold + 1) % 3, "patient_id"])
    assert set().union(*(s["test"] for s in sides.values())) == set(frame["patient_id"])  # every patient once
    for fold in range(3):  # a fixed schedule (select_on: last) chooses no epoch: the next fold trains too
        split = fold_split(frame, fold, 3, validate=False)
        assert set(split["split"]) == {"train", "test"}
        assert set(split.loc[split["split"] == "train", "fold"]) == {0, 1, 2} - {fold}
    with pytest.raises(ConfigError, match="made for 3 folds, not 4"):
        crossval_split(config.replace({"folds": 4}), tmp_path)
    with pytest.raises(ConfigError, match="train_crossval"):
        train(config)


def test_the_linear_probe_learns_separable_features_out_of_fold():
    from cxrlab.workflows.baseline import probe_oof

    rng = np.random.default_rng(0)
    names = ["COVID-19", "Normal", "Pneumonia"]
    labels = np.repeat(np.arange(3), 20)
    features = rng.normal(0, 1, (60, 8)) + 4 * np.eye(3, 8)[labels]  # one feature per class, 4 SDs apart
    frame = pd.DataFrame({"image": [f"i{i}" for i in range(60)], "patient_id": [f"p{i // 2}" for i in range(60)],
                          "source": "s", "label": [names[k] for k in labels], "fold": (np.arange(60) // 2) % 3})
    oof = probe_oof(features, frame, names)
    assert np.allclose(oof[names].sum(axis=1), 1)
    assert (oof[names].to_numpy().argmax(1) == labels).mean() > 0.85  # 0.97 measured: numpy data, no kernels
    shuffled = probe_oof(rng.normal(0, 1, (60, 8)), frame, names)  # no signal: no better than chance
    assert (shuffled[names].to_numpy().argmax(1) == labels).mean() < 0.6  # 0.22 measured


def test_oof_figures_pool_with_intervals_and_split_by_source():
    table = pd.DataFrame({"image": [f"i{i}" for i in range(12)], "patient_id": [f"p{i // 2}" for i in range(12)],
                          "source": ["a"] * 6 + ["b"] * 6,
                          "label": ["COVID-19", "Normal", "Pneumonia"] * 4})
    probs = {"COVID-19": [0.8, 0.1, 0.1], "Normal": [0.1, 0.8, 0.1], "Pneumonia": [0.1, 0.1, 0.8]}
    for k, name in enumerate(["COVID-19", "Normal", "Pneumonia"]):
        table[name] = [probs[label][k] for label in table["label"]]  # every image right
    figures = oof_figures(table, ["COVID-19", "Normal", "Pneumonia"], n_boot=50)
    assert figures["n"] == 12 and figures["patients"] == 6
    assert figures["pooled"]["auc_covid"]["value"] == 1.0 and figures["pooled"]["f1_macro"]["value"] == 1.0
    assert figures["per_source"]["a"]["n"] == 6 and figures["per_source"]["b"]["accuracy"] == 1.0


def test_train_folds_writes_oof_predictions_and_resumes(phantoms, tmp_path):
    args = ["train", "--data", str(phantoms), "--folds", "3", "--size", "64", "--epochs", "1", "--fine-tune", "1",
            "--out", str(tmp_path / "cv"), "--set", f"mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "out of fold" in result.output and "COVID-19 AUC" in result.output and "phantom-a" in result.output
    oof = pd.read_csv(tmp_path / "cv" / "oof_predictions.csv")
    manifest = pd.read_csv(phantoms)
    assert len(oof) == len(manifest) and oof["image"].is_unique and set(oof["fold"]) == {0, 1, 2}
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["out_of_fold"]["n"] == len(manifest) and len(summary["runs"]) == 3
    probe = pd.read_csv(tmp_path / "cv" / "baseline_oof_predictions.csv")  # the baseline on the same images
    assert sorted(probe["image"]) == sorted(oof["image"]) and summary["baseline"]["out_of_fold"]["n"] == len(oof)
    assert "linear probe" in result.output and "versus the linear probe" in result.output
    assert set(summary["versus_baseline"]) == {"accuracy", "auc_macro", "auc_covid", "f1_macro"}
    pooled = summary["out_of_fold"]["pooled"]["f1_macro"]
    assert pooled["low"] <= pooled["value"] <= pooled["high"]
    model, _, payload = load_model(tmp_path / "cv")  # the fold ensemble, with its screening reference
    assert isinstance(model, EnsembleClassifier) and len(model.members) == 3 and payload["extra"]["folds"] == 3
    screening = payload["extra"]["screening"]
    assert screening["operating_point"]["chosen_on"] == "out-of-fold predictions"
    # one check per member, each thresholded on the fold it never trained on; the summary says so
    assert [m["mean"].shape for m in screening["ood"]["members"]] == [(1280,)] * 3 and screening["ood"]["dims"] == [1280] * 3
    assert len(screening["polarity"]["members"]) == 3 and summary["screening_reference"] == screening["fitted_on"]
    # the stages after the folds ran on the run's device (the CPU here), their features in fp32
    cpu = {"device": "cpu", "precision": "32-true", "processes": 1}
    assert summary["stages"] == {"ensemble_reference": cpu, "baseline": cpu} and screening["ran_on"] == cpu
    from cxrlab.models.ood import MemberDistances, pooled_features
    from cxrlab.preprocess import ShardDataset

    reference = MemberDistances.from_dict(screening["ood"])
    for k, member in enumerate(model.members):  # member k's threshold: its own out-of-fold images' 99th percentile
        held_out = oof.loc[oof["fold"] == k, "image"].tolist()
        spec = member.spec
        features = pooled_features(member, ShardDataset(tmp_path / "cv" / "prepared", list(model.class_names),
                                                        images=held_out, mean=spec.mean, std=spec.std))
        distances = reference.members[k].score(features)
        assert reference.members[k].threshold == pytest.approx(np.quantile(distances, 0.99), rel=1e-4)
    from cxrlab.explain.model_card import model_card

    card = model_card(payload, tmp_path / "cv" / "model.pt")
    assert card["ensemble"]["members"] == 3 and card["out_of_fold"]["images"] == len(oof)
    assert "auc_covid" in card["out_of_fold"]["pooled"] and card["out_of_fold"]["linear_probe"]
    assert set(pd.read_csv(tmp_path / "cv" / "splits.csv")["split"]) == {"train"}  # no side it did not train on
    images = [str(phantoms.parent / p) for p in manifest["image"].head(3)]
    predicted = CliRunner().invoke(app, ["predict", str(tmp_path / "cv"), *images, "--out", str(tmp_path / "p")])
    assert predicted.exit_code == 0, predicted.output
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert len(table) == 3 and np.allclose(table[["COVID-19", "Pneumonia", "Normal"]].sum(axis=1), 1, atol=1e-5)
    stamp = (tmp_path / "cv" / "folds" / "fold0" / "model.pt").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "cv" / "folds" / "fold0" / "model.pt").stat().st_mtime_ns == stamp  # reused, not retrained
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cv" / "oof_predictions.csv"), oof)
    assert json.loads((tmp_path / "cv" / "summary.json").read_text())["stages"] == {"ensemble_reference": cpu}
    from cxrlab.workflows.predictions import predict_test_side

    held_out = oof.loc[oof["fold"] == 0, ["image", "label", "patient_id", "source"]]  # the folds' shards = made anew
    fold0 = tmp_path / "cv" / "folds" / "fold0"
    (fold0 / "test_predictions.csv").unlink(missing_ok=True)
    anew = predict_test_side(fold0, held_out, tmp_path / "anew")
    assert (tmp_path / "anew").is_dir()  # prepared here, not read from the folds' shards
    merged = anew.merge(oof[oof["fold"] == 0], on="image", suffixes=("", "_oof"))
    assert len(merged) == len(held_out) and np.allclose(merged[list(model.class_names)],
                                                        merged[[f"{c}_oof" for c in model.class_names]], atol=1e-6)


def test_a_fixed_schedule_trains_each_fold_on_every_other_fold(phantoms, tmp_path):
    config = build_config({"data": str(phantoms), "out": str(tmp_path / "cv"), "folds": 3, "size": 64, "epochs": 1,
                           "fine_tune": 1, "select_on": "last", "progress_bar": False,
                           "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    from cxrlab.workflows.crossval import train_crossval

    result = train_crossval(config, n_boot=20)
    for fold in range(3):
        split = pd.read_csv(tmp_path / "cv" / "folds" / f"fold{fold}" / "splits.csv")
        assert set(split["split"]) == {"train", "test"}  # no validation fold: nothing chooses an epoch
        summary = json.loads((tmp_path / "cv" / "folds" / f"fold{fold}" / "summary.json").read_text())
        assert summary["images"]["val"] == 0 and summary["images"]["train"] == (split["split"] == "train").sum()
    assert len(result.predictions) == len(pd.read_csv(phantoms)) and result.summary["select_on"] == "last"
