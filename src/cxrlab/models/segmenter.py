"""Lung segmentation: a U-Net (segmentation-models-pytorch) whose encoder is a registry backbone
with its offline pretrained weights, and self-contained segmenter files.

The encoder is timm's feature extractor of the backbone (``tu-<timm name>``); its tensors are a
subset of the classifier backbone's, so the same offline weights fill it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

import cxrlab
from cxrlab.core.run_folder import SEGMENTER
from cxrlab.core.errors import ConfigError
from cxrlab.models.checkpoint import read_payload, write_payload
from cxrlab.models.factory import create_backbone
from cxrlab.models.registry import BackboneSpec, get_backbone_spec
from cxrlab.models.weights import WeightsUnavailableError, load_pretrained
from cxrlab.preprocess import Preprocessor
from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.preprocess.masks import clean_lung_mask
from cxrlab.preprocess.transforms import to_model_input

FORMAT = "cxrlab-segmenter/1"
DECODER_CHANNELS = (128, 64, 32, 16, 8)  # half smp's default: lungs are large, smooth shapes; twice as fast on a CPU


def create_segmenter(backbone: str = "efficientnet_lite0", *, pretrained: str = "imagenet",
                     weights: str | Path | None = None, allow_download: bool = False,
                     decoder_channels: tuple[int, ...] = DECODER_CHANNELS) -> smp.Unet:
    """A one-class U-Net (logits) on ``backbone``'s feature pyramid.

    Args:
        backbone: Registry name (``cxrlab backbones``).
        pretrained: ``imagenet`` (offline package, ``weights`` or download) or ``none``.
        weights: Checkpoint file or folder for the encoder.
        allow_download: Let timm download weights when no offline source exists.

    Raises:
        ConfigError: the backbone has no feature pyramid in timm.
        WeightsUnavailableError: pretrained weights were asked for and none are available offline.
    """
    spec = get_backbone_spec(backbone)
    try:
        net = smp.Unet(encoder_name=f"tu-{spec.timm_name}", encoder_weights=None, in_channels=spec.in_chans,
                       classes=1, decoder_channels=tuple(decoder_channels))
    except (RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(f"{backbone}: cannot build a U-Net encoder from it ({err})") from err
    _match_batchnorm(net.encoder, spec)
    net.weights_origin = "random"
    if pretrained == "imagenet" or weights is not None:
        full = create_backbone(spec)
        origin = load_pretrained(full, spec, weights, allow_download)
        missing, _ = net.encoder.model.load_state_dict(full.state_dict(), strict=False)  # no head tensors needed
        if missing:
            raise WeightsUnavailableError(f"{origin}: lacks encoder tensors {missing[:3]} of {backbone}")
        net.weights_origin = origin
    return net


def _match_batchnorm(module: nn.Module, spec: BackboneSpec) -> None:
    if spec.bn_eps is not None:  # weights trained in TensorFlow expect its BatchNorm epsilon
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = spec.bn_eps


def save_segmenter(net: smp.Unet, path: str | Path, backbone: str, preprocess: PreprocessConfig,
                   extra: dict | None = None) -> Path:
    """Write the segmenter with its backbone name and preprocessing (atomically)."""
    payload = {"format": FORMAT, "cxrlab_version": cxrlab.__version__, "backbone": backbone,
               "decoder_channels": [b.conv1[0].out_channels for b in net.decoder.blocks], "preprocess": preprocess.to_dict(),
               "state_dict": net.state_dict(), "extra": extra or {}}
    return write_payload(payload, path)


def load_segmenter(path: str | Path) -> tuple[smp.Unet, PreprocessConfig, dict]:
    """Load a file written by :func:`save_segmenter` (eval mode, no weights packages needed).

    Raises:
        ConfigError: not a cxrlab segmenter file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SEGMENTER
    payload = read_payload(path, FORMAT, "segmenter")
    net = create_segmenter(payload["backbone"], pretrained="none", decoder_channels=tuple(payload["decoder_channels"]))
    net.load_state_dict(payload["state_dict"])
    return net.eval(), PreprocessConfig.from_dict(payload["preprocess"]), payload


@torch.inference_mode()
def predict_probabilities(net: torch.nn.Module, images: np.ndarray, spec, batch_size: int = 16) -> np.ndarray:
    """``(N, S, S)`` lung probabilities of preprocessed ``(N, S, S) uint8`` images."""
    net.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([to_model_input(im, spec.mean, spec.std, spec.in_chans)
                                       for im in images[i:i + batch_size]]))
        out.append(net(x.contiguous(memory_format=torch.channels_last)).sigmoid()[:, 0].float().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.float32)


def lung_mask_from_probability(probability: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(height, width) bool`` cleaned lung mask from a segmenter's ``(S, S)`` probabilities (stretched back)."""
    return clean_lung_mask(cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR) > 0.5)


class LungSegmenter:
    """A trained segmenter file as a function: decoded image → lung mask on the image's own grid.

    What screening needs for a model that crops to, inpaints around or attends to the lungs.
    """

    def __init__(self, path: str | Path) -> None:
        self.net, preprocess, payload = load_segmenter(path)
        self.spec = get_backbone_spec(payload["backbone"])
        self.preprocessor = Preprocessor(preprocess)

    def __call__(self, decoded) -> np.ndarray:
        """``(H, W) bool`` mask of a :class:`cxrlab.data.images.DecodedImage`."""
        pixels = self.preprocessor.process(decoded, "image").pixels
        probability = predict_probabilities(self.net, pixels[None], self.spec)[0]
        return lung_mask_from_probability(probability, *decoded.pixels.shape)
