"""A training run killed mid-epoch (kill -9) and started again with the same command resumes from its
last finished epoch and ends with the weights of a run never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import torch

from cxrlab.models import load_model


def _command(phantoms, out, mlflow) -> list[str]:
    return [sys.executable, "-m", "cxrlab.cli", "train", "--data", str(phantoms), "--size", "64", "--epochs", "8",
            "--fine-tune", "2", "--batch-size", "4", "--ratios", "6:2:2", "--out", str(out),
            "--set", "augment.enabled=true", "--set", "patience=8", "--set", f"mlflow_uri=sqlite:///{mlflow}"]


def test_a_run_killed_mid_epoch_resumes_and_ends_with_the_same_weights(phantoms, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(_command(phantoms, tmp_path / "whole", tmp_path / "a.db"), env=env, capture_output=True,
                           text=True)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = subprocess.Popen(_command(phantoms, tmp_path / "killed", tmp_path / "b.db"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:  # two epochs done, a third under way
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()  # stopped before its end
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").exists()
    again = subprocess.run(_command(phantoms, tmp_path / "killed", tmp_path / "b.db"), env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr and "epoch" in again.stderr
    assert not (tmp_path / "killed" / "checkpoints").exists()  # finished: nothing left to resume
    a, _, _ = load_model(tmp_path / "whole")
    b, _, _ = load_model(tmp_path / "killed")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    rows = [pd.read_csv(tmp_path / run / "metrics.csv").drop(columns="seconds") for run in ("whole", "killed")]
    pd.testing.assert_frame_equal(rows[0], rows[1])
