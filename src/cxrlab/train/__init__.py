"""Training: config, Lightning module, callbacks, frozen-prefix cache, runner."""

from __future__ import annotations

from cxrlab.train.config import (
    AugmentConfig,
    HeadConfig,
    PhaseConfig,
    TrainConfig,
    build_config,
    load_config,
)
from cxrlab.train.module import ClassifierModule, NonFiniteLossError
from cxrlab.train.prefix_cache import ActivationDataset, can_cache, compute_prefix
from cxrlab.train.runner import TrainResult, add_screening_reference, train

__all__ = [
    "ActivationDataset", "AugmentConfig", "ClassifierModule", "HeadConfig", "NonFiniteLossError", "PhaseConfig",
    "TrainConfig", "TrainResult", "add_screening_reference", "build_config", "can_cache",
    "compute_prefix", "load_config", "train",
]
