"""ONNX export: onnxruntime gives PyTorch's probabilities within 1e-4, for any batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.core.errors import ConfigError
from cxrlab.models import create_classifier, save_model
from cxrlab.models.onnx_export import OnnxClassifier, onnx_difference
from cxrlab.preprocess import PreprocessConfig


def test_export_command_gives_pytorchs_probabilities_for_any_batch_size_with_the_metadata(tmp_path):
    model = create_classifier("efficientnet_lite0", 3, fine_tune=1, class_names=("COVID-19", "Pneumonia", "Normal"),
                              seed=0, lung_attention=True)  # the harder case: a lung-mask channel after the image
    config = PreprocessConfig(size=64, keep_mask=True)
    save_model(model, tmp_path / "model.pt", config)
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "largest probability difference" in result.output
    runner = OnnxClassifier(tmp_path / "m.onnx")
    assert runner.class_names == model.class_names and runner.lung_attention and runner.preprocess == config
    for batch in (1, 5):
        x = torch.randn(batch, 4, 64, 64, generator=torch.Generator().manual_seed(batch))
        x[:, -1] = (x[:, -1] > 0).float()  # the lung-mask channel
        with torch.no_grad():
            expected = model.eval()(x).softmax(1).numpy()
        np.testing.assert_allclose(runner.probabilities(x.numpy()), expected, atol=1e-4)
    model.head.fc.bias.data[0] += 1.0  # the export no longer matches this model: the check says so
    with pytest.raises(ConfigError, match="differ from PyTorch"):
        onnx_difference(model, tmp_path / "m.onnx")


def test_bad_files_fail_clearly(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a loadable ONNX model"):
        OnnxClassifier(tmp_path / "junk.onnx")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "missing"), "--onnx", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "no model found" in result.output


def test_the_parity_check_runs_on_real_images_prepared_as_predict_prepares_them(phantoms, tmp_path):
    model = create_classifier("efficientnet_lite0", 3, pretrained="none", class_names=("COVID-19", "Pneumonia", "Normal"))
    save_model(model, tmp_path / "model.pt", PreprocessConfig(size=64))
    images = [str(p) for p in sorted((phantoms.parent / "images").glob("*.png"))[:2]]
    args = ["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx"), *(a for i in images for a in ("--image", i))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "on 2 image(s)" in result.output
