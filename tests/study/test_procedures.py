"""The papers' model-building procedures as study features: screen then fine-tune the top cells,
repeat over seeds, refit the chosen cell on train+validation and score it on the test side once."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from cxrlab.core import ConfigError
from cxrlab.models import load_model
from cxrlab.study import StudyConfig, run_study


def test_screen_then_fine_tune_the_top_cell_over_two_seeds_and_refit_it(phantoms, tmp_path):
    config = StudyConfig(name="procedures", data=str(phantoms), folds=2, repeats=2, refit=True, n_boot=20,
                         shortcut_checks=False, base={"size": 32, "epochs": 2, "batch_size": 16},
                         grid={"fine_tune": [0, 1]}, second_stage={"top": 1, "settings": {"fine_tune": 2}})
    first = run_study(config, tmp_path)
    assert first.failed == 0 and first.trained == 12  # (2 cells + 1 on top) × 2 folds × 2 seeds (the refit apart)
    table = pd.read_csv(tmp_path / "results.csv")
    assert sorted(set(table["run"])) == ["fold0", "fold0-repeat1", "fold1", "fold1-repeat1"]
    for _, row in table.iterrows():  # each repeat trains with its own seed on the same fold
        run = tmp_path / "runs" / row["cell"] / row["run"]
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == row["repeat"]
    # the second stage starts from the first stage's best cell by mean validation AUC
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("cell")
    stage1 = summary[summary["factor.stage"] == 1]
    top = stage1["auc_macro_mean"].idxmax()
    stage2 = summary[summary["factor.stage"] == 2]
    assert len(stage2) == 1 and stage2["factor.fine_tune"].iloc[0] == stage1.loc[top, "factor.fine_tune"]
    fine_tuned = yaml.safe_load((tmp_path / "runs" / stage2.index[0] / "fold0" / "config.yaml").read_text())
    assert fine_tuned["fine_tune"] == 2
    assert summary["auc_macro_sd_seeds"].notna().all() and (summary["folds_ok"] == 4).all()
    # the refit: every train+validation image, the median of the folds' kept epochs, the last one kept
    refit = json.loads((tmp_path / "refit.json").read_text())
    assert refit["status"] == "ok" and refit["cell"] == first.best
    split = pd.read_csv(tmp_path / "splits.csv")
    run_split = pd.read_csv(tmp_path / "runs" / first.best / "refit" / "splits.csv")
    assert set(run_split["split"]) == {"train", "test"} and refit["train_images"] == (split["split"] != "test").sum()
    kept = table.loc[table["cell"] == first.best, "best_epoch"] + 1
    assert refit["settings"]["epochs"] == round(kept.median()) and refit["settings"]["select_on"] == "last"
    assert 0 <= refit["test"]["test_accuracy"] <= 1 and "auc_macro" in refit["fold_model_test"]
    model, _, payload = load_model(tmp_path / "refit-model" / "model.pt")
    assert model.class_names == ("COVID-19", "Pneumonia", "Normal") and not payload["extra"].get("screening")
    report = (tmp_path / "report.md").read_text()
    assert "Refit:" in report and "seeds ±" in report and "Two stages" in report
    # resume: nothing is trained again, the refit included
    refit_summary = tmp_path / "runs" / first.best / "refit" / "summary.json"
    stamp = refit_summary.stat().st_mtime_ns
    again = run_study(config, tmp_path)
    assert again.trained == 0 and again.reused == 12 and refit_summary.stat().st_mtime_ns == stamp


def test_second_stage_settings_are_checked(tmp_path):
    from cxrlab.study.config import load_study_config

    with pytest.raises(ValueError, match="second_stage.settings.fine_tun: not a training setting"):
        StudyConfig(data="x.csv", second_stage={"top": 2, "settings": {"fine_tun": 2}})
    with pytest.raises(ValueError, match="give the settings"):
        StudyConfig(data="x.csv", second_stage={"top": 2, "settings": {}})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"data": "x.csv", "repeats": 0}))
    with pytest.raises(ConfigError, match="study.yaml: field 'repeats'"):
        load_study_config(path)
