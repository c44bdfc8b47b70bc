"""The device and precision policy, driven with made-up machines (no GPU is needed to test it)."""

from __future__ import annotations

import pytest

from cxrlab.core import ConfigError
from cxrlab.core.device import Capabilities, current_policy, resolve_policy, use_policy

A100 = Capabilities(cuda_devices=2, cuda_bf16=True, cuda_name="NVIDIA A100")
T4 = Capabilities(cuda_devices=1, cuda_bf16=False, cuda_name="Tesla T4")
ZEN5 = Capabilities(cpu_bf16=True)
OLD_CPU = Capabilities()
MAC = Capabilities(mps=True)


@pytest.mark.parametrize(("caps", "device", "precision", "workload", "backbone", "expected"), [
    (A100, "auto", "auto", "train", "efficientnet_lite0", ("cuda:0", "gpu", "bf16-mixed")),
    (A100, "cuda:1", "32", "train", "", ("cuda:1", "gpu", "32-true")),
    (A100, "cuda", "16", "infer", "", ("cuda:0", "gpu", "16-mixed")),
    (A100, "cpu", "auto", "infer", "", ("cpu", "cpu", "32-true")),  # this machine's CPU has no bf16
    (T4, "auto", "auto", "train", "resnet50", ("cuda:0", "gpu", "32-true")),  # no bf16: fp16 only when asked
    (T4, "auto", "16", "train", "", ("cuda:0", "gpu", "16-mixed")),
    (ZEN5, "auto", "auto", "train", "efficientnet_lite0", ("cpu", "cpu", "32-true")),  # measured slower in bf16
    (ZEN5, "auto", "auto", "train", "densenet121", ("cpu", "cpu", "bf16-mixed")),  # measured faster
    (ZEN5, "auto", "auto", "infer", "efficientnet_lite0", ("cpu", "cpu", "bf16-mixed")),
    (ZEN5, "auto", "bf16", "train", "efficientnet_lite0", ("cpu", "cpu", "bf16-mixed")),
    (ZEN5, "auto", "32", "infer", "", ("cpu", "cpu", "32-true")),
    (OLD_CPU, "auto", "auto", "train", "densenet121", ("cpu", "cpu", "32-true")),
    (MAC, "auto", "32", "infer", "", ("mps", "mps", "32-true")),
])
def test_the_policy_picks_device_and_precision(caps, device, precision, workload, backbone, expected):
    policy = resolve_policy(device, precision, workload=workload, backbone=backbone, capabilities=caps)
    assert (policy.device, policy.accelerator, policy.precision) == expected
    assert policy.reason


@pytest.mark.parametrize(("caps", "device", "precision", "message"), [
    (T4, "auto", "bf16", "Tesla T4 has no bf16"),
    (ZEN5, "auto", "16", "CUDA GPUs only"),
    (OLD_CPU, "cuda", "32", "0 CUDA device"),
    (A100, "cuda:2", "32", "2 CUDA device"),
    (OLD_CPU, "mps", "32", "no Apple GPU"),
    (OLD_CPU, "tpu", "32", "not one of"),
    (OLD_CPU, "auto", "fp8", "precision"),
])
def test_requests_the_machine_cannot_meet_are_refused_by_name(caps, device, precision, message):
    with pytest.raises(ConfigError, match=message):
        resolve_policy(device, precision, capabilities=caps)


def test_a_command_sets_the_policy_for_the_code_below_it():
    assert current_policy().device == "cpu" and current_policy().precision == "32-true"  # library default
    chosen = resolve_policy("auto", "auto", capabilities=ZEN5)
    with use_policy(chosen):
        assert current_policy() is chosen
    assert current_policy().precision == "32-true"


def test_inference_follows_the_command_policy(tmp_path):
    import torch

    from cxrlab.models import InferenceModel, create_classifier

    model = create_classifier("efficientnet_lite0", 3, pretrained="none")
    x = torch.randn(2, 3, 64, 64)
    assert InferenceModel(model).precision == "fp32"
    with use_policy(resolve_policy("cpu", "bf16", capabilities=ZEN5)):
        runner = InferenceModel(model)
        assert runner.precision == "bf16" and runner.logits(x).dtype == torch.float32  # bf16 inside, fp32 out
