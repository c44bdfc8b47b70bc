"""End-to-end training on tiny phantoms: run directory, determinism, bad input."""

from __future__ import annotations

import json

import pandas as pd
import torch
import pytest

from cxrlab.core import ConfigError, LeakageError
from cxrlab.models import WeightsUnavailableError
from cxrlab.train import NonFiniteLossError, build_config, train


def _config(tmp_path, phantoms, name, **extra):
    values = {"data": str(phantoms), "out": str(tmp_path / name), "size": 32, "epochs": 2, "batch_size": 8,
              "ratios": (0.6, 0.2, 0.2), "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", **extra}
    return build_config(values)


def _without_timing(summary):
    return {k: v for k, v in summary.items() if k != "timing"}


def test_run_directory_and_same_seed_same_summary(tmp_path, phantoms):
    first = train(_config(tmp_path, phantoms, "a", fine_tune=2))
    second = train(_config(tmp_path, phantoms, "b", fine_tune=2))
    for name in ("config.yaml", "model.pt", "metrics.csv", "summary.json", "curves.png", "splits.csv"):
        assert (first.out / name).exists(), name
    summary = json.loads((first.out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["prefix_cache"] is True
    assert set(summary["val"]["per_class"]) == {"COVID-19", "Pneumonia", "Normal"}
    assert {"sensitivity", "specificity", "auc", "auc_interval"} <= set(summary["val"]["per_class"]["Normal"])
    assert summary["validation_side"]["images"] == summary["images"]["val"] and "widest_auc_interval" in summary["validation_side"]
    assert len(pd.read_csv(first.out / "metrics.csv")) == summary["epochs_run"] == 2
    assert _without_timing(first.summary) == _without_timing(second.summary)
    from mlflow import MlflowClient  # the real SQLite store holds both runs and their epochs

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cxrlab").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["a", "b"]
    history = client.get_metric_history(runs[0].info.run_id, "val_loss")
    assert len(history) == 2 and runs[0].data.params["backbone"] == "efficientnet_lite0"


def test_augmented_multi_phase_run_without_cache(tmp_path, phantoms):
    result = train(_config(tmp_path, phantoms, "p", augment={"enabled": True}, optimizer="sgd", schedule="cosine",
                           phases=[{"fine_tune": 0, "lr": 1e-3, "epochs": 1}, {"fine_tune": "all", "lr": 1e-4, "epochs": 1}]))
    metrics = pd.read_csv(result.out / "metrics.csv")
    assert metrics["phase"].tolist() == [0, 1] and metrics["fine_tune"].tolist() == [0, 8]
    assert result.summary["prefix_cache"] is False
    kept = metrics.set_index("epoch").loc[result.summary["best_epoch"], "fine_tune"]  # the kept epoch's phase's degree
    assert str(result.summary["fine_tune"]) == str(kept) and len(result.summary["phases"]) == 2


def test_nan_loss_stops_clearly_and_keeps_last_good_model(tmp_path, phantoms):
    config = _config(tmp_path, phantoms, "nan", recipe="papers", optimizer="sgd", momentum=0.0, fine_tune="all", pretrained="none",
                     phases=[{"fine_tune": 0, "lr": 1e-3, "epochs": 1}, {"fine_tune": "all", "lr": 10, "epochs": 2}])
    with pytest.raises(NonFiniteLossError, match="training loss became"):
        train(config)
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"].startswith("training loss became") and summary["best_epoch"] == 0
    assert (tmp_path / "nan" / "model.pt").exists()


def test_bad_input_fails_before_training(tmp_path, phantoms):
    with pytest.raises(ConfigError, match="valid: densenet121"):
        train(_config(tmp_path, phantoms, "x", backbone="vgg17"))
    with pytest.raises(ConfigError, match="choose 0..8"):
        train(_config(tmp_path, phantoms, "x", fine_tune=9))
    with pytest.raises(WeightsUnavailableError, match="--weights"):
        train(_config(tmp_path, phantoms, "x", backbone="resnet50"))
    first = train(_config(tmp_path, phantoms, "ok", epochs=1))
    frame = pd.read_csv(first.out / "splits.csv")
    no_normal = frame[~((frame.split == "val") & (frame.label == "Normal"))]
    no_normal.to_csv(first.out / "no_normal.csv", index=False)  # beside splits.csv: same relative paths
    with pytest.raises(ConfigError, match="val side has no images of class"):
        train(build_config({"splits": str(first.out / "no_normal.csv"), "out": str(tmp_path / "y"), "size": 32,
                            "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    leaking = pd.concat([frame, frame[frame.split == "test"].head(1).assign(split="train", image=lambda f: f.image + "x")])
    leaking.to_csv(first.out / "leak.csv", index=False)
    with pytest.raises(LeakageError):
        train(build_config({"splits": str(first.out / "leak.csv"), "out": str(tmp_path / "z")}))
    frame.to_csv(tmp_path / "moved.csv", index=False)  # relative paths now point nowhere
    with pytest.raises(ConfigError, match="no usable images: all .* skipped .*file not found"):
        train(build_config({"splits": str(tmp_path / "moved.csv"), "out": str(tmp_path / "m")}))


def test_a_reference_added_after_training_equals_the_one_training_writes(tmp_path, run_dir):
    import torch

    from cxrlab.train import add_screening_reference
    from cxrlab.core.settings import read_yaml_mapping
    from cxrlab.train.config import flatten_settings

    # the run_dir fixture's own resolved config and seed, trained without the reference (as a study's runs are)
    values = {**flatten_settings(read_yaml_mapping(run_dir / "config.yaml")), "out": str(tmp_path / "r"),
              "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = train(build_config(values), screening=False).out
    assert "screening" not in torch.load(out / "model.pt", weights_only=True)["extra"]
    (out / "config.yaml").rename(out / "moved.yaml")
    with pytest.raises(ConfigError, match="config.yaml"):
        add_screening_reference(out)  # nothing to rebuild it from: a clear error naming the file
    (out / "moved.yaml").rename(out / "config.yaml")
    assert add_screening_reference(out) and not add_screening_reference(out)  # added once, then kept
    assert json.loads((out / "summary.json").read_text())["stages"]["screening_reference"] == {
        "device": "cpu", "precision": "32-true", "processes": 1}  # the run's device; fp32 features by design
    added = torch.load(out / "model.pt", weights_only=True)["extra"]
    written = torch.load(run_dir / "model.pt", weights_only=True)["extra"]
    assert added["epoch"] == written["epoch"]
    for key in ("ood", "ood_fine"):
        assert added["screening"][key]["threshold"] == pytest.approx(written["screening"][key]["threshold"], rel=1e-4)
    assert added["screening"]["polarity"]["val_accuracy"] == written["screening"]["polarity"]["val_accuracy"]
    point, expected = added["screening"]["operating_point"], written["screening"]["operating_point"]
    assert point["threshold"] == pytest.approx(expected["threshold"], abs=1e-5)


def test_frozen_batchnorm_keeps_the_pretrained_statistics_and_still_learns_scale_and_shift(tmp_path, phantoms):
    import torch

    from cxrlab.models import create_classifier, load_model

    # 64 px: at 32 px the pretrained network's eval-mode features are all but zero (a 1x1 map), so nothing learns
    out = train(_config(tmp_path, phantoms, "bn", fine_tune="all", batchnorm="frozen", epochs=1, size=64)).out
    trained, _, _ = load_model(out / "model.pt")
    fresh = create_classifier("efficientnet_lite0", 3, pretrained="imagenet", seed=0)
    pairs = [(a, b) for a, b in zip(trained.backbone.modules(), fresh.backbone.modules())
             if isinstance(a, torch.nn.BatchNorm2d)]
    assert pairs and all(torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
                         for a, b in pairs)
    assert any(not torch.equal(a.weight, b.weight) for a, b in pairs)  # the affine parameters trained
    with pytest.raises(ConfigError, match="batchnorm"):
        _config(tmp_path, phantoms, "typo", batchnorm="fixed")



def test_a_training_side_one_image_past_a_full_batch_trains(tmp_path, phantoms):
    from cxrlab.train.data import loader

    config = _config(tmp_path, phantoms, "odd", batch_size=4)
    data = torch.utils.data.TensorDataset(torch.zeros(9, 1), torch.zeros(9))
    assert [len(x) for x, _ in loader(data, config, True, 0)] == [4, 4]  # BatchNorm cannot train on a batch of one
    assert [len(x) for x, _ in loader(data, config, False, 0)] == [4, 4, 1]  # validation keeps every image


def test_a_tracking_uri_that_cannot_work_is_refused_before_any_data_work(tmp_path, phantoms):
    import time

    from tests.conftest import free_port

    with pytest.raises(ConfigError, match="unsupported tracking URI scheme 'bogus'"):
        _config(tmp_path, phantoms, "b", mlflow_uri="bogus://x")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"mlflow_uri http://127.0.0.1:\d+: the tracking server does not answer"):
        train(_config(tmp_path, phantoms, "h", mlflow_uri=f"http://127.0.0.1:{free_port()}"))
    assert time.perf_counter() - start < 30 and not (tmp_path / "h" / "prepared").exists()  # MLflow retried minutes


def test_the_summary_records_what_each_stage_ran_on(run_dir):
    """Device, precision and processes per stage, as they ran: the frozen prefix (the fixture trains
    k=2, so it is cached), the fit, validation and the screening reference."""
    stages = json.loads((run_dir / "summary.json").read_text())["stages"]
    assert set(stages) == {"prefix", "fit", "validation", "screening_reference"}
    for name, stage in stages.items():
        assert stage["device"] == "cpu" and stage["processes"] == 1, name
    assert stages["fit"]["precision"] == stages["prefix"]["precision"] == stages["validation"]["precision"] == "32-true"
    assert stages["fit"]["deterministic"] is True
