"""Preprocessing: transforms (CLAHE, equalise, resize, lung crop, normalise) and the ETL engines."""

from __future__ import annotations

from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.preprocess.dataset import ShardAwareSampler, ShardDataset
from cxrlab.preprocess.etl import PrepareSummary, ShardTask, plan_shards, prepare, run_shard
from cxrlab.preprocess.pipeline import Preprocessor, ProcessedImage, build_transforms
from cxrlab.preprocess.shards import ShardReader, read_shard_info, write_shard
from cxrlab.preprocess.transforms import (
    Clahe,
    Compose,
    Equalize,
    LungCrop,
    Resize,
    create_transform,
    list_transforms,
    register_transform,
    to_model_input,
)

__all__ = [
    "Clahe", "Compose", "Equalize", "LungCrop", "PrepareSummary", "PreprocessConfig", "Preprocessor",
    "ProcessedImage", "Resize", "ShardAwareSampler", "ShardDataset", "ShardReader", "ShardTask", "build_transforms", "create_transform",
    "list_transforms", "plan_shards", "prepare", "read_shard_info", "register_transform",
    "run_shard", "to_model_input", "write_shard",
]
