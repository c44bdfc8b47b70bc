"""Bad inputs get one line naming the file and the reason (not a traceback, not a misleading one)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cxrlab.cli import app


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "please report it" not in lines[0], result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("case", ["empty table", "random model", "bad yaml", "nul csv"])
def test_bad_inputs_get_one_line_naming_the_file_and_what_is_wrong(case, run_dir, tmp_path):
    runner = CliRunner()
    if case == "empty table":
        (tmp_path / "empty.csv").write_text("image,label,patient_id\n")
        text = _one_line_error(runner.invoke(app, ["evaluate", str(run_dir), "--data", str(tmp_path / "empty.csv"),
                                                   "--out", str(tmp_path / "e"), "--no-gradcam"]))
        assert "nothing to evaluate" in text and "trained or validated" not in text
    elif case == "random model":
        (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
        (tmp_path / "x.png").write_bytes(b"")
        text = _one_line_error(runner.invoke(app, ["predict", str(tmp_path / "random.pt"), str(tmp_path / "x.png"),
                                                   "--out", str(tmp_path / "p")]))
        assert "random.pt: not a readable model file" in text and "weights_only" not in text
    elif case == "bad yaml":
        (tmp_path / "bad.yaml").write_text("lr: [1, 2\nepochs: 3\n")
        text = _one_line_error(runner.invoke(app, ["train", "--config", str(tmp_path / "bad.yaml")]))
        assert "bad.yaml: not valid YAML (line 2, column 7: expected ',' or ']', but got ':')" in text
    else:
        (tmp_path / "nul.csv").write_bytes(b"image,label,patient_id\na.png,Normal,p1\nb\x00.png,Normal,p2\n")
        text = _one_line_error(runner.invoke(app, ["manifest", "--data", str(tmp_path / "nul.csv"), "--out",
                                                   str(tmp_path / "m.csv")]))
        assert "nul.csv: line(s) 3 hold NUL bytes" in text
