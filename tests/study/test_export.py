"""Exporting a run as best-model: the screening reference is added on the way, and its absence never stops the export."""

from __future__ import annotations

import logging
import shutil

import torch

from cxrlab.study.export import export_run


def _without_reference(run_dir, folder):
    shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("prepared*"))
    payload = torch.load(folder / "model.pt", weights_only=True)
    del payload["extra"]["screening"]
    torch.save(payload, folder / "model.pt")


def test_export_adds_the_reference_or_warns_and_exports_without_it(run_dir, tmp_path, caplog):
    source = tmp_path / "run"
    _without_reference(run_dir, source)  # without its prepared shards: they are made again from the split
    export_run(source, tmp_path / "best-model", {"cell": "c"})
    assert torch.load(tmp_path / "best-model" / "model.pt", weights_only=True)["extra"]["screening"]["ood"]

    broken = tmp_path / "broken"
    _without_reference(run_dir, broken)
    (broken / "config.yaml").unlink()
    with caplog.at_level(logging.WARNING, logger="cxrlab.study.export"):
        export_run(broken, tmp_path / "exported", {"cell": "c"})
    assert "exported without a screening reference" in caplog.text and "config.yaml" in caplog.text
    payload = torch.load(tmp_path / "exported" / "model.pt", weights_only=True)
    assert "screening" not in payload["extra"] and (tmp_path / "exported" / "origin.json").exists()
