"""Benchmark: the resident memory of ``cxrlab train`` itself at 10⁵ images (issue 33).

Run: ``.venv/bin/python bench/bench_train_memory.py [--images 100000] [--size 64]``. Writes
``bench/out/train_memory.json`` and prints the figures. Nothing here asserts.

A class-folder tree of ``--images`` small generated PNGs (each its own pattern: no near-duplicates),
then ``cxrlab train`` on it as a user would run it (its split with the content check, preparation,
one epoch of the default recipe at ``--size`` px, validation and the screening reference), in its own
process under ``/usr/bin/time``: wall time and peak resident memory. The same command on a tenth of
the images gives the slope: what grows with the number of images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import CLI, OUT, cpu, timed  # noqa: E402

CLASSES = ("COVID-19", "Pneumonia", "Normal")


def tree(folder: Path, n: int, side: int = 48) -> Path:
    """``n`` PNGs of ``side`` px in three class folders, each a distinct random block pattern."""
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = CLASSES[i % 3]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (6, 6), dtype=np.uint8)
        cv2.imwrite(str(folder / cls / f"{i:06d}.png"), cv2.resize(blocks, (side, side), interpolation=cv2.INTER_NEAREST))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.images // 10, args.images):
            data = tree(Path(tmp) / f"tree{n}", n)
            out = Path(tmp) / f"run{n}"
            figures = timed([*CLI, "train", "--data", str(data), "--size", str(args.size), "--epochs", "1",
                             "--out", str(out), "--set", "progress_bar=false"])
            summary = json.loads((out / "summary.json").read_text())
            rows.append({"images": n, **figures, "train_images": summary["images"]["train"],
                         "seconds_fit": summary["timing"]["seconds_fit"]})
            print(rows[-1], flush=True)
    result = {"cpu": cpu(), "size": args.size, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
