"""Benchmark: training and inference speed of the classifiers on this CPU (issue 3, item 9).

Run: ``.venv/bin/python bench/bench_train.py`` (about 12 minutes). Every figure is measured in a
fresh subprocess, so allocator settings cannot leak between measurements, and is printed next
to the plain baseline measured in the same run: fp32, NCHW, eager, glibc's default allocator,
frozen layers recomputed every step (what the papers' code did). Writes ``bench/out/train.json``.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SIZE = 224


def _setup(allocator: str) -> None:
    if allocator == "tuned":
        from cxrlab.core.runtime import tune_allocator

        tune_allocator()


def _model(name: str, k, channels_last: bool):
    from cxrlab.models import create_classifier

    pretrained = "imagenet" if name.startswith("efficientnet_lite") else "none"  # random init is fine for timing
    model = create_classifier(name, 3, pretrained=pretrained, fine_tune=k, seed=0)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _batch(n: int, channels_last: bool) -> torch.Tensor:
    x = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _median_rate(fn, images_per_call: int, calls: int, rounds: int = 3) -> float:
    """Median images/s over ``rounds`` timed windows of ``calls`` calls each: a window disturbed by
    other work on this shared 2-core machine does not decide the figure (the machine's drift
    between runs, up to 20% here, remains: docs/benchmarks/training.md shows repeated runs)."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls * images_per_call / (time.perf_counter() - start))
    return statistics.median(rates)


def train_speed(name: str, k, cached: bool, channels_last: bool, bf16: bool, steps: int = 4, batch: int = 32,
                frozen_bn: bool = False) -> float:
    """Training images/s (forward, backward, Adam step) at fine-tuning degree k (``frozen_bn``: every
    BatchNorm layer in inference mode, ``batchnorm: frozen``)."""
    model = _model(name, k, channels_last)
    model.set_freeze_batchnorm(frozen_bn)
    model.train()
    x, y = _batch(batch, channels_last), torch.randint(0, 3, (batch,))
    start_block = model.frozen_blocks if cached else 0
    if cached:
        with torch.no_grad():
            model.eval()
            x = model.forward_blocks(x, 0, start_block)
            model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model.forward_from(x, start_block) if cached else model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    step()
    return _median_rate(step, batch, steps)


