"""A core install (no extras): train, evaluate and predict work without MLflow, Spark, FastAPI or ONNX;
the commands that need one of them name the extra that installs it, in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cxrlab.core.optional import EXTRAS

BLOCK = "import sys\nfor name in {names!r}: sys.modules[name] = None  # as if not installed\n"


def _cxrlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = BLOCK.format(names=sorted(EXTRAS)) + f"sys.argv = ['cxrlab', *{list(args)!r}]\nfrom cxrlab.cli import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=600, check=False)


def test_a_core_install_trains_evaluates_and_predicts_and_names_missing_extras(phantoms, tmp_path):
    run = tmp_path / "run"
    trained = _cxrlab("train", "--data", str(phantoms), "--size", "32", "--epochs", "1", "--ratios", "6:2:2",
                      "--out", str(run), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (run / "model.pt").exists() and not list(tmp_path.glob("mlflow.db"))  # nothing tracked, nothing lost
    evaluated = _cxrlab("evaluate", str(run), "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    images = sorted((phantoms.parent / "images").glob("*.png"))[:3]
    predicted = _cxrlab("predict", str(run), *map(str, images), "--out", str(tmp_path / "screen"), cwd=tmp_path)
    assert predicted.returncode == 0 and (tmp_path / "screen" / "predictions.csv").exists(), predicted.stderr[-2000:]
    commands = {"serve": (("serve", str(run)), "serve"), "export": (("export", str(run), "--onnx", str(tmp_path / "m.onnx")), "serve"),
                "prepare": (("prepare", "--data", str(phantoms), "--out", str(tmp_path / "p"), "--engine", "spark"), "spark")}
    refused = _refusals([args for args, _ in commands.values()], cwd=tmp_path)  # one interpreter for the three
    for (name, (_, extra)), (code, stderr) in zip(commands.items(), refused, strict=True):
        message = [line for line in stderr.splitlines() if "pip install" in line]
        assert code == 1 and len(message) == 1 and f"cxrlab[{extra}]" in message[0], f"{name}: {stderr[-2000:]}"


def _refusals(commands: list[tuple[str, ...]], cwd: Path) -> list[tuple[int, str]]:
    """Each command's exit code and what it printed to stderr, run one after another in one
    interpreter with the extras blocked (starting one per command costs seconds each)."""
    code = BLOCK.format(names=sorted(EXTRAS)) + f"""
import contextlib, io, json
from cxrlab.cli import main
results = []
for args in {[list(c) for c in commands]!r}:
    sys.argv, err = ['cxrlab', *args], io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main()
            status = 0
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
    results.append([status, err.getvalue()])
print(json.dumps(results))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    return [tuple(r) for r in json.loads(done.stdout.strip().splitlines()[-1])]


@pytest.mark.parametrize("module", ["json", "definitely_not_installed_cxrlab_module"])
def test_require_imports_or_names_the_extra(module):
    from cxrlab.core.errors import MissingDependencyError
    from cxrlab.core.optional import require

    if module == "json":
        assert require(module, "a test").dumps([1]) == "[1]"
    else:
        with pytest.raises(MissingDependencyError, match=r"a test needs the definitely_not_installed_cxrlab_module package"):
            require(module, "a test")
