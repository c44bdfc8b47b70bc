from __future__ import annotations

import pytest
import yaml

from cxrlab.core import ConfigError
from cxrlab.train import build_config, load_config


def test_typos_and_bad_values_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="field 'optimzer': unknown field; did you mean 'optimizer'"):
        build_config({"data": "x", "optimzer": "adam"})
    with pytest.raises(ConfigError, match="field 'model.fine_tune'"):  # named where it lives
        build_config({"data": "x", "fine_tune": -1})
    with pytest.raises(ConfigError, match="field 'optim.lr'"):
        build_config({"data": "x", "lr": 0})
    for bad in ({"seed": -1}, {"seed": 1e20}, {"crop_scale": [1.5, 0.1]}, {"lr": float("inf")}, {"lr": 1e3}):
        key = next(iter(bad))
        values = {"data": "x", "augment": {key: bad[key]}} if key == "crop_scale" else {"data": "x", **bad}
        with pytest.raises(ConfigError, match=key):  # refused before a run starts, not a crash or NaN weights later
            build_config(values)
    assert build_config({"data": "x", "precision": 32}).runtime.precision == "32"  # YAML reads 32 as a number
    with pytest.raises(ConfigError, match="give data"):
        build_config({})
    (tmp_path / "c.yaml").write_text("data: x\nphases:\n  - {fine_tune: 0, lr: 1.0e-3, epoch: 2}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: field 'schedule.phases.0.epoch': unknown field; did you mean 'epochs'"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("assignment, named", [
    ("optim.attention_loss=.inf", "optim.attention_loss': Input should be a finite number"),  # no bound stops inf
    ("runtime.cache_max_gb=.nan", "runtime.cache_max_gb': Input should be a finite number"),
    ("schedule.phases=[{fine_tune: 1, lr: .inf, epochs: 1}]", "schedule.phases.0.lr"),
    ("data.ratios=[0.5,0.5,0.5]", "ratios: shares must sum to 1"),  # the split's rule, before any data is read
    ("data.ratios=[0.33,0.33,0.34]", "multiples of 1/20"),
    ("model.head={hidden: [8], dropout: [2.0]}", r"head: widths must be >= 1 and dropout in \[0, 1\)"),
    ("model.head={hidden: [8, 4], dropout: [0.1]}", r"need one value per hidden layer \(2\), got 1$"),
    ("model.head=gap-9", "unknown preset 'gap-9'"),
    ("optim.batch_size=1000000000", "optim.batch_size"),
])
def test_ranges_and_cross_field_rules_are_checked_with_the_settings(assignment, named):
    """Each setting's rule lives in the configuration model, so ``--set`` gives one line naming it
    (not a crash, or NaN weights, once a run has started)."""
    with pytest.raises(ConfigError, match=named) as caught:
        load_config(None, overrides={"data": "x"}, assignments=[assignment])
    assert "\n" not in str(caught.value) and "more)" not in str(caught.value)  # one line; a union's branches are one field


def test_a_head_given_only_its_widths_gets_one_dropout_per_layer():
    head = load_config(None, overrides={"data": "x"}, assignments=["head.hidden=[32, 16, 8]"]).model.head
    assert head.hidden == (32, 16, 8) and head.dropout == (0.10, 0.05, 0.05)


def test_yaml_overrides_and_phases(tmp_path):
    (tmp_path / "c.yaml").write_text("data: x\nlr: 0.01\nphases:\n  - {fine_tune: 0, lr: 1.0e-3, epochs: 2}\n"
                                     "  - {fine_tune: all, lr: 1.0e-4, epochs: 3}\n")
    cfg = load_config(tmp_path / "c.yaml", {"seed": 7, "lr": None, "fine_tune": "all"})
    assert cfg.runtime.seed == 7 and cfg.optim.lr == 0.01 and cfg.model.fine_tune == "all"
    assert [(p.fine_tune, p.epochs) for p in cfg.resolved_phases()] == [(0, 2), ("all", 3)]
    again = load_config(None, {"data": "x"})
    assert [(p.fine_tune, p.lr) for p in again.resolved_phases()] == [("all", 1e-4)]  # the small-data recipe
    papers = load_config(None, {"data": "x", "recipe": "papers", "epochs": 4})
    assert [(p.fine_tune, p.lr, p.epochs) for p in papers.resolved_phases()] == [(2, 1e-3, 4)]  # own values win
    assert (papers.select.metric, papers.optim.optimizer, papers.augment.enabled) == ("loss", "adam", False)
    assert load_config(None, {"data": "x", "epochs": 2}).select.min_epochs == 2  # the default minimum shrinks


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        load_config(path)


def test_settings_in_sections_equal_flat_ones_and_a_written_config_replays_the_run(tmp_path):
    from cxrlab.preprocess import PreprocessConfig
    from cxrlab.train.config import ALIASES, SECTIONS, TrainConfig

    assert list(TrainConfig.model_fields) == ["recipe", *SECTIONS]  # the run's config is its sections
    assert SECTIONS["preprocess"] is PreprocessConfig  # the one preprocessing model: prepare's and the model file's
    leaves = [f"{s}.{n}" for s, m in SECTIONS.items() if s != "augment" for n in m.model_fields]
    assert sorted(ALIASES.values()) == sorted(leaves)  # every setting has one flat alias, and one place
    (tmp_path / "flat.yaml").write_text("data: x\nlr: 3.0e-4\nschedule: step\nhead: {hidden: [8]}\n"
                                        "augment: {enabled: true}\nmlflow_uri: sqlite:///m.db\n")
    (tmp_path / "sections.yaml").write_text("data: {path: x}\noptim: {lr: 3.0e-4}\nschedule: {kind: step}\n"
                                            "model: {head: {hidden: [8]}}\naugment: {enabled: true}\n"
                                            "tracking: {mlflow_uri: sqlite:///m.db}\n")
    flat, sections = load_config(tmp_path / "flat.yaml"), load_config(tmp_path / "sections.yaml")
    assert sections == flat and (flat.optim.lr, flat.schedule.kind, flat.model.head.hidden) == (3e-4, "step", (8,))
    by_field = load_config(tmp_path / "sections.yaml", assignments=["lr=1e-5", "head.hidden=[4]"])
    by_section = load_config(tmp_path / "sections.yaml", assignments=["optim.lr=1e-5", "model.head.hidden=[4]"])
    assert by_field == by_section and by_field.optim.lr == 1e-5 and by_field.model.head.hidden == (4,)
    (tmp_path / "written.yaml").write_text(by_field.to_yaml())  # as a run writes its config.yaml
    assert set(yaml.safe_load(by_field.to_yaml())) == {"recipe", *SECTIONS}
    assert load_config(tmp_path / "written.yaml") == by_field
    assert by_field.replace({"select_on": "loss"}).select.metric == "loss"  # a validated copy, by any name


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
    with pytest.raises(ConfigError, match=r"field 'optim.lr'"):  # the field's own check, reached through its section
        build_config({"data": "x", "optim": {"lr": 0}})


def test_a_study_takes_training_settings_in_sections():
    from cxrlab.study.config import StudyConfig

    study = StudyConfig(data="x", base={"optim": {"lr": 1e-5}, "schedule": {"epochs": 2}},
                        grid={"model.fine_tune": [0, 2]}, variants={"smooth": {"optim.label_smoothing": 0.1}})
    assert study.base == {"lr": 1e-5, "epochs": 2} and study.grid == {"fine_tune": [0, 2]}
    assert study.variants == {"smooth": {"label_smoothing": 0.1}}
    with pytest.raises(ValueError, match=r"runtime\.seed.*set by the study itself|seed: set by the study itself"):
        StudyConfig(data="x", base={"runtime": {"seed": 3}})


OLD_RUN_CONFIG = """\
recipe: small-data
data:
  path: data/manifest.csv
  splits: null
  scheme: 3class
  uncertain: [ignore]
  blank: zeros
  ratios: [0.8, 0.1, 0.1]
  dedupe: true
  folds: 0
  class_balance: weights
preprocess: {size: 96, contrast: clahe, resize: stretch, artifacts: keep, lung_crop: false, prepared: shared/prepared}
model:
  backbone: efficientnet_lite0
  pretrained: imagenet
  weights: null
  init_from: null
  allow_download: false
  fine_tune: 2
  batchnorm: train
  head: gap-128-64
  lung_attention: false
  tta: none
optim: {optimizer: adam, lr: 0.001, lr_decay: 1.0, momentum: 0.9, weight_decay: 0.0, label_smoothing: 0.0,
        ema_decay: 0.0, mixup: 0.0, batch_size: 8, attention_loss: 0.0, attention_form: outside_share}
schedule: {kind: plateau, epochs: 2, phases: [], warmup_epochs: 0, plateau_factor: 0.2, plateau_patience: 2,
           step_size: 5, step_gamma: 0.1, select_on: loss, select_smoothing: 1, min_epochs: 1, patience: 5}
runtime: {out: runs/r, seed: 0, device: auto, devices: 1, num_nodes: 1, strategy: auto, precision: '32',
          channels_last: true, cache_prefix: true, cache_max_gb: 4.0, prefix_store: null, num_workers: 0,
          progress_bar: true}
tracking: {mlflow_uri: null, experiment: cxrlab, mlflow_tags: {}}
augment: {enabled: false, rotation: 15.0, crop_scale: [0.85, 1.0], hflip: true, translate: 0.0, brightness: 0.0,
          contrast: 0.0, gamma: 0.0}
"""


def test_a_run_folder_written_by_the_previous_version_still_loads(tmp_path):
    """The config.yaml a run of the previous version wrote (sections with select_on in schedule and
    prepared in preprocess) loads into today's sections with every value where it now lives."""
    (tmp_path / "config.yaml").write_text(OLD_RUN_CONFIG)
    config = load_config(tmp_path / "config.yaml")
    assert (config.select.metric, config.select.smoothing, config.select.min_epochs, config.select.patience) == \
        ("loss", 1, 1, 5)
    assert config.runtime.prepared == "shared/prepared" and config.preprocess.size == 96
    assert (config.model.fine_tune, config.optim.optimizer, config.schedule.kind) == (2, "adam", "plateau")
    assert load_config(tmp_path / "config.yaml", assignments=["schedule.select_on=auc_macro"]).select.metric == "auc_macro"
