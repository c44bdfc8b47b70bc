"""The Python entry points: the manual's example runs as written, and each function is the command's job."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

import cxrlab

PAGE = Path(__file__).parents[2] / "docs" / "guide" / "python.md"


def test_the_documented_example_runs_as_written(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 -- our own documentation
    run, report, screened = namespace["run"], namespace["report"], namespace["screened"]
    assert (tmp_path / "runs" / "notebook" / "run" / "model.pt").exists() and run.summary["status"] == "ok"
    written = json.loads((tmp_path / "runs" / "notebook" / "evaluation" / "metrics.json").read_text())
    assert report["metrics"]["accuracy"] == written["metrics"]["accuracy"] and report["side"].startswith("test side of")
    images = sorted((tmp_path / "runs" / "notebook" / "phantoms" / "images").glob("*.png"))
    assert isinstance(screened, pd.DataFrame) and sorted(Path(p).name for p in screened["image"]) == [p.name for p in images]
    written = pd.read_csv(tmp_path / "runs" / "notebook" / "predictions" / "predictions.csv")
    assert list(written["predicted"]) == list(screened["predicted"])


def test_import_cxrlab_stays_light_and_names_unknown_attributes():
    code = "import sys, cxrlab; print(any(m.startswith('cxrlab.train') or m == 'torch' for m in sys.modules))"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    assert callable(cxrlab.train_model) and callable(cxrlab.run_study)
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        cxrlab.trian  # noqa: B018
