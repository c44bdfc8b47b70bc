"""How batches reach the model: DataLoader workers, pinned memory and prefetch, chosen by device."""

from __future__ import annotations

from cxrlab.core.runtime import default_workers
from cxrlab.train.config import TrainConfig

MAX_GPU_WORKERS = 8  # loader processes per GPU: enough to keep one fed on decoded, prepared shards


def loading(config: TrainConfig, device_type: str = "cpu") -> dict:
    """DataLoader settings by device: ``num_workers`` (``auto``: 0 on the CPU, whose cores also
    compute; up to :data:`MAX_GPU_WORKERS` per GPU process), pinned memory and prefetch feeding a GPU."""
    workers = config.runtime.num_workers
    gpu = device_type == "cuda"
    if workers == "auto":
        per_process = default_workers() // max(config.runtime.devices, 1)
        workers = min(MAX_GPU_WORKERS, max(per_process - 1, 0)) if gpu else 0
    settings = {"num_workers": workers, "pin_memory": gpu, "persistent_workers": workers > 0}
    return {**settings, "prefetch_factor": 4} if workers and gpu else settings
