"""The hostile-input corpus (:mod:`tests.hostile`) through every door: ``predict``, ``explain``,
``manifest``, ``prepare``, ``evaluate``, ``serve``, model loading and ``train``'s settings.

Each door must show: no crash (no traceback, no "please report it"), no HTTP 500, no lost work
(every good input written, every bad one named with its reason in one line) and no silent wrong
result (the same radiograph in four lossless encodings scores the same; a damaged model or setting is
refused, never used)."""

from __future__ import annotations

import json
import os
import re

import cv2
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.core import ConfigError
from tests.hostile import MODEL_CASES, NOT_UTF8, SETTINGS, broken_model, random_bytes_model, shown, write_corpus

runner = CliRunner()
CLASSES = ("COVID-19", "Pneumonia", "Normal")  # the fixture run's classes: a column each


def _no_crash(output: str) -> None:
    assert "Traceback" not in output and "please report" not in output, output


def _flat(output: str) -> str:
    return " ".join(output.split())  # the console wraps long lines


@pytest.fixture(scope="module")
def radiograph(run_dir) -> np.ndarray:
    """A test-side image of the fixture run (unseen by its model: no door leaves it out as seen)."""
    splits = pd.read_csv(run_dir / "splits.csv")
    image = splits.loc[splits["split"] == "test", "image"].iloc[0]
    return cv2.imread(str(run_dir / image), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def corpus(radiograph, tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("hostile") / "in", radiograph)


@pytest.mark.parametrize("command, table", [("predict", "predictions.csv"), ("explain", "explanations.csv")])
def test_screening_doors_write_every_good_input_name_every_bad_one_and_agree_across_encodings(
        run_dir, corpus, tmp_path, command, table):
    too_long = str(corpus.folder / ("x" * 300 + ".png"))  # a name over the system's limit, given as an input
    result = runner.invoke(app, [command, str(run_dir), str(corpus.folder), too_long, "--out", str(tmp_path)])
    _no_crash(result.output)
    assert result.exit_code == 3, result.output  # finished, some inputs failed
    rows = pd.read_csv(tmp_path / table, keep_default_na=False).set_index("image")
    assert len(rows) == len(corpus.names) + 1  # one row per entry, none lost
    assert rows.at[too_long, "error"] == "cannot read file (File name too long)"
    for name in corpus.good:
        row = rows.loc[shown(str(corpus.path(name)))]
        assert row["error"] == "", (name, row["error"])
    for name, reason in corpus.bad.items():
        assert reason in rows.loc[shown(str(corpus.path(name))), "error"], (name, rows.loc[shown(str(corpus.path(name))), "error"])
        assert shown(name) in _flat(result.output), name
    good = rows[rows["error"] == ""][list(CLASSES)].astype(float)
    assert np.isfinite(good.to_numpy()).all() and np.allclose(good.sum(axis=1), 1, atol=1e-3)
    same = good.loc[[shown(str(corpus.path(n))) for n in corpus.same]]
    assert (same.max() - same.min()).max() <= 0.02, same  # 8-bit, 16-bit, DICOM with and without preamble
    overlays = rows.loc[[shown(str(corpus.path(n))) for n in corpus.good], "overlay"]
    assert all(os.path.exists(p) for p in overlays), overlays  # each good image's heatmap written


def test_data_doors_read_the_corpus_as_a_class_tree(run_dir, radiograph, tmp_path):
    """``manifest``, ``prepare`` and ``evaluate`` over folders of classes holding the corpus: every good
    image in the table, prepared and evaluated; every bad one named with its reason; nothing written
    half."""
    root = tmp_path / "tree"
    corpora = {cls: write_corpus(root / cls, np.roll(radiograph, 7 * i, axis=1), entries=cls == "Normal")
               for i, cls in enumerate(("COVID-19", "Pneumonia", "Normal"))}
    good = sum(len(c.good) for c in corpora.values())
    made = runner.invoke(app, ["manifest", "--data", str(root), "--out", str(tmp_path / "m.csv")])
    _no_crash(made.output)
    assert made.exit_code == 0, made.output
    manifest = pd.read_csv(tmp_path / "m.csv")
    for corpus in corpora.values():  # the non-UTF-8 name cannot be a table's row: named, not lost
        assert f"{shown(corpus.path(os.fsdecode(NOT_UTF8)))}: file name is not valid UTF-8" in _flat(made.output)
    assert len(manifest) >= good - len(corpora)
    prepared = runner.invoke(app, ["prepare", "--data", str(root), "--out", str(tmp_path / "p"), "--size", "32"])
    _no_crash(prepared.output)
    report = json.loads((tmp_path / "p" / "prepare_report.json").read_text())
    skipped = " ".join(map(str, report["skipped"]))
    for corpus in corpora.values():
        for name, reason in corpus.bad.items():
            assert shown(name) in _flat(prepared.output) and reason in _flat(prepared.output), name
    assert report["images"] == good - len(corpora) and "not valid UTF-8" in skipped  # every image but the unnamed
    evaluated = runner.invoke(app, ["evaluate", str(run_dir), "--data", str(root), "--out", str(tmp_path / "e"),
                                    "--no-gradcam", "--n-boot", "10"])
    _no_crash(evaluated.output)
    assert evaluated.exit_code == 3, evaluated.output
    predictions = pd.read_csv(tmp_path / "e" / "predictions.csv")
    assert len(predictions) == good - len(corpora)
    skipped = dict(json.loads((tmp_path / "e" / "metrics.json").read_text())["skipped"])
    for corpus in corpora.values():  # every entry that is not evaluated is named with its reason
        for name, reason in corpus.bad.items():
            assert reason in skipped[shown(str(corpus.path(name)))], name
    assert len(skipped) + len(predictions) == sum(len(c.names) for c in corpora.values())


def test_the_service_answers_every_upload_without_a_500(run_dir, corpus):
    from cxrlab.serve import create_app

    with TestClient(create_app(run_dir), raise_server_exceptions=False) as client:
        scores = {}
        for name in corpus.names:
            if not corpus.path(name).is_file():
                continue  # not a file (FIFO, device, link loop): nothing a client can upload
            response = client.post("/predict", files={"file": (shown(name), corpus.path(name).read_bytes())})
            assert response.status_code < 500, (name, response.status_code, response.text)
            if name in corpus.good:
                assert response.status_code == 200, (name, response.text)
                scores[name] = response.json()["probabilities"]
            else:
                detail = response.json()["detail"]
                assert 400 <= response.status_code < 500 and corpus.bad[name] in detail and "\n" not in detail, (name, detail)
        same = pd.DataFrame([scores[n] for n in corpus.same])
        assert (same.max() - same.min()).max() <= 0.02, same
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize("case", [*MODEL_CASES, "random bytes"])
def test_a_damaged_model_file_is_refused_at_every_door(run_dir, corpus, phantoms, tmp_path, case):
    from cxrlab.serve import ServeSettings, create_app

    model = random_bytes_model(tmp_path) if case == "random bytes" else broken_model(run_dir / "model.pt", tmp_path, case)
    reason = MODEL_CASES[case][1] if case in MODEL_CASES else "not a readable model file"
    image = str(corpus.path("plain.png"))
    for args in (["predict", str(model), image, "--out", str(tmp_path / "p")],
                 ["explain", str(model), image, "--out", str(tmp_path / "x")],
                 ["evaluate", str(model), "--data", str(phantoms), "--out", str(tmp_path / "e"), "--no-gradcam"]):
        result = runner.invoke(app, args)
        _no_crash(result.output)
        message = _flat(result.output)
        assert result.exit_code == 1 and str(model) in message, (args[0], result.output)
        assert re.search(reason, message), (args[0], result.output)
        assert "unsafe" not in message  # never a hint to load it without the safe unpickler
    assert not any((tmp_path / d / f).exists() for d in "pxe" for f in ("predictions.csv", "explanations.csv"))
    with pytest.raises(ConfigError, match=reason):  # the service does not start on it
        create_app(model, ServeSettings())


@pytest.mark.parametrize("assignment", list(SETTINGS))
def test_a_bad_setting_is_refused_before_training_starts(phantoms, tmp_path, assignment):
    result = runner.invoke(app, ["train", "--data", str(phantoms), "--out", str(tmp_path / "r"), "--set", assignment])
    _no_crash(result.output)
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(error) == 1 and SETTINGS[assignment] in _flat(result.output), result.output
    assert not (tmp_path / "r" / "model.pt").exists()
