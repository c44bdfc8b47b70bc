"""Benchmark: how many real radiographs per second ``predict`` screens with a model, overlays included.

Run: ``.venv/bin/python bench/bench_predict.py RUN`` on a finished run folder (``cxrlab train
--folds 5`` gives a five-member fold ensemble). The images are every ninth one of
``../shared/data/cxr-real`` (58 of 527), or the files given with ``--images``. The same images are
screened one at a time and in batches, in one process, so the ratio holds whatever the processor;
each pass writes the table and a Grad-CAM overlay per image. Prints a table and writes
``bench/out/predict.json``. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.runtime import tune_allocator
from cxrlab.explain.predict import predict_images

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "cxr-real"


def _images(given: list[Path]) -> list[Path]:
    if given:
        return given
    if not REAL.exists():
        raise SystemExit(f"no real data at {REAL}: give --images")
    manifest = pd.read_csv(REAL / "manifest.csv")
    return [REAL / p for p in manifest["image"].iloc[::9]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder or model file")
    parser.add_argument("--images", type=Path, nargs="*", default=[])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2, help="passes per batch size (the best is kept)")
    args = parser.parse_args()
    images = _images(args.images)
    tune_allocator()  # as the predict command does
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    work = Path(tempfile.mkdtemp(prefix="cxrlab-predict-"))
    results, tables = {}, {}
    try:
        predict_images(args.run, images[:2], work / "warm-up")  # imports, kernels, file cache
        for batch in args.batch_sizes:
            seconds = []
            for repeat in range(args.repeats):
                start = time.perf_counter()
                rows = predict_images(args.run, images, work / f"b{batch}-{repeat}", batch_size=batch)
                seconds.append(time.perf_counter() - start)
            tables[batch] = pd.DataFrame([r["probabilities"] for r in rows])
            results[batch] = {"seconds": min(seconds), "images_per_second": len(images) / min(seconds)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = args.batch_sizes[0]
    largest = max(float(np.abs(t.to_numpy() - tables[first].to_numpy()).max()) for t in tables.values())
    print(f"{len(images)} images, {args.run}; {cpu}; model file loaded in each pass")
    print("| batch | seconds | images/s | vs batch " + f"{first} |\n|---:|---:|---:|---:|")
    for batch, r in results.items():
        print(f"| {batch} | {r['seconds']:.1f} | {r['images_per_second']:.1f} | "
              f"{r['images_per_second'] / results[first]['images_per_second']:.2f}x |")
    print(f"largest probability difference between batch sizes: {largest:.1e}")
    out = ROOT / "bench" / "out" / "predict.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"processor": cpu, "images": len(images), "run": str(args.run),
                               "batches": results, "largest_difference": largest}, indent=2))


if __name__ == "__main__":
    main()
