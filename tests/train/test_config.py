from __future__ import annotations

import pytest
import yaml

from cxrlab.core import ConfigError
from cxrlab.train import build_config, load_config


def test_typos_and_bad_values_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="field 'optimzer': unknown field; did you mean 'optimizer'"):
        build_config({"data": "x", "optimzer": "adam"})
    with pytest.raises(ConfigError, match="field 'fine_tune'"):
        build_config({"data": "x", "fine_tune": -1})
    with pytest.raises(ConfigError, match="field 'lr'"):
        build_config({"data": "x", "lr": 0})
    with pytest.raises(ConfigError, match="give data"):
        build_config({})
    (tmp_path / "c.yaml").write_text("data: x\nphases:\n  - {fine_tune: 0, lr: 1.0e-3, epoch: 2}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: field 'phases.0.epoch': unknown field; did you mean 'epochs'"):
        load_config(tmp_path / "c.yaml")


def test_yaml_overrides_and_phases(tmp_path):
    (tmp_path / "c.yaml").write_text("data: x\nlr: 0.01\nphases:\n  - {fine_tune: 0, lr: 1.0e-3, epochs: 2}\n"
                                     "  - {fine_tune: all, lr: 1.0e-4, epochs: 3}\n")
    cfg = load_config(tmp_path / "c.yaml", {"seed": 7, "lr": None, "fine_tune": "all"})
    assert cfg.seed == 7 and cfg.lr == 0.01 and cfg.fine_tune == "all"
    assert [(p.fine_tune, p.epochs) for p in cfg.resolved_phases()] == [(0, 2), ("all", 3)]
    again = load_config(None, {"data": "x"})
    assert [(p.fine_tune, p.lr) for p in again.resolved_phases()] == [("all", 1e-4)]  # the small-data recipe
    papers = load_config(None, {"data": "x", "recipe": "papers", "epochs": 4})
    assert [(p.fine_tune, p.lr, p.epochs) for p in papers.resolved_phases()] == [(2, 1e-3, 4)]  # own values win
    assert (papers.select_on, papers.optimizer, papers.augment.enabled) == ("loss", "adam", False)
    assert load_config(None, {"data": "x", "epochs": 2}).min_epochs == 2  # the default minimum shrinks


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        load_config(path)


def test_settings_in_sections_equal_flat_ones_and_a_written_config_replays_the_run(tmp_path):
    from cxrlab.train.config import SECTIONS, TOP_LEVEL, TrainConfig

    names = [field for section in SECTIONS.values() for field in section.values()] + list(TOP_LEVEL)
    assert sorted(names) == sorted(TrainConfig.model_fields)  # every field in exactly one place
    (tmp_path / "flat.yaml").write_text("data: x\nlr: 3.0e-4\nschedule: step\nhead: {hidden: [8]}\n"
                                        "augment: {enabled: true}\nmlflow_uri: sqlite:///m.db\n")
    (tmp_path / "sections.yaml").write_text("data: {path: x}\noptim: {lr: 3.0e-4}\nschedule: {kind: step}\n"
                                            "model: {head: {hidden: [8]}}\naugment: {enabled: true}\n"
                                            "tracking: {mlflow_uri: sqlite:///m.db}\n")
    flat, sections = load_config(tmp_path / "flat.yaml"), load_config(tmp_path / "sections.yaml")
    assert sections == flat and (flat.lr, flat.schedule, flat.head.hidden) == (3e-4, "step", (8,))
    by_field = load_config(tmp_path / "sections.yaml", assignments=["lr=1e-5", "head.hidden=[4]"])
    by_section = load_config(tmp_path / "sections.yaml", assignments=["optim.lr=1e-5", "model.head.hidden=[4]"])
    assert by_field == by_section and by_field.lr == 1e-5 and by_field.head.hidden == (4,)
    (tmp_path / "written.yaml").write_text(by_field.to_yaml())  # as a run writes its config.yaml
    assert set(yaml.safe_load(by_field.to_yaml())) == {"recipe", "augment", *SECTIONS}
    assert load_config(tmp_path / "written.yaml") == by_field


def test_section_mistakes_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config: optim\.lrr: the optim section has no such setting; "
                                          r"did you mean 'optim\.lr'"):
        build_config({"data": "x", "optim": {"lrr": 1e-4}})
    with pytest.raises(ConfigError, match=r"optim\.lr: 'lr' is set twice"):
        build_config({"data": "x", "lr": 1e-3, "optim": {"lr": 1e-4}})
    with pytest.raises(ConfigError, match=r"c\.yaml: schedule\.knd: the schedule section has no such setting; "
                                          r"did you mean 'schedule\.kind'"):
        (tmp_path / "c.yaml").write_text("data: x\n")
        load_config(tmp_path / "c.yaml", assignments=["schedule.knd=step"])
    with pytest.raises(ConfigError, match=r"field 'lr'"):  # the field's own check, reached through its section
        build_config({"data": "x", "optim": {"lr": 0}})


def test_a_study_takes_training_settings_in_sections():
    from cxrlab.study.config import StudyConfig

    study = StudyConfig(data="x", base={"optim": {"lr": 1e-5}, "schedule": {"epochs": 2}},
                        grid={"model.fine_tune": [0, 2]}, variants={"smooth": {"optim.label_smoothing": 0.1}})
    assert study.base == {"lr": 1e-5, "epochs": 2} and study.grid == {"fine_tune": [0, 2]}
    assert study.variants == {"smooth": {"label_smoothing": 0.1}}
    with pytest.raises(ValueError, match=r"runtime\.seed.*set by the study itself|seed: set by the study itself"):
        StudyConfig(data="x", base={"runtime": {"seed": 3}})
