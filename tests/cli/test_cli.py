"""The command line as a user meets it: help, one-line errors, exit codes, files written."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli import app

runner = CliRunner()
COMMANDS = ["synth", "manifest", "split", "audit", "prepare", "train", "backbones", "evaluate", "explain", "compare",
            "study", "tune", "demo", "doctor"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_prepare_bad_tree_exits_zero_and_names_each_bad_file(bad_tree, tmp_path):
    root, expected = bad_tree
    result = runner.invoke(app, ["prepare", "--data", str(root), "--out", str(tmp_path / "out"), "--size", "32",
                                 "--clahe", "--workers", "1"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    for name, fragment in expected.items():
        assert name in flat and fragment in flat
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["images"] == 10 and len(report["skipped"]) == len(expected)


def test_hostile_entries_in_a_manifest_are_left_out_by_name_by_every_data_command(phantoms, tmp_path):
    from tests.conftest import write_hostile_files, write_hostile_images

    undecodable, unreadable = write_hostile_images(tmp_path / "bad"), write_hostile_files(tmp_path / "bad")
    (tmp_path / "bad" / "folder.png").mkdir()
    unreadable["folder.png"] = "is a directory"
    bad = {**undecodable, **unreadable}
    table = pd.read_csv(phantoms).assign(image=lambda f: [str(phantoms.parent / p) for p in f["image"]],
                                         mask="", lesion="")
    extra = pd.DataFrame({"image": [str(tmp_path / "bad" / n) for n in bad], "label": "Normal",
                          "patient_id": [f"bad-{i}" for i in range(len(bad))], "source": "bad", "view": "PA"})
    pd.concat([table, extra]).to_csv(tmp_path / "manifest.csv", index=False)
    runs = {"manifest": ["manifest", "--data", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "m.csv")],
            "split": ["split", "--data", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "s"), "--ratios",
                      "6:2:2", "--folds", "2", "--dedupe", "regroup"],
            "prepare": ["prepare", "--data", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "p"), "--size",
                        "32", "--workers", "2"]}
    outputs = {}
    for name, args in runs.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Traceback" not in result.output, (name, result.output)
        outputs[name] = result.output
    for name, reason in unreadable.items():  # entries that are not files are left out when the table is read
        assert f"{tmp_path / 'bad' / name}: {reason}" in outputs["manifest"], name
    for name, reason in undecodable.items():  # files that do not decode, when they are hashed or prepared
        assert f"{tmp_path / 'bad' / name}:" in outputs["split"] and reason in outputs["split"], name
    for name in bad:
        assert f"{tmp_path / 'bad' / name}:" in outputs["prepare"], name
    assert len(pd.read_csv(tmp_path / "m.csv")) == len(table) + len(undecodable)
    report = json.loads((tmp_path / "p" / "prepare_report.json").read_text())
    assert report["images"] == len(table) and len(report["skipped"]) == len(bad)
    result = runner.invoke(app, ["audit", str(tmp_path / "s" / "splits.csv")])  # hashing skips what it cannot read
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output


def test_split_then_prepare_then_refuse_a_leaking_split(phantoms, tmp_path):
    out = tmp_path / "split"
    result = runner.invoke(app, ["split", "--data", str(phantoms), "--out", str(out), "--ratios", "6:2:2", "--folds", "2"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "splits.csv")
    assert {"image", "patient_id", "label", "source", "split", "fold"} <= set(frame.columns)
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    result = runner.invoke(app, ["prepare", "--data", str(out / "splits.csv"), "--out", str(tmp_path / "p"), "--size", "32"])
    assert result.exit_code == 0, result.output
    victim = frame.loc[frame.split == "test", "patient_id"].iloc[0]
    leak = frame[frame.patient_id == victim].assign(split="train", image=lambda f: f.image + ".copy.png")
    pd.concat([frame, leak]).to_csv(out / "splits.csv", index=False)
    for args in (["audit", str(out / "splits.csv")],
                 ["prepare", "--data", str(out / "splits.csv"), "--out", str(tmp_path / "q")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert f"patient '{victim}'" in result.output and "Traceback" not in result.output


def test_audit_writes_reports_and_fix(phantoms, tmp_path):
    runner.invoke(app, ["split", "--data", str(phantoms), "--out", str(tmp_path), "--ratios", "6:2:2", "--folds", "0"])
    result = runner.invoke(app, ["audit", str(tmp_path / "splits.csv"), "--fix", "drop"])
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["leakage"] is None and set(audit["counts"]) == {"train", "val", "test"}
    assert (tmp_path / "audit.md").read_text().startswith("# Split-integrity audit")
    assert (tmp_path / "fixed" / "splits.csv").exists()


def test_split_loso_binary_and_manifest(phantoms, tmp_path):
    result = runner.invoke(app, ["split", "--data", str(phantoms), "--out", str(tmp_path), "--ratios", "6:2:2",
                                 "--scheme", "binary", "--loso", "--folds", "0"])
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(tmp_path / "splits.csv")["label"]) == {"COVID-19", "non-COVID"}
    held_out = pd.read_csv(tmp_path / "loso" / "phantom-a" / "splits.csv")
    assert set(held_out.loc[held_out.split == "test", "source"]) == {"phantom-a"}
    result = runner.invoke(app, ["manifest", "--data", str(phantoms), "--out", str(tmp_path / "m.parquet")])
    assert result.exit_code == 0 and (tmp_path / "m.parquet").exists()


def test_user_errors_are_one_line(phantoms, tmp_path):
    result = runner.invoke(app, ["split", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "error:" in result.output and "not found" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "file").write_text("x")  # OUT below a file: the OS refuses
    result = runner.invoke(app, ["prepare", "--data", str(phantoms), "--out", str(tmp_path / "file" / "out")])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output


def test_demo_runs_a_small_study_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--patients", "30", "--size", "32", "--folds", "2",
                                 "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert (out / "splits.csv").exists() and (out / "audit.md").exists() and (out / "best-model" / "model.pt").exists()
    summary = pd.read_csv(out / "summary.csv")
    assert summary["factor.fine_tune"].astype(str).tolist() == ["0", "2", "all"] and (summary["folds_ok"] == 2).all()
    report = (out / "report.md").read_text()
    assert "± " in report and "Leave one source out" in report and "Source probe" in report
    printed = result.output.replace("\n", "")  # rich wraps long paths mid-word
    assert "best" in printed and "report.html" in printed


def test_backbones_lists_the_registry():
    result = runner.invoke(app, ["backbones", "--format", "json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["efficientnet_lite0"]["offline_weights"] and rows["vgg16"]["blocks"] == 5
    assert 14_000_000 < rows["vgg16"]["params"] < 15_000_000  # VGG-16's conv blocks: 14.7 M
    piped = runner.invoke(app, ["backbones"]).output  # not a terminal: complete CSV rows, nothing cut to fit
    table = pd.read_csv(io.StringIO(piped)).set_index("name")
    assert table.loc["efficientnet_lite0", "timm"] == "efficientnet_lite0" and len(table) == len(rows)
    assert runner.invoke(app, ["backbones", "--format", "xml"]).exit_code == 2


def test_the_command_line_starts_without_importing_the_heavy_layers():
    code = ("import sys, cxrlab.cli; heavy = ('torch', 'pandas', 'sklearn', 'lightning', 'mlflow', 'cv2'); "
            "print(','.join(m for m in heavy if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""  # so --help and argument errors answer at once (they took 9-13 s with torch)


def test_an_unexpected_error_prints_one_line_and_the_log_file_with_the_traceback(tmp_path, monkeypatch, capsys):
    import cxrlab.data
    from cxrlab.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cxrlab.data, "generate_phantoms", broken)
    monkeypatch.setenv("CXRLAB_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(sys, "argv", ["cxrlab", "synth", "--out", str(tmp_path / "p")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "unexpected RuntimeError: a bug over two lines" in err and "Traceback" not in err
    [log] = (tmp_path / "logs").glob("cxrlab-*.log")
    assert str(log) in " ".join(err.split()) and "Traceback" in log.read_text() and "synth" in log.read_text()


def test_train_command_and_one_line_errors(phantoms, tmp_path):
    args = ["train", "--data", str(phantoms), "--out", str(tmp_path / "run"), "--size", "32", "--epochs", "1",
            "--fine-tune", "1", "--ratios", "6:2:2", "--set", f"tracking.mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "sensitivity" in result.output and (tmp_path / "run" / "summary.json").exists()
    result = runner.invoke(app, args[:-2] + ["--backbone", "vgg17"])
    assert result.exit_code == 1 and "valid: densenet121" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--data", str(phantoms), "--fine-tune", "two"])
    assert result.exit_code == 2 and "integer k or 'all'" in result.output