def _predict_fn(name: str, channels_last: bool, bf16: bool, compiled: bool):
    """The baseline (plain eager fp32 NCHW forward) or cxrlab's InferenceModel."""
    model = _model(name, "all", False).eval()
    if not channels_last and not compiled:
        def plain(x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(x)
        return plain
    from cxrlab.models import InferenceModel

    return InferenceModel(model, "bf16" if bf16 else "fp32", compile=compiled).probabilities


def infer_speed(name: str, channels_last: bool, bf16: bool, compiled: bool = False, batch: int = 32,
                repeats: int = 6) -> float:
    """Inference images/s at ``batch`` (after warm-up, which includes any compilation)."""
    predict = _predict_fn(name, channels_last, bf16, compiled)
    x = _batch(batch, False)
    predict(x)
    predict(x)
    return _median_rate(lambda: predict(x), batch, repeats)


def latency_ms(name: str, channels_last: bool, bf16: bool, compiled: bool = False, repeats: int = 40) -> float:
    """Median single-image prediction latency in milliseconds."""
    predict = _predict_fn(name, channels_last, bf16, compiled)
    x = _batch(1, False)
    times = []
    for _ in range(5):
        predict(x)
    for _ in range(repeats):
        start = time.perf_counter()
        predict(x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def gradcam_latency_ms(name: str, repeats: int = 20, compiled: bool = False) -> float:
    """Median latency of predict + Grad-CAM for one image (fp32, channels-last; eager, or with the
    blocks before the target layer compiled)."""
    from cxrlab.explain import GradCamExplainer

    model = _model(name, "all", True).eval()
    x = _batch(1, True)
    times = []
    with GradCamExplainer(model, compile=compiled) as cam:
        for _ in range(3):
            cam.explain(x)
        for _ in range(repeats):
            start = time.perf_counter()
            cam.explain(x)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def gradcam_baseline_ms(name: str, repeats: int = 20) -> float:
    """Median latency of the straightforward pytorch-grad-cam route for one image: a prediction
    pass, then GradCAM with gradients through the whole network (fp32, channels-last)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxrlab.explain.gradcam import resolve_target_layers

    model = _model(name, "all", True).eval()
    x = _batch(1, True)
    times = []
    with GradCAM(model=model, target_layers=resolve_target_layers(model)) as cam:
        def explain() -> None:
            with torch.no_grad():
                label = int(model(x).argmax(1))
            cam(input_tensor=x, targets=[ClassifierOutputTarget(label)])
        for _ in range(3):
            explain()
        for _ in range(repeats):
            start = time.perf_counter()
            explain()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def sweep_seconds(name: str, optimized: bool, images: int = 128, val_images: int = 32, epochs: int = 5,
                  batch: int = 32) -> float:
    """Wall time of a k = 0..5 sweep: per k, ``epochs`` epochs over ``images`` training images,
    each followed by a validation pass over ``val_images`` (as a training run does)."""
    channels_last = optimized
    data = _batch(images + val_images, channels_last)
    targets = torch.randint(0, 3, (images,), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    # cxrlab runs the sweep from large to small k and builds each frozen prefix from the previous
    # one (as a study's prefix store does), so each frozen block runs about once per image
    previous_block, previous = 0, data
    for k in (range(5, -1, -1) if optimized else range(6)):
        model = _model(name, k, channels_last)
        start_block = model.frozen_blocks if optimized else 0
        inputs = data
        if optimized and start_block:
            with torch.no_grad():
                model.eval()
                inputs = torch.cat([model.forward_blocks(previous[i:i + 64], previous_block, start_block)
                                    for i in range(0, len(previous), 64)])
            previous_block, previous = start_block, inputs
        train_x, val_x = inputs[:images], inputs[images:]

        def forward(x):
            return model.forward_from(x, start_block) if start_block else model(x)

        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(epochs):
            model.train()
            for i in range(0, images, batch):
                loss = F.cross_entropy(forward(train_x[i:i + batch]), targets[i:i + batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                for i in range(0, val_images, batch):
                    forward(val_x[i:i + batch])
    return time.perf_counter() - start


MEASUREMENTS = {
    # name: (function, kwargs, allocator)
    "train_full_baseline": (train_speed, {"name": "efficientnet_lite0", "k": "all", "cached": False, "channels_last": False, "bf16": False}, "default"),
    "train_full_fast": (train_speed, {"name": "efficientnet_lite0", "k": "all", "cached": False, "channels_last": True, "bf16": False}, "tuned"),
    "train_full_frozen_bn": (train_speed, {"name": "efficientnet_lite0", "k": "all", "cached": False, "channels_last": True, "bf16": False, "frozen_bn": True}, "tuned"),
    "train_k2_baseline": (train_speed, {"name": "efficientnet_lite0", "k": 2, "cached": False, "channels_last": False, "bf16": False}, "default"),
    "train_k2_cached": (train_speed, {"name": "efficientnet_lite0", "k": 2, "cached": True, "channels_last": True, "bf16": False}, "tuned"),
    "train_k0_baseline": (train_speed, {"name": "efficientnet_lite0", "k": 0, "cached": False, "channels_last": False, "bf16": False}, "default"),
    "train_k0_cached": (train_speed, {"name": "efficientnet_lite0", "k": 0, "cached": True, "channels_last": True, "bf16": False}, "tuned"),
    "infer_baseline": (infer_speed, {"name": "efficientnet_lite0", "channels_last": False, "bf16": False}, "default"),
    "infer_fp32_fast": (infer_speed, {"name": "efficientnet_lite0", "channels_last": True, "bf16": False}, "tuned"),
    "infer_bf16_fast": (infer_speed, {"name": "efficientnet_lite0", "channels_last": True, "bf16": True}, "tuned"),
    "infer_fp32_compiled": (infer_speed, {"name": "efficientnet_lite0", "channels_last": True, "bf16": False, "compiled": True}, "tuned"),
    "infer_bf16_compiled": (infer_speed, {"name": "efficientnet_lite0", "channels_last": True, "bf16": True, "compiled": True}, "tuned"),
    "latency_baseline": (latency_ms, {"name": "efficientnet_lite0", "channels_last": False, "bf16": False}, "default"),
    "latency_fast": (latency_ms, {"name": "efficientnet_lite0", "channels_last": True, "bf16": False}, "tuned"),
    "latency_fp32_compiled": (latency_ms, {"name": "efficientnet_lite0", "channels_last": True, "bf16": False, "compiled": True}, "tuned"),
    "latency_bf16_compiled": (latency_ms, {"name": "efficientnet_lite0", "channels_last": True, "bf16": True, "compiled": True}, "tuned"),
    "latency_gradcam_baseline": (gradcam_baseline_ms, {"name": "efficientnet_lite0"}, "tuned"),
    "latency_gradcam": (gradcam_latency_ms, {"name": "efficientnet_lite0"}, "tuned"),
    "latency_gradcam_compiled": (gradcam_latency_ms, {"name": "efficientnet_lite0", "compiled": True}, "tuned"),
    "sweep_baseline": (sweep_seconds, {"name": "efficientnet_lite0", "optimized": False}, "default"),
    "sweep_fast": (sweep_seconds, {"name": "efficientnet_lite0", "optimized": True}, "tuned"),
    "resnet50_train_fp32": (train_speed, {"name": "resnet50", "k": "all", "cached": False, "channels_last": True, "bf16": False}, "tuned"),
    "resnet50_train_bf16": (train_speed, {"name": "resnet50", "k": "all", "cached": False, "channels_last": True, "bf16": True}, "tuned"),
    "resnet50_infer_fp32": (infer_speed, {"name": "resnet50", "channels_last": True, "bf16": False}, "tuned"),
    "resnet50_infer_bf16": (infer_speed, {"name": "resnet50", "channels_last": True, "bf16": True}, "tuned"),
    "densenet121_train_fp32": (train_speed, {"name": "densenet121", "k": "all", "cached": False, "channels_last": True, "bf16": False}, "tuned"),
    "densenet121_train_bf16": (train_speed, {"name": "densenet121", "k": "all", "cached": False, "channels_last": True, "bf16": True}, "tuned"),
    "densenet121_infer_fp32": (infer_speed, {"name": "densenet121", "channels_last": True, "bf16": False}, "tuned"),
    "densenet121_infer_bf16": (infer_speed, {"name": "densenet121", "channels_last": True, "bf16": True}, "tuned"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help="run one measurement in this process and print it as JSON")
    parser.add_argument("--only", default="", help="comma-separated measurement names (default: all)")
    args = parser.parse_args()
    if args.one:
        fn, kwargs, allocator = MEASUREMENTS[args.one]
        _setup(allocator)
        print(json.dumps({"name": args.one, "value": fn(**kwargs)}))
        return
    names = [n for n in MEASUREMENTS if not args.only or n in args.only.split(",")]
    results = {}
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])["value"]
        print(f"{name:28s} {results[name]:10.2f}", flush=True)
    target = Path(__file__).parent / "out"
    target.mkdir(exist_ok=True)
    (target / "train.json").write_text(json.dumps({"torch_threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
