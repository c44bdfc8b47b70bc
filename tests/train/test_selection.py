"""The epoch a run keeps and when it stops: a chosen validation metric, smoothed, after a minimum."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cxrlab.train.selection import EpochSelector as _Selector


def EpochSelector(metric: str, smoothing: int = 1, min_epochs: int = 1, patience: int = 5) -> _Selector:  # noqa: N802
    """The rule's unit cases, one setting at a time (a run's selector comes from its config's select section)."""
    return _Selector(metric, smoothing, min_epochs, patience)


def _run(selector: EpochSelector, losses, aucs) -> list[int]:
    """Feed epochs in order; return the epochs at which the run would stop."""
    stops = []
    for epoch, (loss, auc) in enumerate(zip(losses, aucs, strict=True)):
        selector.update(epoch, {"val_loss": loss, "val_auc_macro": auc})
        if selector.should_stop(epoch):
            stops.append(epoch)
    return stops


def test_loss_keeps_the_first_epoch_where_auc_keeps_the_better_model():
    losses = [1.0, 1.2, 1.5, 1.9, 2.4, 3.0, 3.6]  # what cxr-real showed: loss lowest after epoch 0 ...
    aucs = [0.70, 0.76, 0.80, 0.83, 0.82, 0.81, 0.80]  # ... while the AUC kept rising
    by_loss = EpochSelector("loss", patience=5)
    assert _run(by_loss, losses, aucs)[0] == 5 and by_loss.best_epoch == 0  # as Lightning's EarlyStopping
    by_auc = EpochSelector("auc_macro", patience=3)
    assert _run(by_auc, losses, aucs)[0] == 6 and by_auc.best_epoch == 3 and by_auc.best_loss == 1.9


def test_smoothing_min_epochs_ties_and_undefined_values():
    spike = EpochSelector("auc_macro", smoothing=2)
    _run(spike, [1.0] * 5, [0.60, 0.90, 0.60, 0.80, 0.82])  # one lucky epoch does not win a smoothed choice
    assert spike.best_epoch == 4 and math.isclose(spike.best_score, 0.81)
    gap = EpochSelector("auc_macro", smoothing=2)
    _run(gap, [1.0] * 4, [0.70, math.nan, 0.95, 0.71])  # a window with an undefined value scores nothing
    assert gap.best_epoch == 3 and math.isclose(gap.best_score, 0.83)
    late = EpochSelector("loss", min_epochs=3, patience=2)
    assert _run(late, [0.5, 0.6, 0.9, 1.0, 1.1], [0.5] * 5) == [4] and late.best_epoch == 2  # 0 and 1 not kept
    tie = EpochSelector("auc_macro")
    _run(tie, [1.0, 0.8, 0.9], [0.75, 0.75, 0.75])
    assert tie.best_epoch == 1  # equal AUC: the lower validation loss
    undefined = EpochSelector("auc_macro", patience=2)  # e.g. a validation side holding one class
    assert _run(undefined, [1.0, 0.9, 1.2], [math.nan] * 3) == [] and undefined.best_epoch == 1
    assert undefined.fallback and "validation loss" in undefined.to_dict()["fallback"]  # loss kept it, and says so
    assert undefined.update(3, {"val_loss": 2.0, "val_auc_macro": 0.6}) and not undefined.fallback  # defined: it wins
    phases = EpochSelector("loss", patience=2)
    _run(phases, [0.5, 0.9], [0.5, 0.5])
    phases.start_phase(2)  # a new phase: patience counts from its start, the kept epoch stays
    assert not phases.should_stop(2) and phases.update(3, {"val_loss": 0.4}) and phases.best_epoch == 3


