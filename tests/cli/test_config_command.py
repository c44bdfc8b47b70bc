"""One configuration model: every option is a setting with the setting's own help and default, prepare
takes --config and --set like train, config show says where each value came from, and a manifest
remembers its scheme."""

from __future__ import annotations

import json

import click
import pytest
import typer
import yaml
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.cli.prepare_command import PREPARE_SETTINGS
from cxrlab.cli.train_commands import TRAIN_SETTINGS
from cxrlab.core.settings import field_help
from cxrlab.train.config import SECTIONS, TrainConfig


def _options(name: str) -> dict[str, click.Parameter]:
    command = typer.main.get_command(app).commands[name]
    return {param.name: param for param in command.params}


def _help(path: str) -> str:
    if path == "recipe":
        return field_help(TrainConfig, "recipe")
    section, _, name = path.partition(".")
    return field_help(SECTIONS[section], name)


@pytest.mark.parametrize(("command", "settings"), [("train", TRAIN_SETTINGS), ("prepare", PREPARE_SETTINGS)])
def test_each_option_is_a_setting_with_its_help_and_no_default_of_its_own(command, settings):
    options = _options(command)
    for option, path in settings.items():
        param = options[option]
        assert param.default is None, f"--{option}: a default of its own ({param.default!r}); the setting's is used"
        assert param.help == _help(path), f"--{option}: help differs from {path}'s: {_help(path)!r}"
    assert {"config", "assignments"} <= set(options)  # --config and --set, as train takes them


def test_the_segmenter_options_are_its_settings():
    from cxrlab.cli.segment_command import SEGMENT_SETTINGS
    from cxrlab.train.segmentation import SegmentConfig

    command = typer.main.get_command(app).commands["segment"].commands
    for sub in ("train", "crossfit"):
        options = {param.name: param for param in command[sub].params}
        for option, path in SEGMENT_SETTINGS.items():
            if option not in options or (sub == "crossfit" and option == "out"):  # crossfit's out: its own folder
                continue
            assert options[option].default is None, f"segment {sub} --{option} has a default of its own"
            if "." not in path:
                assert options[option].help == field_help(SegmentConfig, path), f"segment {sub} --{option}"
    assert SegmentConfig().size == 256 and SegmentConfig().preprocess.contrast == "clahe"  # the one default


def test_prepare_help_shows_config_and_set():
    result = CliRunner().invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--config" in result.output and "--set" in result.output


def test_prepare_takes_a_training_config_and_prepares_what_training_would(phantoms, tmp_path):
    from cxrlab.models import get_backbone_spec
    from cxrlab.train import load_config
    from cxrlab.train.data import preprocess_for

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": str(phantoms), "preprocess": {"size": 40, "contrast": "none"},
                                      "model": {"lung_attention": True}}))
    result = CliRunner().invoke(app, ["prepare", "--data", str(phantoms), "--out", str(tmp_path / "prepared"),
                                      "--config", str(config), "--set", "preprocess.clahe_grid=4", "--set",
                                      "contrast=clahe", "--workers", "1"])
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "prepared" / "plan.json").read_text())
    wanted = preprocess_for(load_config(config, assignments=["clahe_grid=4", "contrast=clahe"]),
                            get_backbone_spec("efficientnet_lite0"))
    assert plan["config"] == wanted.to_dict()  # the shards a run of that config prepares, masks included
    assert (plan["config"]["size"], plan["config"]["clahe_grid"], plan["config"]["keep_mask"]) == (40, 4, True)
    assert list((tmp_path / "prepared" / "shards").glob("*.parquet"))
    bare = CliRunner().invoke(app, ["prepare", "--data", str(phantoms), "--out", str(tmp_path / "bare"),
                                    "--workers", "1", "--size", "32"])
    assert bare.exit_code == 0, bare.output  # no config: the settings' defaults (CLAHE, the backbone's size unless given)
    assert json.loads((tmp_path / "bare" / "plan.json").read_text())["config"]["contrast"] == "clahe"


def test_config_show_says_where_each_value_came_from(run_dir, tmp_path):
    (tmp_path / "c.yaml").write_text("data: x.csv\nrecipe: papers\nlr: 0.01\n")
    result = CliRunner().invoke(app, ["config", "show", "--config", str(tmp_path / "c.yaml"), "--set", "epochs=3",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["setting"]: r for r in json.loads(result.output)["settings"]}
    assert rows["optim.lr"] == {"setting": "optim.lr", "value": 0.01, "source": f"file {tmp_path / 'c.yaml'}"}
    assert rows["schedule.epochs"]["source"] == "command line (--set)" and rows["schedule.epochs"]["value"] == 3
    assert rows["optim.optimizer"] == {"setting": "optim.optimizer", "value": "adam", "source": "recipe papers"}
    assert rows["runtime.seed"]["source"] == "default" and len(rows) == sum(len(m.model_fields) for m in SECTIONS.values())
    shown = CliRunner().invoke(app, ["config", "show", str(run_dir)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "schedule:" in shown.output and "epochs: 2" in shown.output and "# given" in shown.output
    bad = CliRunner().invoke(app, ["config", "show", str(tmp_path)])
    assert bad.exit_code == 1 and "no config.yaml" in bad.output


def test_config_show_reads_a_run_folder_of_the_previous_version(tmp_path):
    from tests.train.test_config import OLD_RUN_CONFIG

    (tmp_path / "config.yaml").write_text(OLD_RUN_CONFIG)
    result = CliRunner().invoke(app, ["config", "show", str(tmp_path), "--format", "json", "--changed"])
    assert result.exit_code == 0, result.output
    rows = {r["setting"]: r for r in json.loads(result.output)["settings"]}
    assert rows["select.metric"] == {"setting": "select.metric", "value": "loss", "source": "run's config.yaml"}
    assert rows["runtime.prepared"]["value"] == "shared/prepared" and "runtime.seed" not in rows  # seed 0: the default


def test_a_manifest_remembers_its_scheme_and_training_on_it_takes_that_scheme(nih_phantoms, tmp_path):
    manifest = tmp_path / "nih.csv"
    scheme = "findings:Consolidation,Infiltration,Pneumonia"
    made = CliRunner().invoke(app, ["manifest", "--data", str(nih_phantoms), "--out", str(manifest), "--scheme", scheme])
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(app, ["train", "--data", str(manifest), "--size", "32", "--epochs", "1", "--batch-size",
                                      "8", "--fine-tune", "0", "--ratios", "6:2:2", "--out", str(tmp_path / "run"),
                                      "--set", f"mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 0, result.output  # not "the train side has no images of class COVID-19"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["class_names"] == ["Consolidation", "Infiltration", "Pneumonia"]
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["data"]["scheme"] == scheme  # the run's own config says which
    sources = json.loads((tmp_path / "run" / "config_sources.json").read_text())
    assert sources["data.scheme"] == "set by the data's recorded scheme"
    explicit = CliRunner().invoke(app, ["train", "--data", str(manifest), "--size", "32", "--epochs", "1",
                                        "--out", str(tmp_path / "three"), "--set", "scheme=3class"])
    assert explicit.exit_code == 1, explicit.output  # a scheme the user names wins (here: no image fits it)
