"""cxrlab evaluate on a tiny run trained on phantoms."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.core import ConfigError
from cxrlab.evaluate.runner import evaluate_run
from cxrlab.models import load_model


def test_report_has_every_part(run_dir, tmp_path):
    results = evaluate_run(run_dir, tmp_path, n_boot=50)
    for name in ("report.html", "report.md", "metrics.json", "confusion.png", "roc_pr.png", "reliability.png",
                 "training_curves.png", "predictions.csv"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["n"] == results["metrics"]["n"] > 0
    assert set(saved["per_source"]) <= {"phantom-a", "phantom-b"} and saved["binary"]["operating_points"]
    assert saved["calibration"]["temperature"] > 0 and saved["binary"]["chosen_on"] == "validation data"
    acc = saved["ci"]["accuracy"]
    assert acc["low"] <= acc["value"] <= acc["high"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "Research use only" in page
    assert "<script" not in page and "src='http" not in page  # self-contained


def _test_side(run_dir) -> pd.DataFrame:
    """The run's test-side rows with absolute paths (patients the model never saw)."""
    split = pd.read_csv(run_dir / "splits.csv").fillna("")
    split = split[split["split"] == "test"].drop(columns=["split", "fold"])
    return split.assign(**{c: [str((run_dir / p).resolve()) if p else "" for p in split[c]] for c in ("image", "mask", "lesion")})


def test_evaluate_other_data_leaves_out_what_the_model_trained_or_validated_on(run_dir, phantoms, tmp_path):
    split = pd.read_csv(run_dir / "splits.csv")
    test_side = (split["split"] == "test").sum()
    results = evaluate_run(run_dir, tmp_path / "all", data=phantoms, n_boot=20)  # the run's own training manifest
    assert results["metrics"]["n"] == test_side and results["side"].startswith("all of")
    assert results["seen_left_out"] == len(split) - test_side > 0
    assert any("left out: the model trained or validated on" in w for w in results["warnings"])
    assert sum("seen in training or validation" in reason for _, reason in results["skipped"]) == results["seen_left_out"]
    seen_only = split[split["split"] != "test"].assign(image=lambda f: [str((run_dir / p).resolve()) for p in f["image"]])
    seen_only.drop(columns=["mask", "lesion"]).to_csv(tmp_path / "seen.csv", index=False)
    for model in (run_dir, run_dir / "model.pt"):  # the model file alone carries the record
        with pytest.raises(ConfigError, match="trained or validated on every image"):
            evaluate_run(model, tmp_path / "seen", data=tmp_path / "seen.csv", n_boot=20)
    renamed = seen_only.assign(patient_id=lambda f: "other:" + f["patient_id"])  # the same images under new ids
    renamed.drop(columns=["mask", "lesion"]).to_csv(tmp_path / "renamed.csv", index=False)
    with pytest.raises(ConfigError, match="trained or validated on every image"):
        evaluate_run(run_dir / "model.pt", tmp_path / "renamed", data=tmp_path / "renamed.csv", n_boot=20)
    with pytest.raises(ConfigError, match="no model found"):
        evaluate_run(tmp_path / "nothing", tmp_path / "x")


