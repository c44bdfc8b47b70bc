"""One way to read settings for every command: YAML files, --set KEY=VALUE overrides, paths, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrlab.core import ConfigError
from cxrlab.core.settings import apply_assignments


def test_assignments_parse_yaml_values_and_nest_dotted_keys():
    values = apply_assignments({"augment": {"rotation": 5}}, ["lr=1e-4", "augment.enabled=true", "grid.fine_tune=[0, 2]",
                                                             "name=my study", "weights="])
    assert values == {"augment": {"rotation": 5, "enabled": True}, "lr": 1e-4, "grid": {"fine_tune": [0, 2]},
                      "name": "my study", "weights": None}
    assert apply_assignments({"augment": None}, ["augment.enabled=true"]) == {"augment": {"enabled": True}}  # `augment:` empty
    assert apply_assignments({}, ["tag='1e3'", "lr=1E-3"]) == {"tag": "1e3", "lr": 1e-3}  # quoted text stays text
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_assignments({}, ["lr"])
    with pytest.raises(ConfigError, match="'lr' is not a group of settings"):
        apply_assignments({"lr": 0.1}, ["lr.max=1"])


def test_every_config_taking_loader_takes_the_same_overrides(tmp_path):
    from cxrlab.study import load_study_config
    from cxrlab.study.tune_config import load_tune_config
    from cxrlab.train import load_config

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "manifest.csv").write_text("image,label\n")
    train_yaml = tmp_path / "sub" / "train.yaml"
    train_yaml.write_text(yaml.safe_dump({"data": "manifest.csv", "lr": 3e-4}))
    train = load_config(train_yaml, {"epochs": 2, "seed": None}, ["lr=1e-4", "augment.enabled=true"])
    assert (train.optim.lr, train.schedule.epochs, train.augment.enabled) == (1e-4, 2, True)
    assert train.data.path == str(tmp_path / "sub" / "manifest.csv")  # relative to the YAML's folder, as for studies
    study_yaml = tmp_path / "sub" / "study.yaml"
    study_yaml.write_text(yaml.safe_dump({"data": "manifest.csv", "grid": {"fine_tune": [0, 2]}}))
    study = load_study_config(study_yaml, {}, ["base.lr=1e-4", "folds=3"])
    assert study.base["lr"] == 1e-4 and study.folds == 3 and study.data == str(tmp_path / "sub" / "manifest.csv")
    tune_yaml = tmp_path / "sub" / "tune.yaml"
    tune_yaml.write_text(yaml.safe_dump({"data": "manifest.csv", "space": {"lr": {"low": 1e-5, "high": 1e-3, "log": True}}}))
    assert load_tune_config(tune_yaml, {}, ["trials=7"]).trials == 7
    with pytest.raises(ConfigError, match=r"train.yaml: field 'optimzer': unknown field; did you mean 'optimizer'\?"):
        load_config(train_yaml, {}, ["optimzer=adam"])


@pytest.mark.parametrize(("args", "expected"), [
    (["train", "--data", "x.csv", "--set", "optimzer=adam"], "field 'optimzer': unknown field; did you mean 'optimizer'?"),
    (["segment", "train", "--data", "x.csv", "--set", "patience=0"], "segment: field 'patience'"),
    (["study", "configs/studies/lite0_quick.yaml", "--set", "folds=-1"], "field 'folds'"),
    (["tune", "configs/tune/lite0_search.yaml", "--set", "trials=0"], "field 'trials'"),
])
def test_each_command_takes_set_and_names_the_bad_field(args, expected):
    root = Path(__file__).parents[2]
    done = subprocess.run([str(Path(sys.executable).parent / "cxrlab"), *args], capture_output=True, text=True,
                          cwd=root, timeout=120, check=False)
    assert done.returncode == 1 and expected in done.stderr, done.stderr[-1500:]
