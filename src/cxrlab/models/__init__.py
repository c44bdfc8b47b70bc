"""Models: backbone registry on timm, block partitions, heads, fine-tuning depth, weights."""

from __future__ import annotations

from cxrlab.models.classifier import CxrClassifier
from cxrlab.models.ensemble import EnsembleClassifier
from cxrlab.models.factory import create_backbone, create_classifier
from cxrlab.models.checkpoint import load_model, save_model
from cxrlab.core.device import cpu_supports_bf16
from cxrlab.models.inference import InferenceModel
from cxrlab.models.heads import HEAD_PRESETS, ClassifierHead, HeadSpec, get_head_spec
from cxrlab.models.registry import BackboneSpec, get_backbone_spec, list_backbones, register_backbone
from cxrlab.models.weights import WeightsUnavailableError, load_pretrained, map_state_dict, offline_weights_path

__all__ = [
    "HEAD_PRESETS", "BackboneSpec", "ClassifierHead", "CxrClassifier", "EnsembleClassifier", "HeadSpec", "InferenceModel", "WeightsUnavailableError",
    "create_backbone", "create_classifier", "get_backbone_spec", "get_head_spec", "list_backbones",
    "cpu_supports_bf16", "load_model", "load_pretrained", "map_state_dict", "save_model", "offline_weights_path", "register_backbone",
]
