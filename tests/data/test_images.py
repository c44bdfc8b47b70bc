from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from cxrlab.core import InvalidImageError
from cxrlab.data import decode_image, read_image, read_mask
from tests.conftest import gradient, png_header_only, write_dicom, write_hostile_files, write_hostile_images


def test_png_8bit_roundtrip(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), gradient())
    out = read_image(tmp_path / "a.png")
    assert out.pixels.dtype == np.uint8 and np.array_equal(out.pixels, gradient())
    assert (out.orig_height, out.orig_width) == (48, 64)


def test_png_16bit_is_min_max_scaled(tmp_path):
    data = (gradient().astype(np.uint16) * 4 + 1000)  # 12-bit-like values in a 16-bit file
    cv2.imwrite(str(tmp_path / "a.png"), data)
    out = read_image(tmp_path / "a.png").pixels
    assert out.min() == 0 and out.max() == 255
    assert np.corrcoef(out.ravel(), data.ravel())[0, 1] > 0.999


def test_rgb_jpeg_and_palette_png_become_gray(tmp_path):
    rgb = np.stack([gradient()] * 3, axis=2)
    cv2.imwrite(str(tmp_path / "a.jpg"), rgb, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert np.abs(read_image(tmp_path / "a.jpg").pixels.astype(int) - gradient()).max() <= 3
    Image.fromarray(gradient()).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").pixels.shape == (48, 64)


def test_alpha_is_flattened_onto_black(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 20:, 3] = 255  # left half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png").pixels
    assert out[:, :20].max() == 0 and out[:, 20:].min() == 200


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(gradient(40, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "a.jpg", exif=exif, quality=95)
    assert read_image(tmp_path / "a.jpg").pixels.shape == (80, 40)
    png = io.BytesIO()
    img.save(png, format="PNG", exif=exif)
    (tmp_path / "a.png").write_bytes(png.getvalue())
    assert read_image(tmp_path / "a.png").pixels.shape == (80, 40)


def test_reduced_jpeg_decode_keeps_min_side(tmp_path):
    cv2.imwrite(str(tmp_path / "big.jpg"), cv2.resize(gradient(), (1024, 768)))
    out = read_image(tmp_path / "big.jpg", reduce_to=180)
    assert out.pixels.shape == (192, 256) and (out.orig_height, out.orig_width) == (768, 1024)


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    raw = gradient(64, 64).astype(np.uint16) * 16
    plain = read_image(write_dicom(tmp_path / "m2.dcm", raw)).pixels
    inverted = read_image(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1")).pixels
    assert np.array_equal(inverted, 255 - plain)
    windowed = read_image(write_dicom(tmp_path / "w.dcm", raw, window=(2000, 1000))).pixels
    assert (windowed == 0).mean() > 0.3 and (windowed == 255).mean() > 0.2  # values outside the window clip
    assert np.corrcoef(plain.ravel(), raw.ravel())[0, 1] > 0.999


BAD_INPUTS = [
    ("missing.png", lambda p: None, "file not found"),
    ("empty.png", lambda p: p.write_bytes(b""), "empty file"),
    ("text.png", lambda p: p.write_text("hello"), "not an image"),
    ("tiny.png", lambda p: cv2.imwrite(str(p), np.zeros((1, 1), np.uint8)), "too small"),
    ("bomb.png", lambda p: png_header_only(p, 20000, 20000), "too large"),
    ("cut.jpg", lambda p: p.write_bytes(cv2.imencode(".jpg", gradient(256, 256))[1].tobytes()[:900]), "truncated"),
    ("cut.png", lambda p: p.write_bytes(cv2.imencode(".png", gradient(256, 256))[1].tobytes()[:300]), "truncated"),
    ("nopix.dcm", lambda p: write_dicom(p, np.zeros((8, 8)), with_pixels=False), "no pixel data"),
    ("fake.dcm", lambda p: p.write_text("not dicom"), "not a readable DICOM"),
]


@pytest.mark.parametrize("name, make, reason", BAD_INPUTS)
def test_bad_input_names_file_and_reason(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(InvalidImageError) as info:
        read_image(path)
    assert info.value.path == str(path) and reason in info.value.reason
    assert str(info.value).startswith(str(path))


def test_directory_is_refused(tmp_path):
    with pytest.raises(InvalidImageError, match="is a directory"):
        read_image(tmp_path)


def test_read_mask_resizes_nearest(tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    out = read_mask(tmp_path / "m.png", (40, 40))
    assert out.dtype == bool and out.sum() == 400


@pytest.mark.parametrize("name, make, reason", [case for case in BAD_INPUTS if case[0] != "missing.png"])
def test_bytes_in_memory_decode_like_files(tmp_path, name, make, reason):
    path = tmp_path / name  # an upload: the same checks, errors named after the upload
    make(path)
    with pytest.raises(InvalidImageError) as info:
        decode_image(path.read_bytes(), f"upload:{name}")
    assert info.value.path == f"upload:{name}" and reason in info.value.reason
    good = write_dicom(tmp_path / "good.dcm", gradient(64, 64).astype(np.uint16) * 16)
    assert np.array_equal(decode_image(good.read_bytes(), "x.dcm").pixels, read_image(good).pixels)


def test_hostile_content_and_entries_that_are_not_files_give_one_line_reasons(tmp_path):
    cases = {**write_hostile_images(tmp_path), **write_hostile_files(tmp_path)}
    for name, reason in cases.items():
        with pytest.raises(InvalidImageError) as info:
            read_image(tmp_path / name)
        assert reason in info.value.reason and "\n" not in str(info.value), (name, info.value.reason)
    for name in write_hostile_images(tmp_path / "bytes"):  # the same verdict on bytes (an upload)
        with pytest.raises(InvalidImageError, match="|".join(["too large", "Window", "Rescale", "truncated", "NaN"])):
            decode_image((tmp_path / "bytes" / name).read_bytes(), name)


def test_jpeg_decoding_keeps_exif_orientation_reduced_decoding_and_stray_bytes(tmp_path):
    image = Image.fromarray(gradient(40, 80))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(tmp_path / f"o{orientation}.jpg", exif=exif, quality=100)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / f"o{orientation}.jpg")).convert("L"))
        np.testing.assert_array_equal(read_image(tmp_path / f"o{orientation}.jpg").pixels, expected)
    buf = cv2.imencode(".jpg", gradient(256, 256))[1].tobytes()
    sos = buf.index(b"\xff\xda")  # stray bytes before the scan: libjpeg warns, the pixels are whole
    (tmp_path / "stray.jpg").write_bytes(buf[:sos] + b"\x00\x00" + buf[sos:])
    whole = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(read_image(tmp_path / "stray.jpg").pixels, whole)
    revised = bytearray(buf)  # a JFIF version libjpeg does not know: it warns, the pixels are whole
    revised[revised.index(b"JFIF\x00") + 5] = 2
    (tmp_path / "jfif2.jpg").write_bytes(bytes(revised))
    np.testing.assert_array_equal(read_image(tmp_path / "jfif2.jpg").pixels, whole)
    cmyk = Image.fromarray(np.stack([gradient(64, 64)] * 3, axis=2)).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg")  # libjpeg-turbo cannot make grey from CMYK: Pillow does
    assert read_image(tmp_path / "cmyk.jpg").pixels.shape == (64, 64)


def test_the_same_radiograph_decodes_alike_at_any_depth_whatever_a_few_extreme_pixels_hold(tmp_path, phantoms):
    """8-bit PNG, 16-bit PNG with one saturated pixel, a float TIFF with a 3e38 sentinel and a DICOM
    of the same radiograph decode to nearly the same grey levels, and a trained model scores them
    within 0.02 of each other (the issue's bar). A min-max scale squeezed the 16-bit one into 0-14."""
    import cv2
    from PIL import Image

    from cxrlab.data.images import read_image
    from tests.conftest import write_dicom

    source = sorted((phantoms.parent / "images").iterdir())[0]
    eight = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(tmp_path / "8.png"), eight)
    deep = eight.astype(np.uint16) * 15 + 100  # 12-bit values in a 16-bit file
    saturated = deep.copy()
    saturated[0, 0] = 65535  # one hot pixel
    cv2.imwrite(str(tmp_path / "16.png"), saturated)
    sentinel = deep.astype(np.float32)
    sentinel[-1, -1] = 3e38
    Image.fromarray(sentinel, mode="F").save(tmp_path / "float.tif")
    write_dicom(tmp_path / "dicom.dcm", np.where(saturated > 4095, 4095, saturated))  # 12 bits stored: saturated at 4095
    decoded = {name: read_image(tmp_path / name).pixels for name in ("8.png", "16.png", "float.tif", "dicom.dcm")}
    interior = (slice(1, -1), slice(1, -1))  # the extreme pixels themselves are clipped
    for name, pixels in decoded.items():
        assert np.abs(pixels[interior].astype(int) - eight[interior]).mean() <= 3, name
        assert pixels.max() - pixels.min() >= 200, name  # the full grey range, not a sliver of it


def test_a_trained_model_scores_the_same_radiograph_alike_at_any_depth(tmp_path, phantoms, run_dir):
    import cv2

    from cxrlab.models.predictor import Predictor
    from tests.conftest import write_dicom

    predictor = Predictor(run_dir)
    for k, source in enumerate(sorted((phantoms.parent / "images").iterdir())[:3]):
        eight = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
        saturated = eight.astype(np.uint16) * 15 + 100
        saturated[0, 0] = 65535
        cv2.imwrite(str(tmp_path / f"{k}-8.png"), eight)
        cv2.imwrite(str(tmp_path / f"{k}-16.png"), saturated)
        write_dicom(tmp_path / f"{k}.dcm", np.where(saturated > 4095, 4095, saturated))
        probs = [np.array(list(predictor.predict_file(tmp_path / name).probabilities.values()))
                 for name in (f"{k}-8.png", f"{k}-16.png", f"{k}.dcm")]
        assert max(np.abs(p - probs[0]).max() for p in probs) <= 0.02, (source.name, probs)
