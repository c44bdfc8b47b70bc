"""Self-contained model files: weights plus everything needed to predict with them.

A model file is data, not code: it holds only tensors and plain values (dicts, lists, strings,
numbers) and is read with ``torch.load(weights_only=True)``, so opening a file someone sent you
cannot run anything; a file that needs more (a pickled class, a function) is refused.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import torch

import cxrlab
from cxrlab.core.run_folder import MODEL, fold_folder, model_file
from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_bytes
from cxrlab.models.classifier import CxrClassifier
from cxrlab.models.ensemble import EnsembleClassifier
from cxrlab.models.factory import create_classifier
from cxrlab.models.heads import HeadSpec
from cxrlab.preprocess.config import PreprocessConfig

FORMAT = "cxrlab-model/1"


def save_model(model: CxrClassifier | EnsembleClassifier, path: str | Path, preprocess: PreprocessConfig,
               extra: dict | None = None) -> Path:
    """Write ``model`` with its backbone name, head, fine-tuning degree, classes and preprocessing; an
    ensemble as its members' weights (``members``) with the same description.

    The file is written atomically; a crash never leaves a half-written model.
    """
    members = list(model.members) if isinstance(model, EnsembleClassifier) else [model]
    first = members[0]
    payload = {
        "format": FORMAT, "cxrlab_version": cxrlab.__version__, "backbone": first.spec.name,
        "head": first.head_spec.to_dict(), "fine_tune": first.fine_tune, "class_names": list(first.class_names),
        "lung_attention": first.lung_attention, "multilabel": first.multilabel,
        "num_classes": first.head.fc.out_features, "mean": list(first.spec.mean), "std": list(first.spec.std),
        "preprocess": preprocess.to_dict(), "extra": extra or {},
    }
    if isinstance(model, EnsembleClassifier):
        payload["members"] = [_on_host(m) for m in members]
        payload["tta"] = model.tta
    else:
        payload["state_dict"] = _on_host(model)
    return write_payload(payload, path)


def _on_host(model: CxrClassifier) -> dict[str, torch.Tensor]:
    """The weights as CPU tensors (a model trained or scored on a GPU is saved from the host)."""
    return {name: value.detach().cpu() for name, value in model.state_dict().items()}


def plain_data(obj):
    """``obj`` with NumPy arrays as tensors, NumPy scalars as Python numbers, paths as strings and tuples as
    lists: what ``torch.load(weights_only=True)`` reads back without any allow-list.

    Raises:
        ConfigError: a value of another type (it would make the file need code to load).
    """
    if isinstance(obj, dict):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    raise ConfigError(f"model file: cannot store a {type(obj).__name__} (only tensors and plain data)")


def write_payload(payload: dict, path: str | Path) -> Path:
    """Write a model or segmenter payload as plain data (:func:`plain_data`), atomically: a crash never
    leaves a half-written file."""
    buffer = io.BytesIO()
    torch.save(plain_data(payload), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def read_payload(path: str | Path, expected: str, kind: str) -> dict:
    """The dict a cxrlab model file holds, checked for its ``format``; read as data only
    (``weights_only=True``: no code in the file runs).

    Raises:
        ConfigError: unreadable; holding objects other than tensors and plain data (refused: loading
            them would run code); or not a cxrlab ``kind`` file.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # not a pickle at all, or a damaged one
            found = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", " ".join(str(err).split()))
            detail = found.group(1).strip().rstrip(".") if found else " ".join(str(err).split())[:120]
            raise ConfigError(f"{path}: not a readable {kind} file (damaged, or not a {kind} file: {detail})") from err
        raise ConfigError(f"{path}: refused: the file holds Python objects beyond tensors and plain data, which "
                          f"could run code when loaded (cxrlab reads {kind} files as data only; retrain or re-save "
                          "it with this version of cxrlab if you trust where it came from)") from err
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read {kind} file ({' '.join(str(err).split())})") from err
    if not isinstance(payload, dict) or payload.get("format") != expected:
        raise ConfigError(f"{path}: not a cxrlab {kind} file (expected format {expected})")
    return payload


