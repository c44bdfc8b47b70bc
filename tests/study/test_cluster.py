"""What a cluster needs and no CPU test can run: the launch scripts in examples/ (parsed, and their
numbers consistent), one GPU per study worker, who writes under SLURM, and the GPU check's refusal
to claim anything without a GPU."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer

from cxrlab.cli import app
from cxrlab.study.jobs import worker_gpu
from cxrlab.train import build_config, load_config
from cxrlab.train.distributed import is_rank_zero

ROOT = Path(__file__).resolve().parents[2]


def _command(script: Path, program: str) -> list[str]:
    """The arguments after ``program`` in a script (its continued lines joined)."""
    text = re.sub(r"\\\n\s*", " ", script.read_text())
    line = next(line for line in text.splitlines() if program in line and not line.lstrip().startswith("#"))
    words = shlex.split(line)
    return words[next(i for i, w in enumerate(words) if w.endswith(program)) + 1:]


def _sbatch(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script.read_text(), re.M))


def _parsed(args: list[str]) -> dict:
    """Parse a cxrlab command line as the CLI would (no run): its options by name."""
    command = typer.main.get_command(app)
    name, *rest = args
    sub = command.get_command(None, name)
    with sub.make_context(name, [a.replace("$NODE_RANK", "0").replace("$MASTER_ADDR", "h") for a in rest]) as ctx:
        return ctx.params


@pytest.mark.parametrize("script", ["slurm_train.sbatch", "torchrun_train.sh"])
def test_the_launch_scripts_parse_and_agree_with_what_they_ask_the_cluster_for(script):
    path = ROOT / "examples" / script
    if script.endswith(".sbatch"):
        params, cluster = _parsed(_command(path, "cxrlab")), _sbatch(path)
        per_node, nodes = int(cluster["ntasks-per-node"]), int(cluster["nodes"])
        assert int(cluster["gpus-per-node"]) == per_node  # one task per GPU
    else:
        launcher = _command(path, "torchrun")
        per_node = int(launcher[launcher.index("--nproc-per-node") + 1])
        nodes = int(launcher[launcher.index("--nnodes") + 1])
        module = launcher.index("-m")
        assert launcher[module + 1] == "cxrlab.cli"
        params = _parsed(launcher[module + 2:])
    assert (params["devices"], params["num_nodes"], params["strategy"]) == (per_node, nodes, "ddp")
    config = load_config(ROOT / params["config"], {"data": "x", **{k: params[k] for k in ("devices", "num_nodes", "strategy")}},
                         params["assignments"])
    assert config.runtime.device == "cuda" and config.runtime.precision == "auto"
    assert (ROOT / params["config"]).is_file()


def test_the_study_script_starts_one_worker_per_gpu_through_the_database():
    path = ROOT / "examples" / "slurm_study.sbatch"
    cluster, params = _sbatch(path), _parsed(_command(path, "cxrlab"))
    assert cluster["gpus-per-task"] == "1" and params["storage"].startswith("postgresql://")
    assert (ROOT / params["config"]).is_file()


def test_each_study_worker_takes_a_gpu_of_its_own():
    assert [worker_gpu(slot, 4, None) for slot in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert [worker_gpu(slot, 2, "5,7") for slot in range(3)] == ["5", "7", "5"]  # within what the parent may use
    assert worker_gpu(0, 0, None) is None  # no GPU: nothing set


def test_study_workers_started_as_srun_tasks_write_their_runs(monkeypatch):
    """``SLURM_PROCID`` 2 is the third worker of a study, not a silent rank of someone's run; in a
    data-parallel run it is a rank that writes nothing."""
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert is_rank_zero(build_config({"data": "x"}))
    assert not is_rank_zero(build_config({"data": "x", "devices": 2}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check runs for real there")
def test_the_gpu_check_claims_nothing_without_a_gpu(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "not checked" in result.stdout, result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_trained_on_a_gpu_is_read_with_the_commands_policy_where_there_is_none(tmp_path, caplog):
    """A shared study's runs trained on GPU workers; its report read on a laptop must not fail."""
    import yaml

    from cxrlab.train.runner import run_policy

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"runtime": {"device": "cuda:3", "precision": "bf16"},
                                                          "model": {"backbone": "efficientnet_lite0"}}))
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has the GPU the run names")
    policy = run_policy(tmp_path)
    assert policy.device == "cpu" and "this command's policy instead" in caplog.text
