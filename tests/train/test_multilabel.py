"""Multi-label findings end to end (a ChestX-ray14-shaped phantom set), and transfer from a trained run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.models import create_classifier, load_model
from cxrlab.train import build_config
from cxrlab.evaluate.metrics import compute_multilabel_metrics
from cxrlab.train.module import ClassifierModule

FINDINGS = "findings:Consolidation,Infiltration,Pneumonia"


@pytest.fixture(scope="module")
def multilabel_run(nih_phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("ml")
    result = CliRunner().invoke(app, [
        "train", "--data", str(nih_phantoms), "--size", "64", "--epochs", "2", "--fine-tune", "1", "--batch-size", "8",
        "--ratios", "6:2:2", "--out", str(out / "run"), "--set", f"scheme={FINDINGS}",
        "--set", f"mlflow_uri=sqlite:///{out / 'mlflow.db'}"])
    assert result.exit_code == 0, result.output
    return out / "run"


def test_masked_bce_leaves_unknown_findings_out_of_the_loss():
    model = create_classifier("efficientnet_lite0", 3, pretrained="none", multilabel=True)
    config = build_config({"data": "x", "scheme": FINDINGS})
    module = ClassifierModule(model, config.optim, config.schedule, 1e-3, 1, [2.0, 1.0, 0.5])
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.7]])
    y = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, float("nan")]])
    known = ~torch.isnan(y)
    each = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y), pos_weight=torch.tensor([2.0, 1.0, 0.5]),
                                              reduction="none")
    assert torch.isclose(module.loss(logits, y), each[known].mean())
    changed = y.clone()
    changed[0, 1] = 1.0  # a value where the label was unknown: the loss now counts it
    assert not torch.isclose(module.loss(logits, changed), module.loss(logits, y))


def test_per_finding_metrics_leave_unknown_images_out():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (40, 2)).astype(float)
    probs = np.clip(y * 0.6 + rng.uniform(0, 0.5, y.shape), 0, 1)
    y[:5, 1] = np.nan
    metrics = compute_multilabel_metrics(y, probs, ["A", "B"])
    assert metrics["per_class"]["B"]["known"] == 35
    assert metrics["per_class"]["B"]["roc_auc"] == pytest.approx(roc_auc_score(y[5:, 1], probs[5:, 1]))
    assert metrics["macro"]["roc_auc"] == pytest.approx(np.mean([roc_auc_score(y[:, 0], probs[:, 0]),
                                                                  roc_auc_score(y[5:, 1], probs[5:, 1])]))


def test_a_multilabel_run_trains_evaluates_and_explains_each_finding(multilabel_run, nih_phantoms, tmp_path):
    summary = json.loads((multilabel_run / "summary.json").read_text())
    assert summary["class_names"] == ["Consolidation", "Infiltration", "Pneumonia"]
    model, _, payload = load_model(multilabel_run)
    assert model.multilabel and set(payload["extra"]["screening"]["operating_point"]["per_finding"]) == set(
        summary["class_names"])
    result = CliRunner().invoke(app, ["evaluate", str(multilabel_run), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "multilabel"
    for finding in summary["class_names"]:  # a patient-bootstrap interval per finding
        ci = metrics["ci"]["per_class"][finding]["roc_auc"]
        assert ci["n_boot"] > 0 and 0 <= ci["low"] <= ci["high"] <= 1
    assert metrics["metrics"]["macro"]["roc_auc"] is not None and metrics["ci"]["mean_roc_auc"]["n_boot"] > 0
    assert "Per finding" in (tmp_path / "eval" / "report.md").read_text()
    images = sorted(str(p) for p in (nih_phantoms / "images_001" / "images").glob("*.png"))[:2]
    explained = CliRunner().invoke(app, ["explain", str(multilabel_run), *images, "--out", str(tmp_path / "x")])
    assert explained.exit_code == 0, explained.output
    predicted = CliRunner().invoke(app, ["predict", str(multilabel_run), *images, "--out", str(tmp_path / "p")])
    assert predicted.exit_code == 0, predicted.output
    table = pd.read_csv(tmp_path / "p" / "predictions.csv", keep_default_na=False)
    probs = table[summary["class_names"]].to_numpy()
    assert ((probs > 0) & (probs < 1)).all() and not np.allclose(probs.sum(axis=1), 1)  # independent findings
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    for record in records:  # a map per called finding (the likeliest when none is called)
        called = [f for f in record["predicted"].split("|") if f != "No Finding"]
        assert record["explained_findings"] == (called[:3] or [max(record["probabilities"],
                                                                   key=record["probabilities"].get)])


def test_init_from_a_multilabel_run_fine_tunes_a_three_class_model_on_its_backbone(multilabel_run, phantoms, tmp_path):
    result = CliRunner().invoke(app, [
        "train", "--data", str(phantoms), "--init-from", str(multilabel_run), "--fine-tune", "2", "--size", "64",
        "--ratios", "6:2:2",
        "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "covid"),
        "--set", f"mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 0, result.output
    source, _, _ = load_model(multilabel_run)
    tuned, _, _ = load_model(tmp_path / "covid")
    assert tuned.class_names == ("COVID-19", "Pneumonia", "Normal") and not tuned.multilabel
    frozen = tuned.frozen_blocks
    assert frozen > 0
    for name in tuned.group_names[0]:  # the first block stayed frozen: it is the multi-label run's, not ImageNet's
        a, b = dict(tuned.backbone.named_modules())[name], dict(source.backbone.named_modules())[name]
        for p, q in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(p, q)
    imagenet = create_classifier("efficientnet_lite0", 3)
    assert not all(torch.equal(p, q) for p, q in zip(imagenet.backbone.state_dict().values(),
                                                     tuned.backbone.state_dict().values()))
    summary = json.loads((tmp_path / "covid" / "summary.json").read_text())
    assert summary["weights"].startswith("cxrlab model")
