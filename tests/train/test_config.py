from __future__ import annotations

import pytest

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