def test_copies_of_the_training_images_under_new_names_and_patient_ids_are_not_test_data(run_dir, tmp_path):
    """Byte-identical copies and re-encoded near-copies (JPEG, brightened) of every training and
    validation image, under new file names and patient ids: refused alone, left out (and counted)
    beside genuine test images; the model file alone carries what is needed."""
    import cv2
    import numpy as np

    split = pd.read_csv(run_dir / "splits.csv").fillna("")
    seen = split[split["split"] != "test"].reset_index(drop=True)
    (tmp_path / "copies").mkdir()
    rows = []
    for k, (image, label) in enumerate(zip(seen["image"], seen["label"], strict=True)):
        source = run_dir / image
        if k % 3 == 0:  # exact copy
            target = tmp_path / "copies" / f"new-{k}.png"
            target.write_bytes(source.read_bytes())
        else:  # near copy: re-encoded as JPEG, every other one also brightened
            pixels = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE).astype(np.int16) + (12 if k % 3 == 2 else 0)
            target = tmp_path / "copies" / f"new-{k}.jpg"
            cv2.imwrite(str(target), np.clip(pixels, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        rows.append({"image": str(target), "label": label, "patient_id": f"someone-else-{k}", "source": "elsewhere"})
    copies = pd.DataFrame(rows)
    copies.to_csv(tmp_path / "copies.csv", index=False)
    with pytest.raises(ConfigError, match=f"every image.*{len(copies)} of them as copies"):
        evaluate_run(run_dir / "model.pt", tmp_path / "e1", data=tmp_path / "copies.csv", n_boot=20)
    genuine = _test_side(run_dir)
    pd.concat([copies, genuine.drop(columns=["mask", "lesion"])]).to_csv(tmp_path / "mixed.csv", index=False)
    results = evaluate_run(run_dir / "model.pt", tmp_path / "e2", data=tmp_path / "mixed.csv", n_boot=20)
    assert results["metrics"]["n"] == len(genuine)
    assert results["seen_left_out"] == results["seen_copies"] == len(copies)
    reasons = [reason for _, reason in results["skipped"]]
    assert sum("a copy of an image" in r for r in reasons) == (len(copies) + 2) // 3
    assert sum("near-copy" in r for r in reasons) == len(copies) - (len(copies) + 2) // 3
    assert any("copies or near-copies" in w for w in results["warnings"])


def test_without_a_validation_side_the_operating_point_comes_from_the_model_file(run_dir, tmp_path):
    _test_side(run_dir).to_csv(tmp_path / "test.csv", index=False)
    results = evaluate_run(run_dir / "model.pt", tmp_path / "e", data=tmp_path / "test.csv", n_boot=20)
    stored = load_model(run_dir / "model.pt")[2]["extra"]["screening"]["operating_point"]
    assert results["binary"]["chosen_on"] == "the model's validation (kept in its file)"
    assert [p["threshold"] for p in results["binary"]["operating_points"]] == [stored["threshold"]]
    assert "temperature" not in results["calibration"]  # nothing fitted on the scored images


def test_evaluate_names_the_inputs_it_could_not_use_on_screen_and_in_the_report(run_dir, tmp_path):
    table = _test_side(run_dir).assign(mask="", lesion="")
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    bad = pd.DataFrame({"image": [str(tmp_path / "missing.png"), str(tmp_path / "cut.png")], "label": "Normal",
                        "patient_id": ["x1", "x2"], "source": "phantom-a", "view": "PA"})
    other = table.head(1).assign(label="Lung_Opacity", patient_id="x3")  # a label outside the scheme: a choice
    pd.concat([table, bad, other]).to_csv(tmp_path / "data.csv", index=False)
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--data", str(tmp_path / "data.csv"), "--out",
                                      str(tmp_path / "e"), "--n-boot", "20", "--no-gradcam"])
    assert result.exit_code == 3, result.output  # written, but not on every image asked for
    assert "3 input(s) not evaluated (2 could not be read" in " ".join(result.output.split())
    assert f"{tmp_path / 'missing.png'}: file not found" in result.output and f"{tmp_path / 'cut.png'}:" in result.output
    report = (tmp_path / "e" / "report.md").read_text()
    assert "missing.png" in report and "cut.png" in report
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]["n"] == len(table)
    pd.concat([table, other]).to_csv(tmp_path / "chosen.csv", index=False)
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--data", str(tmp_path / "chosen.csv"), "--out",
                                      str(tmp_path / "c"), "--n-boot", "20", "--no-gradcam"])
    assert result.exit_code == 0, result.output  # only a row left out by choice: nothing failed


def test_cli_adds_grad_cam_lung_evidence(run_dir, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--out", str(tmp_path), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "in-lung share" in result.output
    evidence = pd.read_csv(tmp_path / "lung_evidence.csv")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert len(evidence) == saved["metrics"]["n"]  # every phantom has a lung mask
    assert evidence["in_lung_share"].between(0, 1).all() and evidence["lung_area"].between(0.05, 0.8).all()
    assert saved["lung_evidence"]["n"] == len(evidence)
    report = (tmp_path / "report.md").read_text()
    assert "Grad-CAM evidence inside the lungs" in report and "lung_evidence.png" in report
    lesions = pd.read_csv(tmp_path / "lesion_evidence.csv")  # the pointing game on the phantoms' planted lesions
    games = saved["lesion_evidence"]  # the report's maps, and LayerCAM on the finer grid for contrast
    assert [(g["method"], g["layer"]) for g in games] == [("gradcam", "last"), ("layercam", "fine")]
    assert len(lesions) == 2 * games[0]["n"] > 0 and set(lesions["label"]) <= {"COVID-19", "Pneumonia"}
    assert lesions["peak_distance"].ge(0).all() and (lesions["hit"] == (lesions["peak_distance"] <= 15 / 224)).all()
    assert "Does the heatmap fall on the finding?" in report
    assert "first_layer_filters.png" in report  # the stem is frozen (k=2): the figure states no change
    galleries = sorted(p.name for p in tmp_path.glob("gallery_*.png"))
    assert galleries and all(name in report for name in galleries)
