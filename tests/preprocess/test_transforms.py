from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxrlab.core import ConfigError, InvalidImageError
from cxrlab.preprocess import (
    Clahe,
    LungCrop,
    PreprocessConfig,
    Preprocessor,
    Resize,
    build_transforms,
    create_transform,
    list_transforms,
    to_model_input,
)
from tests.conftest import gradient


def test_clahe_matches_opencv_reference():
    img = gradient(128, 128)
    ref = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(img)
    out, _ = Clahe(3.0, 4)(img)
    assert np.array_equal(out, ref)


def test_letterbox_keeps_aspect_and_pads_black():
    img = np.full((50, 100), 200, np.uint8)
    mask = np.ones((50, 100), bool)
    out, new_mask = Resize(64, "letterbox")(img, mask)
    assert out.shape == (64, 64) and new_mask.shape == (64, 64)
    assert (out[:16] == 0).all() and (out[48:] == 0).all() and (out[16:48] == 200).all()
    assert new_mask[16:48].all() and not new_mask[:16].any()
    stretched, _ = Resize(64, "stretch")(img)
    assert (stretched == 200).all()


def test_lung_crop_uses_mask_box_with_margin():
    img = gradient(100, 100)
    mask = np.zeros((100, 100), bool)
    mask[20:60, 30:70] = True
    out, out_mask = LungCrop(margin=0.1)(img, mask)
    assert out.shape == (48, 48) and out_mask.sum() == 1600
    same, _ = LungCrop()(img, None)
    assert same is img


def test_model_input_replicates_and_normalises():
    x = to_model_input(np.full((4, 4), 255, np.uint8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert x.shape == (3, 4, 4) and x.dtype == np.float32 and np.allclose(x, 2.0)
    with pytest.raises(ConfigError):
        to_model_input(np.zeros((4, 4), np.float32), (0.5,), (0.5,))


def test_registry():
    assert {"clahe", "equalize", "lung_crop", "resize"} <= set(list_transforms())
    assert isinstance(create_transform("clahe", clip_limit=1.0), Clahe)
    with pytest.raises(ConfigError, match="valid: clahe"):
        create_transform("sharpen")


def test_config_validation_and_roundtrip():
    config = PreprocessConfig(size=256, contrast="clahe")
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="preprocess.size"):
        PreprocessConfig(size=3)
    with pytest.raises(ConfigError, match="unknown setting"):
        PreprocessConfig.from_dict({"sizes": 3})


def test_contrast_order_follows_config():
    assert [type(t).__name__ for t in build_transforms(PreprocessConfig(size=224)).transforms] == ["Clahe", "Resize"]
    fast = PreprocessConfig(size=224, contrast="equalize", contrast_at="target", lung_crop=True)
    assert [type(t).__name__ for t in build_transforms(fast).transforms] == ["LungCrop", "Resize", "Equalize"]
    with pytest.raises(ConfigError, match="preprocess.size: not set"):  # the backbone's size is resolved first
        build_transforms(PreprocessConfig())
    assert PreprocessConfig().resolved(240).size == 240 and PreprocessConfig(size=96).resolved(240).size == 96


def test_preprocessor_end_to_end_and_bad_mask(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), gradient(300, 200))
    out = Preprocessor(PreprocessConfig(size=64, contrast="clahe"))(tmp_path / "a.png")
    assert out.pixels.shape == (64, 64) and (out.orig_height, out.orig_width) == (300, 200)
    (tmp_path / "bad_mask.png").write_bytes(b"")
    with pytest.raises(InvalidImageError, match="lung mask is unusable"):
        Preprocessor(PreprocessConfig(size=64, lung_crop=True))(tmp_path / "a.png", tmp_path / "bad_mask.png")