def test_a_run_selects_on_auc_after_a_minimum_and_records_the_choice(phantoms, tmp_path):
    from cxrlab.train import build_config, train

    result = train(build_config({"data": str(phantoms), "out": str(tmp_path / "r"), "size": 64, "epochs": 3,
                                 "batch_size": 8, "ratios": (0.6, 0.2, 0.2), "select_on": "auc_macro",
                                 "select_smoothing": 1, "min_epochs": 2, "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    selection = json.loads((result.out / "summary.json").read_text())["selection"]
    assert selection["metric"] == "auc_macro" and selection["min_epochs"] == 2 and selection["epoch"] >= 1
    metrics = pd.read_csv(result.out / "metrics.csv")
    assert {"val_auc_covid", "val_f1_macro", "val_accuracy"} <= set(metrics.columns)  # one spelling: val_<metric>
    assert selection["score"] == pytest.approx(max(metrics["val_auc_macro"].iloc[1:]))  # the best from epoch 1 on
    assert result.summary["best_val_loss"] == pytest.approx(metrics.loc[selection["epoch"], "val_loss"])


def test_settings_that_could_keep_no_epoch_or_train_on_nothing_are_refused():
    from cxrlab.core import ConfigError
    from cxrlab.train import build_config

    with pytest.raises(ConfigError, match="min_epochs \\(5\\) is more than the run's 3"):
        build_config({"data": "x.csv", "epochs": 3, "min_epochs": 5})
    for folds in (1, 2):  # a fold predicts, the next chooses the epoch: nothing would be left to train on
        with pytest.raises(ConfigError, match="at least 3"):
            build_config({"data": "x.csv", "folds": folds})


def test_last_keeps_the_final_epoch_and_trains_without_a_validation_side(phantoms, tmp_path):
    """A refit on train+validation: no validation side, a fixed number of epochs, the last one kept."""
    from cxrlab.core import ConfigError
    from cxrlab.data import load_source
    from cxrlab.models import load_model
    from cxrlab.train import add_screening_reference, build_config, train

    selector = EpochSelector("last", patience=1)
    for epoch, loss in enumerate([1.0, 2.0, 3.0]):
        assert selector.update(epoch, {"val_loss": loss}) and not selector.should_stop(epoch)
    assert selector.best_epoch == 2
    table = load_source(phantoms).table
    split = tmp_path / "r" / "splits.csv"  # where a study puts a run's split
    split.parent.mkdir()
    test = table["patient_id"].astype("category").cat.codes % 5 == 0  # patients stay on one side
    table.assign(split=["test" if t else "train" for t in test]).to_csv(split, index=False)
    result = train(build_config({"splits": str(split), "out": str(tmp_path / "r"), "size": 32, "epochs": 2,
                                 "batch_size": 16, "select_on": "last", "fine_tune": 1,
                                 "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    assert result.summary["best_epoch"] == 1 and result.summary["epochs_run"] == 2 and result.summary["val"] == {}
    assert result.summary["images"]["val"] == 0 and result.summary["best_val_loss"] is None
    assert load_model(result.out / "model.pt")[2]["extra"]["epoch"] == 1
    with pytest.raises(ConfigError, match="no validation side"):
        add_screening_reference(result.out)
    with pytest.raises(ConfigError, match="the val side has no images"):  # other rules still need one
        train(build_config({"splits": str(split), "out": str(tmp_path / "s"), "size": 32, "epochs": 1,
                            "select_on": "loss", "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))


def test_the_auc_interval_matches_the_spread_of_auc_over_resampled_validation_sides():
    """Hanley & McNeil's standard error is an approximation: within 15% of the spread of AUC over
    2,000 simulated 26 + 26-image validation sides (binormal scores, true AUC 0.80)."""
    from scipy import stats
    from sklearn.metrics import roc_auc_score

    from cxrlab.evaluate.metrics import auc_interval

    rng = np.random.default_rng(0)
    shift = stats.norm.ppf(0.80) * math.sqrt(2)  # binormal, equal variances: AUC = Phi(shift / sqrt 2)
    aucs = [roc_auc_score(np.r_[np.ones(26), np.zeros(26)], np.r_[rng.normal(shift, 1, 26), rng.normal(0, 1, 26)])
            for _ in range(2000)]
    low, high = auc_interval(0.80, 26, 26)
    assert (high - low) / (2 * 1.96) == pytest.approx(np.std(aucs), rel=0.15)
    assert auc_interval(1.0, 5, 5) == (1.0, 1.0) and auc_interval(0.5, 500, 500)[1] - 0.5 < 0.04


def test_a_small_validation_side_is_named_in_the_summary():
    from cxrlab.evaluate.metrics import classification_summary
    from cxrlab.train.runner import _validation_side

    y = np.array([0] * 8 + [1] * 8 + [2] * 8)
    probs = np.eye(3)[y] * 0.5 + 0.5 / 3
    val = classification_summary(y, probs, ["COVID-19", "Pneumonia", "Normal"])
    side = _validation_side(val, 24)
    assert side["widest_auc_interval"] == 0.0 and "note" not in side  # perfect ranking: no doubt
    probs[:4] = probs[[8, 9, 10, 11]]  # four COVID-19 images now look like pneumonia
    side = _validation_side(classification_summary(y, probs, ["COVID-19", "Pneumonia", "Normal"]), 24)
    assert side["widest_auc_interval"] > 0.2 and "small validation side (24 images)" in side["note"]


def test_the_training_summary_and_the_evaluation_table_are_one_definition():
    """Epoch selection, summary.json and the evaluation report read the same metrics: a class that is
    neither present nor predicted leaves macro-F1 out of its average in both (it once counted as 0
    while training and was left out in the report)."""
    from cxrlab.evaluate.metrics import compute_metrics
    from cxrlab.evaluate.metrics import classification_summary

    names = ["COVID-19", "Pneumonia", "Normal"]
    y = np.array([0, 0, 2, 2, 0, 2])  # no pneumonia, never called pneumonia
    probs = np.array([[.7, .1, .2], [.4, .1, .5], [.2, .1, .7], [.1, .2, .7], [.8, .1, .1], [.6, .1, .3]])
    summary, table = classification_summary(y, probs, names), compute_metrics(y, probs, names)
    assert summary["f1_macro"] == table["macro"]["f1"] == pytest.approx(np.mean([2 * 2 / (2 * 2 + 1 + 1)] * 2))
    assert summary["auc_macro"] == table["macro"]["roc_auc"] and summary["per_class"]["Pneumonia"]["auc"] is None
    assert summary["confusion_matrix"] == table["confusion_matrix"]
