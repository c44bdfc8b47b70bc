"""Nothing that shapes a model or its report reads the test side's labels: permuting them changes no
weight, kept epoch, screening threshold, operating point or temperature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cxrlab.evaluate.runner import evaluate_run
from cxrlab.models import load_model
from cxrlab.train import build_config, train


def _same(a, b) -> bool:
    """Deep equality of plain data holding tensors."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def test_permuting_test_labels_changes_no_choice(phantoms, tmp_path):
    frame = pd.read_csv(phantoms).assign(image=lambda f: [str(phantoms.parent / p) for p in f["image"]],
                                         mask="", lesion="")
    patients = sorted(frame["patient_id"].unique())
    side = {p: ("test" if i % 5 == 0 else "val" if i % 5 == 1 else "train") for i, p in enumerate(patients)}
    frame["split"] = frame["patient_id"].map(side)
    frame.to_csv(tmp_path / "split.csv", index=False)
    permuted = frame.copy()
    test = permuted["split"] == "test"
    permuted.loc[test, "label"] = np.random.default_rng(0).permutation(permuted.loc[test, "label"].to_numpy())
    assert (permuted.loc[test, "label"] != frame.loc[test, "label"]).any()
    permuted.to_csv(tmp_path / "permuted.csv", index=False)
    results = []
    for name in ("split", "permuted"):
        config = build_config({"splits": str(tmp_path / f"{name}.csv"), "out": str(tmp_path / f"run-{name}"), "size": 32,
                               "epochs": 2, "lr": 1e-3, "batch_size": 8, "min_epochs": 1, "progress_bar": False,
                               "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
        run = train(config)
        model, _, payload = load_model(run.out / "model.pt")
        evaluation = evaluate_run(run.out, tmp_path / f"eval-{name}", n_boot=10)
        results.append((run.summary, model.state_dict(), payload["extra"]["screening"], evaluation))
    (summary_a, weights_a, screening_a, eval_a), (summary_b, weights_b, screening_b, eval_b) = results
    assert summary_a["best_epoch"] == summary_b["best_epoch"] and summary_a["val"] == summary_b["val"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)  # same machine, same seed: bit for bit
    assert _same(screening_a, screening_b)  # OOD and polarity references and thresholds, the operating point
    assert eval_a["calibration"]["temperature"] == eval_b["calibration"]["temperature"]
    assert [p["threshold"] for p in eval_a["binary"]["operating_points"]] == \
        [p["threshold"] for p in eval_b["binary"]["operating_points"]]
    labels = [pd.read_csv(tmp_path / f"eval-{name}" / "predictions.csv").set_index("image")["label"]
              for name in ("split", "permuted")]
    assert (labels[0] != labels[1].loc[labels[0].index]).any()  # while the scored labels did differ
