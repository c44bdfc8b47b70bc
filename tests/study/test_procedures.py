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
                         grid={"fine_tune": [0, 1]}, second_stage={"top": 1, "settings": {"lr": 3e-4, "epochs": 3}})
    first = run_study(config, tmp_path)
    assert first.failed == 0 and first.trained == 12  # (2 cells + 1 on top) × 2 folds × 2 seeds (the refit apart)
    table = pd.read_csv(tmp_path / "results.csv")
    assert sorted(set(table["run"])) == ["fold0", "fold0-repeat1", "fold1", "fold1-repeat1"]
    for _, row in table.iterrows():  # each repeat trains with its own seed on the same fold
        run = tmp_path / "runs" / row["cell"] / row["run"]
        assert yaml.safe_load((run / "config.yaml").read_text())["runtime"]["seed"] == row["repeat"]
    # the second stage starts from the first stage's best cell by mean validation AUC
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("cell")
    stage1 = summary[summary["factor.stage"] == 1]
    top = stage1["auc_macro_mean"].idxmax()
    stage2 = summary[summary["factor.stage"] == 2]
    assert len(stage2) == 1 and stage2["factor.fine_tune"].iloc[0] == stage1.loc[top, "factor.fine_tune"]
    second = yaml.safe_load((tmp_path / "runs" / stage2.index[0] / "fold0" / "config.yaml").read_text())
    assert (second["optim"]["lr"], second["schedule"]["epochs"]) == (3e-4, 3) and stage1.index.str.startswith("fine_tune-").all()
    assert summary["auc_macro_sd_seeds"].notna().all() and (summary["folds_ok"] == 4).all()
    # three cells against the best: Holm's adjustment never lowers a p-value, and the verdict follows it
    tested = summary.dropna(subset=["p_vs_best"])
    assert len(tested) == 2 and (tested["p_vs_best_holm"] >= tested["p_vs_best"]).all()
    assert (tested["within_noise"] == (tested["p_vs_best_holm"] >= 0.05)).all()
    # the refit: every train+validation image, the median of the folds' kept epochs, the last one kept
    refit = json.loads((tmp_path / "refit.json").read_text())
    assert refit["status"] == "ok" and refit["cell"] == first.best
    split = pd.read_csv(tmp_path / "splits.csv")
    run_split = pd.read_csv(tmp_path / "runs" / first.best / "refit" / "splits.csv")
    assert set(run_split["split"]) == {"train", "test"} and refit["train_images"] == (split["split"] != "test").sum()
    kept = table.loc[table["cell"] == first.best, "best_epoch"] + 1
    assert refit["settings"]["epochs"] == round(kept.median()) and refit["settings"]["select_on"] == "last"
    scored = pd.read_csv(tmp_path / "runs" / first.best / "refit" / "test_predictions.csv")
    called = scored[["COVID-19", "Pneumonia", "Normal"]].idxmax(axis=1)
    assert refit["test"]["test_accuracy"] == pytest.approx((called == scored["label"]).mean())
    assert refit["fold_model_test"]["run"] == "ensemble" and "auc_macro" in refit["fold_model_test"]
    assert "p_vs_fold_model" in refit and "delong_p" not in refit  # a bootstrap over the test patients
    model, _, payload = load_model(tmp_path / "refit-model" / "model.pt")
    assert model.class_names == ("COVID-19", "Pneumonia", "Normal") and not payload["extra"].get("screening")
    report = (tmp_path / "report.md").read_text()
    assert "Refit:" in report and "seeds ±" in report and "Two stages" in report
    # resume: nothing is trained again, the refit included
    refit_summary = tmp_path / "runs" / first.best / "refit" / "summary.json"
    stamp = refit_summary.stat().st_mtime_ns
    again = run_study(config, tmp_path)
    assert again.trained == 0 and again.reused == 12 and refit_summary.stat().st_mtime_ns == stamp


def test_a_second_stage_factor_shows_its_new_value_and_equal_cells_run_once():
    from cxrlab.study.plan import cells, second_stage_cells

    config = StudyConfig(data="x.csv", grid={"fine_tune": [0, 1], "size": [32]},
                         second_stage={"top": 2, "settings": {"fine_tune": 2}})
    first = cells(config)
    assert [c.id for c in first] == ["fine_tune-0__size-32", "fine_tune-1__size-32"]  # ids as without a second stage
    second = second_stage_cells(config, first)
    assert len(second) == 1 and second[0].factors == {"stage": 2, "fine_tune": 2, "size": 32}
    assert second[0].settings == {"fine_tune": 2, "size": 32}


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


def test_the_refit_replays_the_epochs_each_phase_ran_up_to_the_kept_one(tmp_path):
    from cxrlab.study.plan import cells
    from cxrlab.study.refit import refit_settings

    phases = [{"fine_tune": 0, "lr": 1e-3, "epochs": 10}, {"fine_tune": "all", "lr": 1e-4, "epochs": 10}]
    config = StudyConfig(data="x.csv", folds=3, grid={"size": [32]}, base={"phases": phases})
    cell = cells(config)[0]
    # phase 1 stopped early after 5 epochs in every run; the kept epochs lie in phase 2 (2, 4, 3 into it)
    for fold, kept in enumerate((6, 8, 7)):
        run = tmp_path / "runs" / cell.id / f"fold{fold}"
        run.mkdir(parents=True)
        pd.DataFrame({"epoch": range(14), "phase": [0] * 5 + [1] * 9}).to_csv(run / "metrics.csv", index=False)
    runs = pd.DataFrame({"fold": [0, 1, 2], "run": ["fold0", "fold1", "fold2"], "best_epoch": [6, 8, 7]})
    settings = refit_settings(config, cell, runs, tmp_path)
    assert [p["epochs"] for p in settings["phases"]] == [5, 3] and settings["select_on"] == "last"
    single = StudyConfig(data="x.csv", folds=3, grid={"size": [32]}, base={"phases": phases[:1]})
    assert [p["epochs"] for p in refit_settings(single, cells(single)[0], runs, tmp_path)["phases"]] == [5]
    runs["best_epoch"] = [1, 2, 3]  # kept in phase 1 (2, 3, 4 epochs in): phase 2 is dropped
    assert [p["epochs"] for p in refit_settings(config, cell, runs, tmp_path)["phases"]] == [3]


def test_one_split_with_seeds_exports_their_ensemble_with_a_reference_from_its_validation_side(phantoms, tmp_path):
    config = StudyConfig(name="seeds", data=str(phantoms), folds=0, repeats=2, ratios=(0.5, 0.25, 0.25), n_boot=20, shortcut_checks=False,
                         base={"size": 64, "epochs": 1, "batch_size": 16}, grid={"fine_tune": [1]})
    result = run_study(config, tmp_path)
    assert result.failed == 0 and result.summary["test_run"].tolist() == ["ensemble"]
    model, _, payload = load_model(tmp_path / "best-model" / "model.pt")
    assert len(payload["members"]) == 2 and payload["extra"]["runs"] == ["fold0", "fold0-repeat1"]
    assert payload["extra"]["screening"]["ood"]["threshold"] > 0  # fitted on the runs' shared train/validation split
    exported = pd.read_csv(tmp_path / "best-model" / "splits.csv")
    assert set(exported["split"]) == {"train", "val", "test"}
