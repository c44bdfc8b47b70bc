"""One device and precision policy for every command that runs a model.

``resolve_policy(device, precision)`` turns what a user asks (``--device auto|cpu|cuda|cuda:N|mps``,
``--precision auto|32|bf16|16``) and what the machine has (:class:`Capabilities`) into what
Lightning and the inference code use:

============  =====================================  ======================================
precision     on a GPU                               on the CPU
============  =====================================  ======================================
``32``        fp32 (``32-true``)                     fp32
``bf16``      bf16 autocast if the GPU has bf16       bf16 autocast (slow without native bf16)
              (Ampere or newer), else refused
``16``        fp16 autocast with loss scaling         refused (no fp16 autocast on CPUs)
``auto``      bf16 where the GPU has it, else fp32   bf16 where measured faster (training
                                                     ResNet/DenseNet, inference of any
                                                     backbone, on CPUs with native bf16), fp32
                                                     elsewhere
============  =====================================  ======================================

fp16 is used only when asked: it needs loss scaling and overflows where bf16 does not. The CPU
rule is measured (``bench/bench_train.py``): bf16 trained ResNet-50/DenseNet-121 faster on
AVX-512-bf16 and AMX CPUs but EfficientNet-Lite slower (depthwise convolutions), and ran every
inference faster. Commands default to ``32``, which gives the same numbers on every machine;
``auto`` is the fast choice.

A command sets the policy for the code below it with :func:`use_policy`; model-running code asks
:func:`current_policy`, so a ``--device`` given once reaches every model the command loads.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cxrlab.core.errors import ConfigError

DeviceRequest = str  # auto, cpu, cuda, cuda:N, mps
PrecisionRequest = Literal["auto", "32", "bf16", "16"]
Workload = Literal["train", "infer"]
PRECISIONS = ("auto", "32", "bf16", "16")
# backbones whose CPU training ran faster in bf16 on CPUs with native bf16 (bench/bench_train.py)
CPU_BF16_TRAINING = ("resnet", "densenet")


@dataclass(frozen=True)
class Capabilities:
    """What the machine offers (:meth:`detect`; tests pass made-up ones)."""

    cuda_devices: int = 0
    cuda_bf16: bool = False
    cuda_name: str = ""
    mps: bool = False
    cpu_bf16: bool = False

    @classmethod
    def detect(cls) -> Capabilities:
        import torch

        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return cls(cuda_devices=cuda, cuda_bf16=bool(cuda) and torch.cuda.is_bf16_supported(),
                   cuda_name=torch.cuda.get_device_name(0) if cuda else "",
                   mps=bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
                   cpu_bf16=cpu_supports_bf16())


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Policy:
    """Where and how a model runs.

    Attributes:
        device: A torch device string (``cpu``, ``cuda:0``, ``mps``).
        accelerator: Lightning's name for it (``cpu``, ``gpu``, ``mps``).
        precision: Lightning's precision (``32-true``, ``bf16-mixed``, ``16-mixed``).
        reason: Why, in a few words (logged and written to summaries).
    """

    device: str = "cpu"
    accelerator: str = "cpu"
    precision: str = "32-true"
    reason: str = "fp32 as asked"

    @property
    def autocast_dtype(self):
        """The autocast dtype (``None`` for fp32)."""
        import torch

        return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def to_dict(self) -> dict:
        return {"device": self.device, "precision": self.precision, "reason": self.reason}


def _device(request: DeviceRequest, caps: Capabilities) -> tuple[str, str]:
    request = (request or "auto").strip().lower()
    if request == "auto":
        if caps.cuda_devices:
            return "cuda:0", "gpu"
        return ("mps", "mps") if caps.mps else ("cpu", "cpu")
    if request == "cpu":
        return "cpu", "cpu"
    if request in ("cuda", "gpu") or request.startswith("cuda:"):
        index = int(request.split(":")[1]) if ":" in request else 0
        if index >= caps.cuda_devices:
            raise ConfigError(f"device: {request} asked for, but this machine has {caps.cuda_devices} CUDA device(s)"
                              + ("" if caps.cuda_devices else " (use --device cpu or auto)"))
        return f"cuda:{index}", "gpu"
    if request == "mps":
        if not caps.mps:
            raise ConfigError("device: mps asked for, but this machine has no Apple GPU (use cpu or auto)")
        return "mps", "mps"
    raise ConfigError(f"device: {request!r} is not one of auto, cpu, cuda, cuda:N, mps")


def resolve_policy(device: DeviceRequest = "auto", precision: PrecisionRequest = "32", *, workload: Workload = "infer",
                   backbone: str = "", capabilities: Capabilities | None = None) -> Policy:
    """The policy for a request on this machine (see the module docstring).

    Raises:
        ConfigError: a device the machine lacks, bf16 on a GPU without it, fp16 on the CPU, or an
            unknown value (named).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    caps = capabilities if capabilities is not None else Capabilities.detect()
    name, accelerator = _device(device, caps)
    gpu = accelerator == "gpu"
    if precision == "32":
        return Policy(name, accelerator, "32-true", "fp32 as asked")
    if precision == "16":
        if not gpu:
            raise ConfigError(f"precision: 16 (fp16 autocast) runs on CUDA GPUs only, not on {name}; use bf16 or 32")
        return Policy(name, accelerator, "16-mixed", "fp16 autocast as asked (with loss scaling)")
    if precision == "bf16":
        if gpu and not caps.cuda_bf16:
            raise ConfigError(f"precision: bf16 asked for, but {caps.cuda_name or 'this GPU'} has no bf16 "
                              "(use 16 for fp16 autocast, or 32)")
        return Policy(name, accelerator, "bf16-mixed", "bf16 autocast as asked")
    if gpu:  # auto
        return (Policy(name, accelerator, "bf16-mixed", f"auto: {caps.cuda_name or 'the GPU'} has bf16") if caps.cuda_bf16
                else Policy(name, accelerator, "32-true", "auto: the GPU has no bf16 (fp16 only when asked)"))
    if accelerator == "cpu" and caps.cpu_bf16:
        if workload == "infer":
            return Policy(name, accelerator, "bf16-mixed", "auto: native bf16 CPU (inference measured faster)")
        if backbone.startswith(CPU_BF16_TRAINING):
            return Policy(name, accelerator, "bf16-mixed", f"auto: native bf16 CPU ({backbone} trains faster in bf16)")
        return Policy(name, accelerator, "32-true", f"auto: fp32 ({backbone or 'this backbone'} trains slower in bf16 "
                                                    "on the CPU)")
    return Policy(name, accelerator, "32-true", "auto: fp32 (no native bf16 here)")


def stage_record(policy: Policy | None, ran_on: object | None = None, processes: int = 1) -> dict:
    """What a stage of a run ran on: ``{"device", "precision", "processes"}`` (``summary.json``'s
    ``stages``); ``ran_on``: the device its tensors were actually on, where known."""
    policy = policy or Policy()
    return {"device": str(ran_on) if ran_on is not None else policy.device, "precision": policy.precision,
            "processes": processes}


_CURRENT: contextvars.ContextVar[Policy | None] = contextvars.ContextVar("cxrlab_policy", default=None)


def current_policy() -> Policy:
    """The policy a command set with :func:`use_policy`, else fp32 on the CPU (what library calls
    without a command get: reproducible, and needs no GPU)."""
    return _CURRENT.get() or Policy()


@contextlib.contextmanager
def use_policy(policy: Policy):
    """Run the block with ``policy`` as :func:`current_policy`."""
    token = _CURRENT.set(policy)
    try:
        yield policy
    finally:
        _CURRENT.reset(token)