REQUIRED_KEYS = ("backbone", "head", "fine_tune", "class_names", "num_classes", "preprocess")


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding NaN or infinite values."""
    return [name for name, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]


def _checked_payload(path: Path, payload: dict) -> None:
    """Refuse a model file whose description cannot make a model: missing keys, classes that do not
    match the head, weights that are not finite (what a diverged run would have saved)."""
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if not ("state_dict" in payload or payload.get("members")):
        missing.append("state_dict")
    if missing:
        raise ConfigError(f"{path}: damaged model file: missing {', '.join(missing)}")
    head = payload["head"]
    if not isinstance(head, dict) or not {"hidden", "dropout", "activation"} <= set(head):
        raise ConfigError(f"{path}: damaged model file: its head description is incomplete")
    names, outputs = payload["class_names"], payload["num_classes"]
    if not isinstance(names, list) or not isinstance(outputs, int) or len(names) != outputs or outputs < 1:
        raise ConfigError(f"{path}: damaged model file: {len(names) if isinstance(names, list) else '?'} class "
                          f"name(s) for a head of {outputs} output(s)")
    states = payload.get("members") or [payload["state_dict"]]
    for k, state in enumerate(states):
        if not isinstance(state, dict):
            raise ConfigError(f"{path}: damaged model file: its weights are not a state dict")
        if bad := non_finite_tensors(state):
            member = f"member {k}: " if len(states) > 1 else ""
            raise ConfigError(f"{path}: {member}{len(bad)} weight tensor(s) hold NaN or infinite values (e.g. "
                              f"{bad[0]}; what a diverged training run saves): retrain, with a lower learning rate")


def load_model(path: str | Path) -> tuple[CxrClassifier | EnsembleClassifier, PreprocessConfig, dict]:
    """Load a model file written by :func:`save_model`, or a run folder's ``model.pt`` (no network, no
    weights packages needed); a fold ensemble comes back as an :class:`EnsembleClassifier`.

    Everything is checked before use, so that every door (``predict``, ``serve``, ``evaluate``, ...)
    refuses a bad file with one line instead of failing on its first image: the keys, the class
    names against the head's outputs, finite weights, a known backbone, weights that fit it, valid
    preprocessing.

    Returns:
        ``(model in eval mode, preprocessing config, the whole payload)``.

    Raises:
        ConfigError: not a cxrlab model file, or a damaged one (named, with what is wrong).
    """
    file = model_file(path)
    payload = read_payload(file, FORMAT, "model")
    _checked_payload(file, payload)
    try:
        preprocess = PreprocessConfig.from_dict(payload["preprocess"])
    except (ConfigError, ValueError, TypeError) as err:
        raise ConfigError(f"{file}: damaged model file: its preprocessing is invalid "
                          f"({' '.join(str(err).split())[:200]})") from err
    try:
        head = HeadSpec(tuple(payload["head"]["hidden"]), tuple(payload["head"]["dropout"]),
                        payload["head"]["activation"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{file}: damaged model file: its head description is invalid ({err})") from err
    members = []
    for state in payload.get("members") or [payload["state_dict"]]:
        try:
            member = create_classifier(payload["backbone"], payload["num_classes"], head=head, pretrained="none",
                                       fine_tune=payload["fine_tune"], class_names=tuple(payload["class_names"]),
                                       lung_attention=bool(payload.get("lung_attention", False)),
                                       multilabel=bool(payload.get("multilabel", False)))
        except (ConfigError, KeyError, TypeError, ValueError) as err:  # an unknown backbone, say
            raise ConfigError(f"{file}: cannot build its model ({' '.join(str(err).split())[:200]})") from err
        try:
            member.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            detail = " ".join(first[1].split())[:200] if len(first) > 1 else " ".join(first[0].split())[:200]
            raise ConfigError(f"{file}: damaged model file: its weights do not fit a {payload['backbone']} with "
                              f"{payload['num_classes']} output(s) ({detail})") from err
        members.append(member)
    model = EnsembleClassifier(members, payload.get("tta", "none")) if "members" in payload else members[0]
    model.eval()
    return model, preprocess, payload


def init_backbone_from(model: CxrClassifier, path: str | Path) -> str:
    """Load the backbone of a trained cxrlab model (a model file, or a run folder's ``model.pt``) into
    ``model``, whose head stays new: a model trained on one task (ChestX-ray14's findings, say)
    becomes the starting point of another (COVID-19 at fine-tuning degree k).

    Returns:
        Where the weights came from, for the run's summary.

    Raises:
        ConfigError: not a cxrlab model file, a fold ensemble (several backbones: name one member,
            ``RUN/folds/fold0/model.pt``), or another backbone than ``model``'s.
    """
    file = model_file(path)
    payload = read_payload(file, FORMAT, "model")
    if "members" in payload:
        raise ConfigError(f"{file}: a fold ensemble holds {len(payload['members'])} backbones; start from one of "
                          f"them ({fold_folder(file.parent, 0) / MODEL})")
    if payload["backbone"] != model.spec.name:
        raise ConfigError(f"{file}: trained with backbone {payload['backbone']}, not {model.spec.name}; set "
                          f"backbone: {payload['backbone']}")
    state = {k.removeprefix("backbone."): v for k, v in payload["state_dict"].items() if k.startswith("backbone.")}
    model.backbone.load_state_dict(state)
    return f"cxrlab model {file} ({payload['backbone']}, trained on {', '.join(payload['class_names'])})"
