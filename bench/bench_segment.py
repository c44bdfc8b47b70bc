"""Benchmark: lung segmenter (U-Net, efficientnet_lite0 encoder) training and inference speed on this CPU.

Run: ``.venv/bin/python bench/bench_segment.py [--size 256]``. Random images (speed does not
depend on content); each figure is the median of a few timed steps after one warm-up step.
Compares the encoder's BatchNorm trained vs frozen (cxrlab's default) and reports inference
images/s. Writes ``bench/out/segment.json``; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cxrlab.core.runtime import tune_allocator
from cxrlab.models.segmenter import create_segmenter


def _train_rate(size: int, batch: int, freeze_encoder_bn: bool, steps: int = 4) -> float:
    torch.manual_seed(0)
    net = create_segmenter(pretrained="none").to(memory_format=torch.channels_last).train()
    if freeze_encoder_bn:
        for module in net.encoder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    optimizer = torch.optim.Adam(net.parameters())
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size, size) > 0.5).float()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


@torch.inference_mode()
def _infer_rate(size: int, batch: int, steps: int = 5) -> float:
    net = create_segmenter(pretrained="none").to(memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    net(x)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    tune_allocator()
    results = {"size": args.size, "batch": args.batch,
               "train_img_s_encoder_bn_trained": round(_train_rate(args.size, args.batch, False), 1),
               "train_img_s_encoder_bn_frozen": round(_train_rate(args.size, args.batch, True), 1),
               "inference_img_s": round(_infer_rate(args.size, 16), 1)}
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "segment.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
