"""Self-contained model files: weights plus everything needed to predict with them."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

import cxrlab
from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_bytes
from cxrlab.models.classifier import CxrClassifier
from cxrlab.models.factory import create_classifier
from cxrlab.models.heads import HeadSpec
from cxrlab.preprocess.config import PreprocessConfig

FORMAT = "cxrlab-model/1"


def save_model(model: CxrClassifier, path: str | Path, preprocess: PreprocessConfig, extra: dict | None = None) -> Path:
    """Write ``model`` with its backbone name, head, fine-tuning degree, classes and preprocessing.

    The file is written atomically; a crash never leaves a half-written model.
    """
    payload = {
        "format": FORMAT, "cxrlab_version": cxrlab.__version__, "backbone": model.spec.name,
        "head": model.head_spec.to_dict(), "fine_tune": model.fine_tune, "class_names": list(model.class_names),
        "lung_attention": model.lung_attention,
        "num_classes": model.head.fc.out_features, "mean": list(model.spec.mean), "std": list(model.spec.std),
        "preprocess": preprocess.to_dict(), "state_dict": model.state_dict(), "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def read_payload(path: str | Path, expected: str, kind: str) -> dict:
    """The dict a cxrlab model file holds, checked for its ``format``.

    Raises:
        ConfigError: unreadable, or not a cxrlab ``kind`` file.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise ConfigError(f"{path}: cannot read {kind} file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != expected:
        raise ConfigError(f"{path}: not a cxrlab {kind} file (expected format {expected})")
    return payload


def load_model(path: str | Path) -> tuple[CxrClassifier, PreprocessConfig, dict]:
    """Load a model file written by :func:`save_model`, or a run folder's ``model.pt`` (no network, no
    weights packages needed).

    Returns:
        ``(model in eval mode, preprocessing config, the whole payload)``.

    Raises:
        ConfigError: not a cxrlab model file.
    """
    path = Path(path)
    payload = read_payload(path / "model.pt" if path.is_dir() else path, FORMAT, "model")
    head = HeadSpec(tuple(payload["head"]["hidden"]), tuple(payload["head"]["dropout"]), payload["head"]["activation"])
    model = create_classifier(payload["backbone"], payload["num_classes"], head=head, pretrained="none",
                              fine_tune=payload["fine_tune"], class_names=tuple(payload["class_names"]),
                              lung_attention=bool(payload.get("lung_attention", False)))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, PreprocessConfig.from_dict(payload["preprocess"]), payload
