"""One metric vocabulary: each headline figure has one name, direction and definition, used by training
logs, epoch selection, summaries, out-of-fold tables, tuning and reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlab.core.errors import ConfigError
from cxrlab.evaluate.metrics import compute_metrics, interval_metrics
from cxrlab.evaluate.registry import HEADLINE, current_log_keys, get_metric, headline, list_metrics, log_key

NAMES = ["COVID-19", "Pneumonia", "Normal"]


def test_each_metric_has_one_name_direction_and_log_key():
    assert list_metrics() == ["loss", "accuracy", "auc_macro", "auc_covid", "f1_macro"]
    assert [get_metric(n).direction for n in list_metrics()] == ["minimize"] + ["maximize"] * 4
    assert [log_key(n) for n in HEADLINE] == ["val_accuracy", "val_auc_macro", "val_auc_covid", "val_f1_macro"]
    with pytest.raises(ConfigError, match="choose one of loss, accuracy, auc_macro"):
        get_metric("macro_roc_auc")  # an earlier spelling is not a second name


def test_the_headline_figures_are_the_metric_tables_own():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 80)
    probs = rng.dirichlet(np.ones(3), 80) * 0.5 + np.eye(3)[y] * 0.5
    probs[:5] = np.eye(3)[(y[:5] + 1) % 3]  # some wrong calls
    table = compute_metrics(y, probs, NAMES)
    values = headline(y, probs, NAMES)
    assert values["accuracy"] == pytest.approx(table["accuracy"])
    assert values["auc_macro"] == pytest.approx(table["macro"]["roc_auc"])
    assert values["auc_covid"] == pytest.approx(table["per_class"]["COVID-19"]["roc_auc"])
    assert values["f1_macro"] == pytest.approx(table["macro"]["f1"])
    lean = interval_metrics(y, probs, NAMES)
    assert (lean["auc_macro"], lean["f1_macro"]) == pytest.approx((values["auc_macro"], values["f1_macro"]))
    assert headline(y, probs[:, [1, 2, 0]], ["Pneumonia", "Normal", "B"])["auc_covid"] is None  # no COVID-19 class


def test_selection_and_tuning_choose_among_the_registry():
    from cxrlab.study.tune_config import TuneConfig
    from cxrlab.train.selection import SELECT_METRICS

    assert list(SELECT_METRICS) == [*list_metrics(), "last"]
    assert SELECT_METRICS["auc_macro"] == "val_auc_macro"
    search = TuneConfig(data="x", metric="val_loss")  # an earlier search's name for the loss
    assert (search.metric, search.direction, search.monitored) == ("loss", "minimize", "val_loss")
    assert TuneConfig(data="x", metric="auc_covid").monitored == "val_auc_covid"


def test_a_training_log_of_an_earlier_version_reads_with_todays_keys(tmp_path):
    from cxrlab.evaluate.plots import plot_curves

    old = pd.DataFrame({"epoch": [0, 1], "phase": [0, 0], "train_loss": [1.0, 0.8], "val_loss": [1.1, 0.9], "val_acc": [0.5, 0.6],
                        "val_auc": [0.6, 0.7], "val_f1": [0.4, 0.5]})
    assert list(current_log_keys(old).columns)[4:] == ["val_accuracy", "val_auc_macro", "val_f1_macro"]
    old.to_csv(tmp_path / "metrics.csv", index=False)
    assert plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png").exists()
