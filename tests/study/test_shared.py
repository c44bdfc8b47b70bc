"""A study shared by two workers through a real PostgreSQL server (Debian's, started by the test), each
with a study folder of its own and the runs shared through an S3 server (moto's), as on machines
with no shared file system: every run is trained once, a worker killed mid-run leaves its run to
the other, the table is the one a single worker makes, and one MLflow parent run holds the study."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL server on loopback with database ``cxrlab``; its URL."""
    binaries = _binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server is not installed (make test installs Debian's postgresql when run as root)")
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    home = Path(tempfile.mkdtemp(prefix="cxrlab-pg-"))  # outside pytest's root-only folders: the server's user reads it
    data = home / "data"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: as the postgres system user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(home, 0o755)
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "cxrlab"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                    f"-p {port} -k {data} -h 127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "cxrlab", "cxrlab"],
                       check=True, capture_output=True)
        yield f"postgresql://cxrlab@127.0.0.1:{port}/cxrlab"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _config(phantoms, folder: Path) -> Path:
    config = {"name": "shared", "data": str(phantoms), "ratios": [0.6, 0.2, 0.2], "folds": 2, "seed": 0,
              "base": {"size": 48, "epochs": 2, "batch_size": 8, "recipe": "papers"},
              "grid": {"fine_tune": [0, 1, 2]}, "shortcut_checks": False, "n_boot": 20, "heartbeat": 2}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _worker(config: Path, out: Path, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "cxrlab.cli", "study", str(config), "--out", str(out), *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_workers_share_a_study_and_a_killed_one_leaves_its_run_to_the_other(postgres, s3, phantoms, tmp_path):
    import optuna
    from mlflow import MlflowClient

    config = _config(phantoms, tmp_path)
    alone = _worker(config, tmp_path / "alone")  # the reference: one worker, no database
    assert alone.wait(600) == 0, alone.stdout.read()[-3000:]
    tracking = f"sqlite:///{tmp_path / 'tracking.db'}"  # stands in for a tracking server both workers reach
    MlflowClient(tracking_uri=tracking).search_experiments()  # its tables made before two workers race to
    options = ("--storage", postgres, "--share", "s3://cxr/studies/shared", "--set", f"mlflow_uri={tracking}")
    first, second = _worker(config, tmp_path / "one", *options), _worker(config, tmp_path / "two", *options)
    victim = f"{socket.gethostname()}:{first.pid}"
    deadline, killed = time.monotonic() + 300, False
    while time.monotonic() < deadline and first.poll() is None and not killed:
        for summary in optuna.get_all_study_summaries(postgres):
            if "stage" not in summary.study_name:
                continue
            study = optuna.load_study(study_name=summary.study_name, storage=postgres)
            running = [t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                       if t.user_attrs.get("worker") == victim]
            if running:  # the first worker is in the middle of a run: kill it there
                first.kill()
                killed = True
                break
        time.sleep(0.2)
    first.wait()
    assert killed, f"the first worker never held a run: {first.stdout.read()[-3000:]}"
    assert second.wait(600) == 0, second.stdout.read()[-3000:]
    results = pd.read_csv(tmp_path / "two" / "results.csv")
    reference = pd.read_csv(tmp_path / "alone" / "results.csv")
    assert len(results) == 6 and (results["status"] == "ok").all()
    columns = ["cell", "fold", "accuracy", "auc_macro"]
    pd.testing.assert_frame_equal(results[columns], reference[columns])  # the table one worker makes
    stage = next(s.study_name for s in optuna.get_all_study_summaries(postgres) if "stage" in s.study_name)
    trials = optuna.load_study(study_name=stage, storage=postgres).get_trials()
    complete = [t.params["run"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(complete) == sorted(set(complete)) and len(complete) == 6  # each run trained once
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.user_attrs.get("worker") == victim for t in failed)  # the killed run, retried
    assert (tmp_path / "two" / "report.md").exists() and (tmp_path / "two" / "best-model" / "model.pt").exists()
    for run in complete:  # every run on the share, whole (its summary last), and the report beside them
        assert s3.exists(f"cxr/studies/shared/runs/{run}/summary.json") and s3.exists(f"cxr/studies/shared/runs/{run}/model.pt")
    assert s3.exists("cxr/studies/shared/results.csv") and s3.exists("cxr/studies/shared/report.md")
    assert s3.exists("cxr/studies/shared/best-model/model.pt")
    late = _worker(config, tmp_path / "three", *options)  # a worker joining when all is done, in another folder
    assert late.wait(600) == 0
    printed = late.stdout.read()
    assert "0 run(s) trained, 6 reused" in printed, printed[-3000:]  # every run taken from the share
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "three" / "results.csv")[columns], results[columns])
    assert (tmp_path / "three" / "best-model" / "model.pt").exists()  # the report another worker wrote
    assert not s3.glob("cxr/studies/shared/shared/**") and not s3.glob("cxr/studies/shared/**/last.ckpt")
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("cxrlab-studies")
    parents = client.search_runs([experiment.experiment_id], "tags.`cxrlab.study` = 'shared' and attributes.run_name = 'shared'")
    assert len(parents) == 1  # one parent run for the study, made by whichever worker claimed it
    every = [e.experiment_id for e in client.search_experiments()]
    children = client.search_runs(every, f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert len(children) >= 6


def test_a_worker_that_found_some_runs_done_offers_the_database_the_same_list(tmp_path):
    """A worker that starts late may find runs already done (on the share): it enqueues only the rest, but
    offers the database the stage's whole list of runs, or the database refuses its trials ("dynamic value
    space") and the worker crashes before training anything."""
    from cxrlab.study.queue import SharedRuns

    storage = f"sqlite:///{tmp_path / 'queue.db'}"
    every = ["cell/fold0", "cell/fold1", "cell/fold2"]
    first = SharedRuns(storage, "stage", heartbeat=2)
    first.enqueue(every[:1], choices=every)
    assert first.work(lambda run: None) == 1  # fold0, done before the late worker looks
    late = SharedRuns(storage, "stage", heartbeat=2)
    late.enqueue(every[1:], choices=every)
    trained: list[str] = []
    assert late.work(lambda run: trained.append(run)) == 2 and trained == every[1:]
    assert first.finished() == set(every)
