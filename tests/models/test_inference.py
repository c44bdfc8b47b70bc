from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlab.core import ConfigError
from cxrlab.models import InferenceModel, create_classifier, load_model, save_model
from cxrlab.preprocess import PreprocessConfig


@pytest.fixture(scope="module")
def model():
    return create_classifier("efficientnet_lite0", 3, fine_tune=2, class_names=("COVID-19", "Pneumonia", "Normal"), seed=0).eval()


def test_fp32_inference_equals_the_model_and_bf16_stays_close(model):
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).softmax(1)
    fp32 = InferenceModel(model, "fp32")
    probs = fp32.probabilities(x)
    assert torch.allclose(probs, expected, atol=1e-5) and torch.allclose(probs.sum(1), torch.ones(4))
    assert fp32.class_names == ("COVID-19", "Pneumonia", "Normal")
    bf16 = InferenceModel(model, "bf16").probabilities(x)
    assert (bf16 - expected).abs().max() < 0.1


@pytest.mark.slow
def test_compiled_inference_matches_eager(model):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    eager = InferenceModel(model, "fp32").probabilities(x)
    compiled = InferenceModel(model, "fp32", compile=True).probabilities(x)
    assert torch.allclose(eager, compiled, atol=1e-4)


def test_model_file_roundtrip(model, tmp_path):
    preprocess = PreprocessConfig(size=64, contrast="clahe")
    save_model(model, tmp_path / "m.pt", preprocess)
    loaded, pre, payload = load_model(tmp_path / "m.pt")
    assert pre == preprocess and loaded.class_names == model.class_names and loaded.fine_tune == 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)  # same weights (model may be channels-last)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot read model file|not a cxrlab model file|not a readable model file"):
        load_model(tmp_path / "bad.pt")


class _Payload:
    """What a hostile model file can pickle: unpickling calls ``touch(marker)``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_model_file_that_would_run_code_is_refused_without_running_it(model, tmp_path):
    save_model(model, tmp_path / "m.pt", PreprocessConfig(size=64), {"note": np.float64(0.5), "a": np.ones(3)})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # plain data: numpy values were converted
    assert payload["extra"]["note"] == 0.5 and torch.equal(payload["extra"]["a"], torch.ones(3, dtype=torch.float64))
    marker = tmp_path / "code-ran"
    torch.save({**payload, "extra": {"x": _Payload(marker)}}, tmp_path / "tampered.pt")
    with pytest.raises(ConfigError, match="refused: the file holds Python objects") as info:
        load_model(tmp_path / "tampered.pt")
    assert "\n" not in str(info.value) and not marker.exists()


def test_input_sanity_warnings(model):
    runner = InferenceModel(model, "fp32")
    good = (torch.rand(2, 3, 32, 32) - 0.5) / 0.5  # lite0's mean/std are 0.5
    assert runner.check_input(good) is None
    assert "outside the normalised range" in runner.check_input(torch.rand(2, 3, 32, 32) * 255)
    assert "constant" in runner.check_input(torch.zeros(2, 3, 32, 32))
