"""Images in a folder are recognised by content, not only by suffix; what is left out is named."""

from __future__ import annotations

import logging

import cv2
import pytest
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.core.errors import InvalidImageError
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


def test_a_dicom_written_without_its_preamble_is_found_and_read_like_one_with_it(tmp_path):
    """Older modalities and some exports write the dataset without the 128-byte preamble and DICM: with
    its file meta, or with neither (implicit VR); both are found by content and decode the same pixels."""
    import pydicom
    from pydicom.filebase import DicomBytesIO

    from cxrlab.data.dicom import read_dicom_header

    full = write_dicom(tmp_path / "full.dcm", gradient(64, 64).astype("uint16") * 16, patient_id="P7")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "with_meta").write_bytes(full.read_bytes()[132:])  # file meta, no preamble
    dataset = pydicom.Dataset()
    for element in pydicom.dcmread(full):
        dataset.add(element)
    for name, implicit in (("implicit_vr", True), ("explicit_vr", False)):  # no file meta at all
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, implicit
        pydicom.filewriter.write_dataset(buf, dataset)
        (folder / name).write_bytes(buf.getvalue())
    (folder / "junk.dcm").write_bytes(bytes(range(256)) * 4)  # a .dcm name is not enough
    found = find_images([folder])
    assert sorted(p.name for p in found) == ["explicit_vr", "implicit_vr", "junk.dcm", "with_meta"]
    reference = read_image(full).pixels
    for path in found:
        if path.name == "junk.dcm":
            with pytest.raises(InvalidImageError, match="junk.dcm: not a readable DICOM file .no DICM marker"):
                read_image(path)
            continue
        assert (read_image(path).pixels == reference).all(), path.name
        assert read_dicom_header(path)["patient_id"] == "P7"


def test_an_empty_folder_as_the_only_input_is_an_error_not_an_empty_table(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    for command in ("predict", "explain"):
        result = CliRunner().invoke(app, [command, str(run_dir), str(tmp_path / "empty"), "--out", str(tmp_path / command)])
        assert result.exit_code == 1 and "no image files in" in result.output, result.output


def test_every_good_input_is_written_and_every_bad_one_named_whatever_its_name(run_dir, tmp_path):
    """A name that is not UTF-8, a 250-character name and a name with console markup: the good images
    are screened and written (overlays included), the bad one named whole with its reason."""
    import os

    import pandas as pd

    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "ok.png"), gradient())
    data = (folder / "ok.png").read_bytes()
    with open(os.fsencode(folder) + b"/bad\xff.png", "wb") as f:
        f.write(data)
    (folder / ("L" * 250 + ".png")).write_bytes(data)
    (folder / "bad [final].png").write_bytes(b"not an image")
    for command, table in (("predict", "predictions.csv"), ("explain", "explanations.csv")):
        result = CliRunner().invoke(app, [command, str(run_dir), str(folder), "--out", str(tmp_path / command)])
        assert result.exit_code == 3, result.output  # finished, with one input named as failed
        assert "bad [final].png: not an image" in " ".join(result.output.split())
        rows = pd.read_csv(tmp_path / command / table, keep_default_na=False)
        assert len(rows) == 4 and (rows["error"] != "").sum() == 1
        assert any(name.endswith("bad\\xff.png") for name in rows["image"])  # escaped, not lost
        written = rows[rows["error"] == ""]
        if "overlay" in rows:
            assert all(os.path.exists(p) for p in written["overlay"])


def test_manifest_prepare_and_evaluate_name_what_a_table_cannot_hold_and_write_the_rest(run_dir, tmp_path):
    import os

    import pandas as pd

    root = tmp_path / "tree"
    for cls in ("COVID", "Normal"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / cls / f"{i}.png"), gradient(64, 64))
    with open(os.fsencode(root / "COVID") + b"/bad\xff.png", "wb") as f:
        f.write((root / "COVID" / "0.png").read_bytes())
    (root / "Normal" / "x [y].png").write_bytes(b"junk")
    runner = CliRunner()
    made = runner.invoke(app, ["manifest", "--data", str(root), "--out", str(tmp_path / "m.csv")])
    assert made.exit_code == 0, made.output
    assert "bad\\xff.png: file name is not valid UTF-8" in made.output and len(pd.read_csv(tmp_path / "m.csv")) == 7
    prepared = runner.invoke(app, ["prepare", "--data", str(root), "--out", str(tmp_path / "p"), "--size", "32"])
    assert "bad\\xff.png: file name is not valid UTF-8" in prepared.output and "x [y].png: not an image" in prepared.output
    assert (tmp_path / "p" / "prepare_report.json").exists()
    evaluated = runner.invoke(app, ["evaluate", str(run_dir), "--data", str(root), "--out", str(tmp_path / "e"),
                                    "--no-gradcam", "--n-boot", "10"])
    assert evaluated.exit_code == 3 and "bad\\xff.png" in evaluated.output, evaluated.output
    assert len(pd.read_csv(tmp_path / "e" / "predictions.csv")) == 6


def test_a_dicom_with_a_damaged_header_skips_that_file_only(tmp_path):
    """pydicom decodes header values lazily: an element of an impossible length used to fail outside
    the reader's guard and stop manifest (and prepare, evaluate) for the whole folder."""
    import pandas as pd

    root = tmp_path / "tree"
    for cls in ("COVID", "Normal"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            write_dicom(root / cls / f"{i}.dcm", gradient(64, 64).astype("uint16") * 16, patient_id=f"{cls}{i}")
    raw = bytearray((root / "COVID" / "0.dcm").read_bytes())
    at = raw.find(b"\x28\x00\x10\x00US")  # Rows (0028,0010), a US of 2 bytes
    raw[at + 6:at + 8] = b"\x03\x00"  # now claims 3
    (root / "COVID" / "damaged.dcm").write_bytes(bytes(raw))
    result = CliRunner().invoke(app, ["manifest", "--data", str(root), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert "damaged.dcm: not a readable DICOM file (damaged header" in " ".join(result.output.split())
    assert len(pd.read_csv(tmp_path / "m.csv")) == 4
