"""ONNX export of a classifier and an onnxruntime runner for it (the same probabilities within 1e-4).

The file carries what prediction needs beside the graph, as ONNX metadata: class names, the
normalisation, the preprocessing config and whether a lung-mask channel follows the image.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_bytes
from cxrlab.models.classifier import CxrClassifier
from cxrlab.preprocess.config import PreprocessConfig

log = logging.getLogger(__name__)
INPUT, OUTPUT = "image", "probabilities"


class _Probabilities(torch.nn.Module):
    def __init__(self, model: CxrClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(self.model(image))


def input_channels(model: CxrClassifier) -> int:
    """Channels of the model's input: the backbone's, plus a lung-mask channel for lung attention."""
    return model.spec.in_chans + int(model.lung_attention)


def export_onnx(model: CxrClassifier, path: str | Path, preprocess: PreprocessConfig) -> Path:
    """Write ``model`` (eval mode; probabilities out; any batch size) as an ONNX file, atomically.

    Raises:
        ConfigError: the exporter failed (the message names the cause).
    """
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, input_channels(model), preprocess.size, preprocess.size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.onnx"
        try:
            program = torch.onnx.export(_Probabilities(model).eval(), (example,), dynamo=True, input_names=[INPUT],
                                        output_names=[OUTPUT], dynamic_shapes={"image": {0: batch}},
                                        external_data=False, verbose=False)
            program.save(str(target), external_data=False)
        except Exception as err:  # noqa: BLE001 -- the exporter raises many types; one clear message
            raise ConfigError(f"ONNX export of {model.spec.name} failed: {type(err).__name__}: {err}") from err
        import onnx

        proto = onnx.load(str(target))
    metadata = {"cxrlab.class_names": json.dumps(list(model.class_names)), "cxrlab.mean": json.dumps(list(model.spec.mean)),
                "cxrlab.std": json.dumps(list(model.spec.std)), "cxrlab.in_chans": str(model.spec.in_chans),
                "cxrlab.lung_attention": json.dumps(bool(model.lung_attention)),
                "cxrlab.preprocess": json.dumps(preprocess.to_dict()), "cxrlab.backbone": model.spec.name}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(path, proto.SerializeToString())
    return Path(path)


class OnnxClassifier:
    """An exported classifier under onnxruntime (CPU by default).

    Attributes:
        class_names: Column order of :meth:`probabilities`.
        preprocess: The preprocessing the model expects.
        mean, std, in_chans: Normalisation for :func:`cxrlab.preprocess.transforms.to_model_input`.
    """

    def __init__(self, path: str | Path, threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as err:  # noqa: BLE001 -- onnxruntime raises its own exception types
            raise ConfigError(f"{path}: not a loadable ONNX model ({err})") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if "cxrlab.class_names" not in meta:
            raise ConfigError(f"{path}: not a cxrlab ONNX export (no cxrlab metadata)")
        self.class_names = tuple(json.loads(meta["cxrlab.class_names"]))
        self.mean, self.std = tuple(json.loads(meta["cxrlab.mean"])), tuple(json.loads(meta["cxrlab.std"]))
        self.in_chans, self.lung_attention = int(meta["cxrlab.in_chans"]), json.loads(meta["cxrlab.lung_attention"])
        self.preprocess = PreprocessConfig.from_dict(json.loads(meta["cxrlab.preprocess"]))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """``(B, C)`` probabilities of a ``(B, channels, S, S) float32`` normalised batch."""
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, np.float32)})[0]


def onnx_difference(model: CxrClassifier, path: str | Path, images: int = 4, seed: int = 0,
                    inputs: torch.Tensor | None = None) -> float:
    """Largest absolute difference between PyTorch's and onnxruntime's probabilities on ``inputs`` (real
    images as :class:`cxrlab.models.predictor.Predictor` prepares them), else on ``images`` random inputs.

    Raises:
        ConfigError: above 1e-4 (the export is not faithful).
    """
    runner = OnnxClassifier(path)
    if inputs is None:
        generator = torch.Generator().manual_seed(seed)
        size = runner.preprocess.size
        inputs = torch.randn(images, input_channels(model), size, size, generator=generator)
        if model.lung_attention:
            inputs[:, -1] = (inputs[:, -1] > 0).float()  # a mask channel holds 0/1
    x = inputs.float()
    with torch.no_grad():
        expected = model.probabilities(model.eval()(x)).numpy()
    difference = float(np.abs(runner.probabilities(x.numpy()) - expected).max())
    if difference > 1e-4:
        raise ConfigError(f"{path}: onnxruntime's probabilities differ from PyTorch's by {difference:.2e} (> 1e-4)")
    return difference
