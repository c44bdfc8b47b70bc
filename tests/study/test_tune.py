"""Tuning with Optuna: config errors, a tiny search end to end, resume, interrupted and failed trials, pruning."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml

from cxrlab.core import ConfigError
from cxrlab.models import load_model
from cxrlab.study.tune import PruneOnPlateau, run_tune, suggest
from cxrlab.study.tune_config import TuneConfig, load_tune_config


def _search(phantoms, **extra) -> TuneConfig:
    values = {"name": "tiny", "data": str(phantoms), "trials": 3, "startup_trials": 2, "ratios": (0.6, 0.2, 0.2),
              "base": {"size": 64, "epochs": 2, "batch_size": 8},
              "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "fine_tune": [0, 2]}}
    return TuneConfig(**{**values, **extra})


def test_tune_config_names_the_bad_field(tmp_path):
    path = tmp_path / "t.yaml"
    for space, message in (({"lrr": [0.1]}, "space.lrr: not a training setting; did you mean 'lr'"),
                           ({"augment.rotatoin": [5]}, "not a part of 'augment'; did you mean 'augment.rotation'"),
                           ({"lr": {"low": 1.0, "high": 0.1}}, "must exceed low"),
                           ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
                           ({"seed": [1, 2]}, "set by the study itself"),
                           ({"optimizer": []}, "non-empty list")):
        path.write_text(yaml.safe_dump({"data": "x.csv", "space": space}))
        with pytest.raises(ConfigError, match=message):
            load_tune_config(path)


def test_suggest_draws_every_kind_of_setting():
    config = TuneConfig(data="x.csv", space={"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": {"low": 1, "high": 4},
                                             "optimizer": ["adam", "sgd"], "augment.rotation": [5.0, 10.0],
                                             "head": ["gap-128-64", {"hidden": [32], "dropout": [0.1]}]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = [suggest(study.ask(), config.space) for _ in range(12)]
    assert all(1e-4 <= s["lr"] <= 1e-2 and isinstance(s["epochs"], int) and 1 <= s["epochs"] <= 4 for s in seen)
    assert {json.dumps(s["head"]) for s in seen} == {'"gap-128-64"', json.dumps({"dropout": [0.1], "hidden": [32]})}
    assert {s["optimizer"] for s in seen} == {"adam", "sgd"}


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruning_callback_reports_and_stops_a_hopeless_trial():
    trial = optuna.create_study(pruner=_AlwaysPrune()).ask()
    callback = PruneOnPlateau(trial, "val_auc_macro")
    callback.on_validation_end(SimpleNamespace(callback_metrics={"val_auc_macro": float("nan")}), None)  # undefined: skipped
    with pytest.raises(optuna.TrialPruned, match="val_auc_macro 0.6000 after 1 epoch"):
        callback.on_validation_end(SimpleNamespace(callback_metrics={"val_auc_macro": 0.6}), None)
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {0: 0.6}


def test_tiny_search_end_to_end_resume_and_interrupted_trial(phantoms, tmp_path):
    config = _search(phantoms)
    first = run_tune(config, tmp_path)
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert first.ran == 3 and len(trials) == 3 and set(trials["state"]) <= {"complete", "pruned"}
    assert first.best_params is not None and set(first.best_params) == {"lr", "fine_tune"}
    best_row = trials.loc[trials["value"].idxmax()]
    assert first.best_value == pytest.approx(best_row["value"])
    model, _, _ = load_model(tmp_path / "best-model" / "model.pt")
    assert model.fine_tune == first.best_params["fine_tune"]
    assert json.loads((tmp_path / "best-model" / "origin.json").read_text())["trial"] == best_row["trial"]
    assert first.test is not None and 0 <= first.test["accuracy"] <= 1
    report = (tmp_path / "report.md").read_text()
    assert "Best: trial" in report and "test side" in report and (tmp_path / "search.png").exists()
    # every trial trains on the same split, whose test side none of them sees
    split = pd.read_csv(tmp_path / "splits.csv")
    for run in trials["run"]:
        run_split = pd.read_csv(tmp_path / run / "splits.csv")
        assert (run_split["split"].value_counts() == split["split"].value_counts()).all()
    # resumed with the same total: nothing runs; with one more: one runs
    assert run_tune(config, tmp_path).ran == 0
    # a trial left running by a killed process is failed and its settings are tried again
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    cut = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                     "fine_tune": optuna.distributions.CategoricalDistribution([0, 2])})
    again = run_tune(config.model_copy(update={"trials": 4}), tmp_path)
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert again.ran == 1 and len(trials) == 5
    assert trials.loc[trials["trial"] == cut.number, "error"].iloc[0] == "interrupted"
    retry = trials[trials["trial"] == trials["trial"].max()].iloc[0]
    assert retry["param.lr"] == pytest.approx(cut.params["lr"]) and retry["param.fine_tune"] == cut.params["fine_tune"]
    with pytest.raises(ConfigError, match="other settings"):
        run_tune(config.model_copy(update={"metric": "accuracy"}), tmp_path)


def test_failing_trials_are_recorded_and_the_search_goes_on(phantoms, tmp_path):
    config = _search(phantoms, trials=2, space={"fine_tune": [99]})
    result = run_tune(config, tmp_path)
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert result.ran == 2 and (trials["state"] == "fail").all()  # the first failure did not stop the search
    assert "8 blocks" in trials["error"].iloc[0] and result.best_params is None
    assert "No trial finished" in (tmp_path / "report.md").read_text() and not (tmp_path / "best-model").exists()


def test_a_split_without_a_class_on_a_side_fails_before_any_trial(phantoms, tmp_path):
    with pytest.raises(ConfigError, match="the val side has no images of class"):
        run_tune(_search(phantoms, ratios=(0.8, 0.1, 0.1)), tmp_path)
    assert not (tmp_path / "trials").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs" / "tune").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_tune_configs_are_valid(path):
    config = load_tune_config(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    settings = suggest(study.ask(), config.space)
    from cxrlab.study.config import merge_settings
    from cxrlab.train import build_config

    build_config({**merge_settings(config.base, settings), "data": "x.csv"})  # a drawn trial is a valid training config


def test_tune_command_runs_and_resumes(phantoms, tmp_path):
    from typer.testing import CliRunner

    from cxrlab.cli import app

    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"name": "cli", "data": str(phantoms), "trials": 2, "ratios": [0.6, 0.2, 0.2],
                                    "base": {"size": 64, "epochs": 1, "batch_size": 8},
                                    "space": {"lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}}))
    result = CliRunner().invoke(app, ["tune", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "2 trial(s) run now" in result.output and "best:" in result.output
    again = CliRunner().invoke(app, ["tune", str(path), "--out", str(tmp_path / "out"), "--trials", "3"])
    assert again.exit_code == 0 and "1 trial(s) run now" in again.output


def test_a_search_shared_through_a_database_and_a_share_needs_no_shared_folder(phantoms, tmp_path):
    """Two workers, each in a folder of its own (other machines): the second finds the search done
    in the database, takes the best trial from the share to export and test it, and both nest
    their runs under the one MLflow parent run."""
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'tracking.db'}"
    config = _search(phantoms, trials=2, base={"size": 32, "epochs": 1, "batch_size": 8},
                     storage=f"sqlite:///{tmp_path / 'search.db'}", share=str(tmp_path / "share"), mlflow_uri=tracking)
    first = run_tune(config, tmp_path / "one")
    second = run_tune(config, tmp_path / "two")
    assert first.ran == 2 and second.ran == 0 and second.best_params == first.best_params
    best = json.loads((tmp_path / "two" / "best-model" / "origin.json").read_text())["trial"]
    assert (tmp_path / "two" / "trials" / f"trial-{best:04d}" / "model.pt").exists()  # from the share
    assert second.test == first.test  # the same trial scored on the same test side
    assert (tmp_path / "share" / "trials.csv").exists() and (tmp_path / "share" / "best-model" / "model.pt").exists()
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("cxrlab-tuning")
    parents = client.search_runs([experiment.experiment_id], "attributes.run_name = 'tiny'")
    assert len(parents) == 1
    with pytest.raises(ConfigError, match="differs in seed"):
        run_tune(config.model_copy(update={"seed": 1}), tmp_path / "three")
