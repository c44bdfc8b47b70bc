"""Studies: config validation, the corrected t-test, a tiny study end to end, resume and kill -9."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
import yaml
from scipy import stats

from cxrlab.core import ConfigError
from cxrlab.models import load_model
from cxrlab.models.predictor import Predictor
from cxrlab.study import StudyConfig, corrected_resampled_ttest, load_study_config, run_study
from cxrlab.study.plan import cells
from cxrlab.workflows.predictions import predict_test_side

TIMING = ("seconds_per_epoch",)


def test_config_names_the_bad_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"data": "x.csv", "grid": {"fine_tun": [0, 1]}}))
    with pytest.raises(ConfigError, match="grid.fine_tun: not a training setting; did you mean 'fine_tune'"):
        load_study_config(path)
    path.write_text(yaml.safe_dump({"data": "x.csv", "base": {"seed": 3}}))
    with pytest.raises(ConfigError, match="set by the study itself"):
        load_study_config(path)
    path.write_text(yaml.safe_dump({"data": "x.csv", "grid": {"fine_tune": []}}))
    with pytest.raises(ConfigError, match="non-empty list"):
        load_study_config(path)
    grid = StudyConfig(data="x.csv", grid={"backbone": ["vgg16", "resnet50"], "fine_tune": [0, 2]})
    assert [c.factors for c in cells(grid)][1] == {"backbone": "vgg16", "fine_tune": 2}
    assert len({c.id for c in cells(grid)}) == 4


def test_corrected_resampled_ttest_matches_its_formula():
    a, b = np.array([0.80, 0.84, 0.79, 0.86, 0.83]), np.array([0.78, 0.80, 0.80, 0.81, 0.79])
    d = a - b
    t = d.mean() / math.sqrt((1 / 5 + 0.25) * d.var(ddof=1))
    result = corrected_resampled_ttest(a, b, 0.25)
    assert result["t"] == pytest.approx(t) and result["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 4))
    plain = stats.ttest_rel(a, b).pvalue
    assert result["p_value"] > plain  # the correction is more cautious than the plain paired t-test
    assert corrected_resampled_ttest(a, a, 0.25)["p_value"] == 1.0


def _study(phantoms, **extra) -> StudyConfig:
    return StudyConfig(name="tiny", data=str(phantoms), folds=2, base={"size": 64, "epochs": 2, "batch_size": 8},
                       grid={"fine_tune": [0, 2, 99]}, **{"n_boot": 50, **extra})  # few replicates: a fast suite


def _without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in frame.columns if c in TIMING])


def test_tiny_study_end_to_end_and_resume(phantoms, tmp_path):
    config = _study(phantoms)
    first = run_study(config, tmp_path)
    assert (first.trained, first.failed) == (6, 2)  # 3 cells × 2 folds; k=99 is recorded as failed, the rest go on
    table = pd.read_csv(tmp_path / "results.csv")
    assert len(table) == 6 and set(table.loc[table["status"] == "failed", "cell"]) == {"fine_tune-99"}
    assert "8 blocks" in table.loc[table["status"] == "failed", "error"].iloc[0]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary.set_index("cell").loc["fine_tune-2", "folds_ok"] == 2 and first.best in {"fine_tune-0", "fine_tune-2"}
    assert summary["test_accuracy"].notna().sum() == 2  # both complete cells evaluated on the test side
    probe = pd.read_csv(tmp_path / "baseline_folds.csv")  # the linear probe on the same folds
    assert sorted(probe["fold"]) == [0, 1] and probe["auc_macro"].between(0, 1).all()
    assert summary["p_vs_probe"].notna().sum() == 2 and "Against the baseline" in (tmp_path / "report.md").read_text()
    # folds: one patient never on two sides, test side untouched by training
    split = pd.read_csv(tmp_path / "splits.csv")
    assert split.groupby("patient_id")["fold"].nunique().max() == 1 and (split.loc[split["split"] == "test", "fold"] == -1).all()
    test_images = {(tmp_path / p).resolve() for p in split.loc[split["split"] == "test", "image"]}
    val_images = set()
    for fold in (0, 1):
        run_dir = tmp_path / "runs" / "fine_tune-2" / f"fold{fold}"
        run_split = pd.read_csv(run_dir / "splits.csv")
        sides = {side: {(run_dir / p).resolve() for p in rows["image"]} for side, rows in run_split.groupby("split")}
        assert sides["test"] == test_images and not sides["val"] & sides["train"]
        val_images |= sides["val"]
    assert val_images == {(tmp_path / p).resolve() for p in split.loc[split["split"] != "test", "image"]}  # folds cover the pool
    # the prefix store holds one entry per k, shared by both folds
    assert len(list((tmp_path / "shared" / "prefix-store").glob("*.npy"))) == 2
    # each cell is scored as the ensemble of its runs, not as the run whose validation fold was easiest
    best_dir = tmp_path / "runs" / first.best
    assert summary.set_index("cell").loc[first.best, "test_run"] == "ensemble"
    ensemble = pd.read_csv(best_dir / "ensemble" / "test_predictions.csv")
    test = split[split["split"] == "test"].assign(image=lambda f: [str((tmp_path / p).resolve()) for p in f["image"]])
    members = [predict_test_side(best_dir / f"fold{k}", test, tmp_path / "member-check") for k in (0, 1)]
    names = ["COVID-19", "Pneumonia", "Normal"]
    np.testing.assert_allclose(ensemble[names], (members[0][names] + members[1][names]) / 2, atol=1e-5)
    # best-model is that ensemble, a self-contained folder that evaluate can load
    model, _, payload = load_model(tmp_path / "best-model" / "model.pt")
    assert model.class_names == tuple(names) and len(payload["members"]) == 2
    origin = json.loads((tmp_path / "best-model" / "origin.json").read_text())
    assert origin["cell"] == first.best and origin["runs"] == ["fold0", "fold1"]
    # its screening reference comes from out-of-fold predictions; no training run paid for one
    screening = payload["extra"]["screening"]
    assert screening["ood"]["threshold"] > 0
    assert screening["operating_point"] is None or screening["operating_point"]["chosen_on"] == "out-of-fold predictions"
    others = list((tmp_path / "runs").glob("*/fold*/model.pt"))
    assert others and not any(load_model(p)[2]["extra"].get("screening") for p in others)
    best_split = pd.read_csv(tmp_path / "best-model" / "splits.csv")
    assert all((tmp_path / "best-model" / p).resolve().exists() for p in best_split["image"].head(3))
    report = (tmp_path / "report.md").read_text()
    assert "**best**" in report and "Failed runs" in report and "metrics_vs_k.png" in report
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64") == 2  # metrics vs k, test side
    assert "test in-lung share" in report and summary["test_accuracy_low"].notna().sum() == 2
    # shortcut audit of the best model: source probe (two phantom sources) and lung checks (phantoms have masks)
    audit = json.loads((tmp_path / "shortcut_audit.json").read_text())
    assert audit["ran_on"] == {"device": "cpu", "precision": "32-true", "processes": 1}  # the runs' device
    assert screening["ran_on"] == audit["ran_on"]  # the exported ensemble's reference, likewise
    probes = audit["source_probe"]["probes"]
    assert set(probes) == {"fine-tuned (best model)", "pretrained (before fine-tuning)"}
    assert 0 <= probes["fine-tuned (best model)"]["all"]["balanced_accuracy"] <= 1
    assert set(audit["lungs"]["masked_inputs"]["variants"]) == {"full image", "lungs only", "lungs removed"}
    evidence = audit["lungs"]["lung_evidence"]
    assert evidence["n"] + evidence["no_evidence"] == (split["split"] == "test").sum()  # no_evidence: all-zero maps
    assert "Source probe" in report and "lungs or everything else blacked out" in report
    # MLflow: a parent run with one nested child per trained run
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = json.loads((tmp_path / "study.json").read_text())["mlflow_parent"]
    experiment = client.get_experiment_by_name("cxrlab-studies")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 4 and client.get_run(parent).data.tags["cxrlab.best_cell"] == first.best
    # resume: nothing finished is recomputed and the table is the same
    again = run_study(config, tmp_path)
    assert again.trained == 0 and again.reused == 6
    pd.testing.assert_frame_equal(_without_timing(pd.read_csv(tmp_path / "results.csv")), _without_timing(table))
    # an interrupted run (folder without summary.json) is trained again, alone, to the same numbers
    interrupted = tmp_path / "runs" / "fine_tune-0" / "fold1"
    (interrupted / "summary.json").unlink()
    third = run_study(config, tmp_path)
    assert third.trained == 1
    pd.testing.assert_frame_equal(_without_timing(pd.read_csv(tmp_path / "results.csv")), _without_timing(table))
    with pytest.raises(ConfigError, match=r"holds a study with other settings \(differs in folds\)"):
        run_study(config.model_copy(update={"folds": 3}), tmp_path)


# One small study the resumption and parallel tests compare with (the audits are not their point).
SMALL = {"folds": 2, "shortcut_checks": False, "n_boot": 20, "base": {"size": 64, "epochs": 2, "batch_size": 8},
         "grid": {"fine_tune": [1, 2]}}


@pytest.fixture(scope="module")
def sequential_table(phantoms, tmp_path_factory) -> pd.DataFrame:
    """results.csv of SMALL run once, in this process, without interruption."""
    out = tmp_path_factory.mktemp("sequential")
    run_study(StudyConfig(name="seq", data=str(phantoms), **SMALL), out)
    return _without_timing(pd.read_csv(out / "results.csv"))


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_table(phantoms, tmp_path, sequential_table):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "k9", "data": str(phantoms), **SMALL}))
    command = [str(Path(sys.executable).parent / "cxrlab"), "study", str(study), "--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "out" / "runs").glob("*/fold*/summary.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 in the middle of the study
    proc.wait()
    finished = len(list((tmp_path / "out" / "runs").glob("*/fold*/summary.json")))
    assert 1 <= finished < 4
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{4 - finished} run(s) trained, {finished} reused" in rerun.stdout.replace("\n", " ")
    resumed = _without_timing(pd.read_csv(tmp_path / "out" / "results.csv"))
    pd.testing.assert_frame_equal(resumed, sequential_table)  # as if it had never been killed


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs" / "studies").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_study_configs_are_valid(path, tmp_path):
    from cxrlab.study.plan import run_config

    config = load_study_config(path)
    for cell in cells(config):
        train = run_config(config, cell, tmp_path / cell.id, tmp_path / "shared", {})
        assert train.data.scheme == config.scheme and not train.runtime.progress_bar


def test_a_given_split_keeps_its_test_side(phantoms, tmp_path):
    from cxrlab.data import SplitConfig, class_names, load_source, make_splits, write_splits
    from cxrlab.study.plan import fold_frame, study_split

    frame, info = make_splits(load_source(phantoms).table, class_names("3class"), SplitConfig(folds=3, seed=4))
    given = write_splits(frame, info, tmp_path / "given")
    split = study_split(StudyConfig(splits=str(given), folds=2), tmp_path / "study")
    assert set(split.loc[split["split"] == "test", "image"]) == set(frame.loc[frame["split"] == "test", "image"])
    pool = split[split["split"] != "test"]
    assert set(pool["fold"]) == {0, 1}  # folds over train + val of the given file, not its own train-only folds
    for fold in (0, 1):
        sides = fold_frame(split, fold, 2)["split"].value_counts()
        assert sides["train"] + sides["val"] == len(pool) and sides["test"] == (split["split"] == "test").sum()


def test_binary_study(phantoms, tmp_path):
    config = StudyConfig(name="bin", data=str(phantoms), scheme="binary", folds=2, n_boot=50,
                         base={"size": 64, "epochs": 1, "batch_size": 8}, grid={"fine_tune": [2]})
    result = run_study(config, tmp_path)
    assert result.failed == 0 and result.best == "fine_tune-2"
    row = result.summary.iloc[0]
    runs = pd.read_csv(tmp_path / "results.csv")
    assert row["sensitivity_mean"] == pytest.approx(runs["sensitivity"].mean())
    predicted = pd.read_csv(tmp_path / "runs" / row["cell"] / row["test_run"] / "test_predictions.csv")
    names = ["COVID-19", "non-COVID"]
    assert row["test_accuracy"] == pytest.approx((predicted[names].idxmax(axis=1) == predicted["label"]).mean())
    positive = predicted["label"] == "COVID-19"
    if positive.nunique() == 2:  # NaN when the tiny test side holds one class
        assert row["test_auc_covid"] == pytest.approx(roc_auc_score(positive, predicted["COVID-19"]))
    else:
        assert math.isnan(row["test_auc_covid"])
    model, _, _ = load_model(tmp_path / "best-model" / "model.pt")
    assert model.class_names == ("COVID-19", "non-COVID")


def test_leave_one_source_out_of_the_best_configuration(tmp_path):
    from cxrlab.data import generate_phantoms

    phantoms = generate_phantoms(tmp_path / "phantoms", n_patients=48, size=64, seed=2, max_images_per_patient=1)
    config = StudyConfig(name="loso", data=str(phantoms), folds=2, leave_one_source_out=True, n_boot=50,
                         base={"size": 64, "epochs": 1, "batch_size": 8}, grid={"fine_tune": [2]})
    result = run_study(config, tmp_path / "study")
    tmp_path = tmp_path / "study"
    loso = json.loads((tmp_path / "leave_one_source_out.json").read_text())
    assert set(loso["sources"]) == {"phantom-a", "phantom-b"} and loso["cell"] == result.best
    for source, entry in loso["sources"].items():
        run_split = pd.read_csv(tmp_path / "loso" / result.best / f"without-{source}" / "splits.csv")
        assert set(run_split.loc[run_split["split"] == "test", "source"]) == {source}  # never trained on it
        assert source not in set(run_split.loc[run_split["split"] != "test", "source"])
        scored = pd.read_csv(tmp_path / "loso" / result.best / f"without-{source}" / "test_predictions.csv")
        called = scored[["COVID-19", "Pneumonia", "Normal"]].idxmax(axis=1)
        assert entry["status"] == "ok" and entry["accuracy"] == pytest.approx((called == scored["label"]).mean())
    assert "Leave one source out" in (tmp_path / "report.md").read_text()
    best = pd.read_csv(tmp_path / "summary.csv").set_index("cell").loc[result.best]
    assert loso["in_distribution"]["side"] == "test"  # not the validation side early stopping chose on
    assert loso["in_distribution"]["accuracy"] == pytest.approx(best["test_accuracy"])
    assert all(e["reference_kind"] == "test accuracy" for e in loso["sources"].values())  # both hold every class
    stamp = (tmp_path / "loso" / result.best / "without-phantom-a" / "summary.json").stat().st_mtime_ns
    run_study(config, tmp_path)  # resumed: the held-out runs are reused too
    assert (tmp_path / "loso" / result.best / "without-phantom-a" / "summary.json").stat().st_mtime_ns == stamp


def test_runs_in_parallel_processes_give_the_sequential_table(phantoms, tmp_path, sequential_table):
    config = StudyConfig(name="par", data=str(phantoms), workers=2, **SMALL)
    parallel = run_study(config, tmp_path / "two")
    assert parallel.trained == 4 and parallel.failed == 0
    two = _without_timing(pd.read_csv(tmp_path / "two" / "results.csv"))
    # one thread per process: last digits may move
    pd.testing.assert_frame_equal(sequential_table, two, check_exact=False, atol=0.02)
    # the shared prefix store was filled once per k although folds of a k ran at the same time
    assert len(list((tmp_path / "two" / "shared" / "prefix-store").glob("*.npy"))) == 2
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'two' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cxrlab-studies").experiment_id])
    assert len(runs) == 5  # the parent and one nested run per training run, all written from two processes


def test_variants_compare_guided_attention_with_intervals_and_lung_share(phantoms, tmp_path):
    from cxrlab.study.shortcut_probes import lung_audit, source_probe_audit

    config = StudyConfig(name="guided", data=str(phantoms), folds=2, base={"size": 64, "epochs": 2, "batch_size": 8,
                                                                            "fine_tune": 2},
                         variants={"plain": {}, "guided attention": {"lung_attention": True, "attention_loss": 1.0}},
                         n_boot=50, faithfulness=True)
    assert config.grid == {}  # variants alone: no default k sweep on top
    assert [c.settings for c in cells(config)] == [{}, {"lung_attention": True, "attention_loss": 1.0}]
    result = run_study(config, tmp_path)
    assert result.failed == 0
    summary = result.summary.set_index("cell")
    assert list(summary.index) == ["variant-plain", "variant-guided_attention"]
    for cell, row in summary.iterrows():
        assert row["test_accuracy_low"] <= row["test_accuracy"] <= row["test_accuracy_high"], cell
        assert 0 <= row["test_in_lung_share_low"] <= row["test_in_lung_share"] <= row["test_in_lung_share_high"] <= 1
        assert 0 < row["test_lung_area"] < 1 and row["test_lung_images"] > 0
        road = pd.read_csv(tmp_path / "runs" / cell / row["test_run"] / "test_road.csv")  # a measure neither trains on
        assert row["test_road"] == pytest.approx(road["road"].mean()) and len(road) > 0
    guided = tmp_path / "runs" / "variant-guided_attention" / summary.loc["variant-guided_attention", "test_run"]
    assert len(pd.read_csv(guided / "test_lung_evidence.csv")) == summary.loc["variant-guided_attention", "test_lung_images"]
    report = (tmp_path / "report.md").read_text()
    assert "test in-lung share" in report and "test_side.png" in report and "guided attention" in report
    assert "test ROAD" in report and "Lung masks per side, class and origin" in report  # every phantom: "given"
    # the guided variant's in-lung share is what its loss trained: marked, never read as a check
    assert summary.loc["variant-guided_attention", "test_lung_circular"] and not summary.loc["variant-plain", "test_lung_circular"]
    assert report.count("trained on it: circular") == 1
    # the shortcut checks run on a lung-attention model too (its masks ride along as an input channel)
    loaded = Predictor(guided)
    assert loaded.model.lung_attention
    split = pd.read_csv(tmp_path / "splits.csv")
    split["image"] = [str((tmp_path / p).resolve()) for p in split["image"]]
    split["mask"] = [str((tmp_path / p).resolve()) for p in split["mask"]]
    (tmp_path / "audit").mkdir()
    lungs = lung_audit(tmp_path / "audit", split, loaded)
    assert set(lungs["masked_inputs"]["variants"]) == {"full image", "lungs only", "lungs removed"}
    linked = split.assign(mask=split["mask"].where(split["label"] == "COVID-19", ""))  # masks on one class only
    refused = lung_audit(tmp_path / "audit", linked, loaded)
    assert "needs a lung mask on every image or on none" in refused["skipped"] and refused["warnings"]
    probe = source_probe_audit(config, tmp_path / "audit", split, loaded)
    assert "fine-tuned (best model)" in probe["probes"]


def test_a_run_recorded_before_a_setting_existed_is_reused(tmp_path):
    from cxrlab.study.plan import run_config
    from cxrlab.train.reuse import check_same_config

    config = StudyConfig(data="x.csv", grid={"fine_tune": [2]})
    cell = cells(config)[0]
    train = run_config(config, cell, tmp_path, tmp_path / "shared", {})
    recorded = train.flat()  # written flat, as an older cxrlab did
    recorded.pop("attention_loss")  # and without this field
    recorded["a_setting_since_removed"] = 1  # nor does a name no version knows any more stop the reuse
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    check_same_config(tmp_path, train)
    recorded["fine_tune"] = 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    with pytest.raises(ConfigError, match="fine_tune"):
        check_same_config(tmp_path, train)


def test_a_run_of_the_earlier_default_recipe_is_named_when_refused(tmp_path):
    from cxrlab.study.plan import run_config
    from cxrlab.train.reuse import check_same_config

    papers = StudyConfig(data="x.csv", grid={"size": [64]}, base={"recipe": "papers"})
    recorded = run_config(papers, cells(papers)[0], tmp_path, tmp_path / "shared", {}).flat()
    recorded.pop("recipe")  # written before recipes existed, with the earlier defaults
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    now = StudyConfig(data="x.csv", grid={"size": [64]})
    with pytest.raises(ConfigError, match="add recipe: papers to keep it"):
        check_same_config(tmp_path, run_config(now, cells(now)[0], tmp_path, tmp_path / "shared", {}))
    check_same_config(tmp_path, run_config(papers, cells(papers)[0], tmp_path, tmp_path / "shared", {}))  # reused


def test_a_single_class_source_is_compared_with_that_class_s_recall(tmp_path, monkeypatch):
    import cxrlab.study.shortcuts as shortcuts
    from cxrlab.study.plan import Cell

    names = ["COVID-19", "Pneumonia", "Normal"]
    test = pd.DataFrame({"image": [f"i{i}" for i in range(10)], "label": "COVID-19", "split": "test",
                         "patient_id": [f"p{i}" for i in range(10)], "source": "covid-only"})
    calls = np.zeros((10, 3))
    calls[:6, 0], calls[6:, 1] = 1.0, 1.0  # 6 of 10 COVID-19 images called COVID-19
    monkeypatch.setattr(shortcuts, "predict_test_side", lambda run_dir, frame, work: pd.DataFrame(
        {"image": frame["image"], "label": frame["label"], **{n: calls[:, i] for i, n in enumerate(names)}}))
    run_dir = tmp_path / "loso" / "cell" / "without-covid-only"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "ok"}))
    result = shortcuts.held_out_results(tmp_path, Cell("cell", {}, {}), {"covid-only": test},
                                        {"side": "test", "accuracy": 0.62, "recall": {"COVID-19": 0.95}},
                                        lambda *a: (None, "not trained"))
    entry = result["sources"]["covid-only"]
    assert entry["accuracy"] == pytest.approx(0.6) and entry["reference"] == 0.95
    assert entry["reference_kind"] == "COVID-19 recall (test)"
    # against overall accuracy (0.62) this would look fine; against the class's own recall it falls by 0.35
    assert any("its COVID-19 recall falls to 0.60 from 0.95" in w for w in result["warnings"])


def test_the_shortcut_audit_flags_a_burned_in_marker_that_travels_with_the_class(tmp_path):
    """End to end: phantoms whose second source carries a plain burned-in marker and mostly COVID-19
    (as public COVID-19 collections do); the study's audit must say the features tell the source and
    that classes are spread unevenly over the sources. The pretrained features need no training, so
    the finding does not hang on how well a tiny model trained (balanced accuracy 0.97-1.0 over three
    phantom seeds with the marker at 4x, against chance 0.5 for two sources; 0.67-0.86 at 1x)."""
    from cxrlab.data import generate_phantoms, load_source, write_table

    table = load_source(generate_phantoms(tmp_path / "phantoms", n_patients=36, size=64, seed=1, marker=4)).table
    confounded = (table["label"] == "COVID-19") == (table["source"] == "phantom-b")
    mixed = table["patient_id"].str[-1].isin(["0", "5"])  # a few patients against the grain: classes in both sources
    manifest = write_table(table[confounded | mixed], tmp_path / "confounded.csv")
    config = StudyConfig(name="audit", data=str(manifest), folds=2, n_boot=20, grid={"fine_tune": [0]},
                         base={"size": 64, "epochs": 1, "batch_size": 8})
    result = run_study(config, tmp_path / "study")
    audit = json.loads((tmp_path / "study" / "shortcut_audit.json").read_text())
    pretrained = audit["source_probe"]["probes"]["pretrained (before fine-tuning)"]
    assert pretrained["all"]["above_chance"] and pretrained["all"]["low"] > pretrained["all"]["chance"] == 0.5
    assert pretrained["association"] >= 0.3
    flagged = [w for w in result.warnings if "pretrained (before fine-tuning) features tell an image's source" in w]
    assert len(flagged) == 1 and "spread unevenly over the sources" in flagged[0]
    assert "tell an image's source" in (tmp_path / "study" / "report.md").read_text()
