"""A study's share: finished runs and results copied to a folder or an S3 server (moto's, started by
the test) and back into another worker's study folder, whole or not at all."""

from __future__ import annotations

import logging
import os

import pandas as pd
import pytest

from cxrlab.core.errors import ConfigError
from cxrlab.study.share import Share, split_digest


@pytest.fixture(params=["folder", "s3"])
def share_url(request, tmp_path) -> str:
    if request.param == "folder":
        return str(tmp_path / "share")
    request.getfixturevalue("s3")
    return f"s3://cxr/share-{request.node.name.replace('[', '-').rstrip(']')}"


def _run(out, name="runs/k1/fold0", marker="summary.json"):
    run = out / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"c" * 100)
    (run / "model.pt").write_bytes(b"weights")
    (run / "history.csv").write_text("epoch,loss\n0,1.0\n")
    if marker:
        (run / marker).write_text('{"status": "ok"}\n')
    return run


def test_a_run_goes_to_the_share_and_back_into_another_workers_folder(share_url, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run = _run(one)
    (one / "shared").mkdir()
    (one / "shared" / "shard.arrow").write_bytes(b"s")
    (one / "study.lock").write_text("")
    first = Share(share_url, one)
    assert first.put(run) == 3  # model, history, summary: not the checkpoint
    assert first.put(run) == 0  # already there, same sizes
    (run / "history.csv").write_text("epoch,loss\n0,1.0\n1,0.5\n")
    assert first.put(run) == 1
    (run / "model.pt").write_bytes(b"WEIGHTS")  # same size, changed since it was copied (a rebuilt ensemble)
    os.utime(run / "model.pt", ns=(1, 1))
    assert first.put(run) == 1
    assert first.has(run)

    second = Share(share_url, two)
    partial = two / "runs" / "k1" / "fold0"
    partial.mkdir(parents=True)
    (partial / "stale.txt").write_text("from an interrupted attempt here")
    assert second.get(partial)
    assert sorted(p.name for p in partial.iterdir()) == ["history.csv", "model.pt", "summary.json"]
    assert (partial / "history.csv").read_text() == (run / "history.csv").read_text()
    assert (partial / "model.pt").read_bytes() == b"WEIGHTS"
    assert not second.get(two / "runs" / "k1" / "fold1")  # not on the share

    assert first.put(one) == 0  # the run is there; locks and shared/ are never copied
    (one / "results.csv").write_text("cell,fold\nk1,0\n")
    assert first.put(one) == 1 and second.get_file("results.csv") and not second.get_file("summary.csv")
    assert (two / "results.csv").read_text() == "cell,fold\nk1,0\n"


def test_a_run_without_its_summary_is_not_taken_from_the_share(share_url, tmp_path):
    one = tmp_path / "one"
    run = _run(one, marker=None)  # a copy cut off before its last file: not whole
    Share(share_url, one).put(run)
    assert not Share(share_url, tmp_path / "two").get(tmp_path / "two" / "runs" / "k1" / "fold0")
    failed = _run(one, "runs/k2/fold0", marker="failed.json")  # a recorded failure is whole too
    Share(share_url, one).put(failed)
    assert Share(share_url, tmp_path / "two").get(tmp_path / "two" / "runs" / "k2" / "fold0")


def test_a_share_refuses_another_study_or_another_split(tmp_path):
    frame = pd.DataFrame({"patient_id": ["a", "b", "c"], "label": [0, 1, 2], "split": ["train", "train", "test"],
                          "fold": [0, 1, -1]})
    config = {"data": "m.csv", "seed": 0, "folds": 2}
    share = Share(str(tmp_path / "share"), tmp_path / "one")
    share.claim(config, ("data", "seed", "folds"), split_digest(frame))
    share.claim(config, ("data", "seed", "folds"), split_digest(frame.assign(image=["x", "y", "z"])))  # mount-free
    with pytest.raises(ConfigError, match="differs in seed"):
        share.claim({**config, "seed": 1}, ("data", "seed", "folds"), split_digest(frame))
    with pytest.raises(ConfigError, match="split differs"):
        share.claim(config, ("data", "seed", "folds"), split_digest(frame.assign(fold=[1, 0, -1])))


def test_an_unreachable_share_costs_a_warning_not_the_run(tmp_path, monkeypatch, caplog):
    from botocore.exceptions import EndpointConnectionError

    one = tmp_path / "one"
    run = _run(one)
    share = Share(str(tmp_path / "share"), one)

    def unreachable(*args, **kwargs):  # what s3fs raises when the endpoint does not answer: not an OSError
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    monkeypatch.setattr(share.fs, "exists", unreachable)
    with caplog.at_level(logging.WARNING, logger="cxrlab.study.share"):
        share.put_quietly(run)
        assert not share.get_quietly(tmp_path / "one" / "runs" / "k9" / "fold0")
    assert "could not be copied" in caplog.text and "could not be read" in caplog.text
    assert (run / "model.pt").exists() and (run / "summary.json").exists()


def test_a_run_whose_worker_crashed_is_queued_again_by_a_rerun(tmp_path):
    """A trial that failed (its worker raised) would block its run for ever: a rerun queues it again;
    a finished run is not queued twice."""
    from cxrlab.study.queue import SharedRuns

    queue = SharedRuns(f"sqlite:///{tmp_path / 'q.db'}", "s", heartbeat=5)
    queue.enqueue(["a", "b"])
    with pytest.raises(RuntimeError):
        queue.work(lambda run: (_ for _ in ()).throw(RuntimeError("crash")) if run == "a" else None)
    assert queue.finished() <= {"b"}  # "a" failed; "b" may have been reached before the crash
    waiting_b = "b" not in queue.finished()
    again = SharedRuns(f"sqlite:///{tmp_path / 'q.db'}", "s", heartbeat=5)
    again.enqueue(["a", "b"])
    assert again.work(lambda run: None) == 1 + waiting_b
    assert again.finished() == {"a", "b"}
    again.enqueue(["a", "b"])  # both finished: nothing is queued again
    assert again.work(lambda run: None) == 0
