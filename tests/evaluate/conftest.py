"""Shared fixture: a tiny run trained on phantoms (96 px, 2 epochs)."""

from __future__ import annotations

import pytest

from cxrlab.train import build_config, train


@pytest.fixture(scope="session")
def run_dir(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = build_config({"data": str(phantoms), "out": str(out / "r"), "size": 96, "epochs": 2, "batch_size": 8,
                           "ratios": (0.6, 0.2, 0.2), "mlflow_uri": f"sqlite:///{out / 'mlflow.db'}"})
    return train(config).out


