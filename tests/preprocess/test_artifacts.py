"""Artifact removal: planted text on phantoms is found and painted out, the lungs are left alone."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.data import generate_phantoms, load_source
from cxrlab.data.synthetic import SOURCES, random_anatomy, render_phantom
from cxrlab.preprocess import PreprocessConfig, Preprocessor, prepare
from cxrlab.preprocess.artifacts import detect_artifacts, remove_artifacts


def _phantom(seed: int, size: int = 256):
    rng = np.random.default_rng(seed)
    image, lungs, _ = render_phantom(size, "Pneumonia", random_anatomy(rng), rng, SOURCES[0])  # no marker of its own
    return image, lungs > 0


def _text(image: np.ndarray, where: tuple[int, int], words: str = "PORTABLE") -> np.ndarray:
    mark = np.zeros_like(image)
    cv2.putText(mark, words, where, cv2.FONT_HERSHEY_SIMPLEX, image.shape[0] / 500, 255, max(1, image.shape[0] // 200))
    return mark > 0


@pytest.mark.parametrize("seed", range(4))
def test_planted_text_outside_the_lungs_is_found_and_the_lungs_are_untouched(seed):
    image, lungs = _phantom(seed)
    text = _text(image, (8, 248)) | _text(image, (200, 20), "L")
    planted = image.copy()
    planted[text] = 255
    for mask in (lungs, None):  # with the lung mask, and with only the edge-band prior
        found = detect_artifacts(planted, mask)
        assert (found & text).sum() >= 0.8 * text.sum()
        assert not (found & lungs).any()
    result = remove_artifacts(planted, lungs)
    assert result.touched >= text.sum()
    assert np.array_equal(result.pixels[lungs], planted[lungs])  # inpainting leaves the lungs as they were
    assert np.abs(result.pixels[text].astype(int) - 255).mean() > 60  # the text is gone, not just marked


def test_marks_inside_the_lungs_and_clean_images_are_left_alone():
    image, lungs = _phantom(7)
    inside = np.zeros_like(lungs)
    ys, xs = np.nonzero(lungs)
    inside[ys.mean().astype(int) - 2:ys.mean().astype(int) + 2, xs.min() + 10:xs.min() + 14] = True
    planted = image.copy()
    planted[inside] = 255  # a bright spot in the lung (a nodule, a clip): anatomy or pathology, kept
    assert not (detect_artifacts(planted, lungs) & inside).any()
    assert remove_artifacts(image, lungs).touched == 0


def test_a_thin_uniform_frame_is_found():
    image, lungs = _phantom(3)
    framed = image.copy()
    framed[:4, :] = 255
    framed[:, -3:] = 0
    found = detect_artifacts(framed, lungs)
    assert found[:4, :].all() and found[:, -3:].all() and not found[10:-10, 10:-10][lungs[10:-10, 10:-10]].any()


def test_prepare_counts_what_it_painted_out_and_keeps_the_counts_on_resume(tmp_path):
    data = generate_phantoms(tmp_path / "ph", n_patients=12, size=128, seed=5)
    manifest = load_source(data)
    config = PreprocessConfig(size=64, artifacts="inpaint")
    first = prepare(manifest, tmp_path / "prep", config, workers=1)
    marked = set(manifest.table.loc[manifest.table["source"] == SOURCES[1], "image"])
    assert set(first.artifacts) >= marked  # every phantom with a burned-in marker was touched
    again = prepare(manifest, tmp_path / "prep", config, workers=1)
    assert again.shards_reused and again.artifacts == first.artifacts
    pre = Preprocessor(config)
    row = manifest.table[manifest.table["source"] == SOURCES[1]].iloc[0]
    assert pre(row["image"], row["mask"]).artifact_pixels > 0 and Preprocessor(PreprocessConfig(size=64))(row["image"]).artifact_pixels == 0


def test_prepare_command_reports_and_draws_a_sample(tmp_path):
    data = generate_phantoms(tmp_path / "ph", n_patients=6, size=128, seed=5)
    result = CliRunner().invoke(app, ["prepare", "--data", str(data), "--out", str(tmp_path / "prep"), "--size", "64",
                                      "--inpaint-artifacts", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "artifacts painted out in" in result.output and (tmp_path / "prep" / "artifacts.png").exists()
