"""Images in a folder are recognised by content, not only by suffix; what is left out is named."""

from __future__ import annotations

import logging

import cv2
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.data.images import find_images, read_image
from tests.conftest import gradient, write_dicom


def test_a_folder_yields_its_images_whatever_their_names_and_names_the_rest(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "a.jpg"), gradient())
    (tmp_path / "b.jfif").write_bytes((tmp_path / "a.jpg").read_bytes())  # a JPEG by another suffix
    cv2.imwrite(str(tmp_path / "c.png"), gradient())
    (tmp_path / "IMG0001").write_bytes((tmp_path / "c.png").read_bytes())  # no suffix at all
    write_dicom(tmp_path / "scan.dat", gradient(64, 64).astype("uint16") * 16)  # a DICOM saved as .dat
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 10)  # hidden: ignored without a word
    with caplog.at_level(logging.WARNING):
        found = find_images([tmp_path])
    assert sorted(p.name for p in found) == ["IMG0001", "a.jpg", "b.jfif", "c.png", "scan.dat"]
    assert all(read_image(p).pixels.size for p in found)
    assert "1 file(s) left out, not images by their content (e.g. notes.txt)" in caplog.text
    assert ".DS_Store" not in caplog.text


def test_an_empty_folder_as_the_only_input_is_an_error_not_an_empty_table(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    for command in ("predict", "explain"):
        result = CliRunner().invoke(app, [command, str(run_dir), str(tmp_path / "empty"), "--out", str(tmp_path / command)])
        assert result.exit_code == 1 and "no image files in" in result.output, result.output
