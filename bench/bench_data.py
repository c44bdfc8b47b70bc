"""Benchmark: the data layer at the public collections' scale (issue 20).

Run: ``.venv/bin/python bench/bench_data.py [--images 100000] [--stages readers,duplicates,stream]``.
Writes ``bench/out/data.json`` and prints the figures. Nothing here asserts.

* ``readers``: a ChestX-ray14-shaped folder of ``--images`` small generated PNGs (64 px) named by
  the first rows of NIH's real label table (torchxrayvision's ``Data_Entry_2017_v2020.csv.gz``),
  then ``cxrlab manifest``, ``cxrlab split --official`` and ``cxrlab audit``, each in its own
  process: wall time and peak RSS.
* ``duplicates``: the near-duplicate search of the audit on random pHashes, multi-index hashing
  (today's) against the all-pairs scan it replaced, on 10 000 hashes, and the index alone on 100 000.
* ``stream``: prepared shards at 224 px written directly (10 000 and 100 000 images; pixels made,
  not preprocessed), read back through the training data path (ShardReader, ShardDataset with
  augmentation, ShardAwareSampler, DataLoader with 0, 1 and 2 workers): images/s delivered as
  batched tensors, and the peak RSS of a process that reads the shards and runs training steps
  of EfficientNet-Lite0 on them, beside the same steps on one random batch (the model's own memory).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
CLI = [str(ROOT / ".venv" / "bin" / "cxrlab")]


def cpu() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def timed(command: list[str]) -> dict:
    """Wall time and peak RSS of a command run in its own process (``/usr/bin/time``'s figure)."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024)}


def nih_folder(folder: Path, n: int) -> Path:
    """A ChestX-ray14 layout: NIH's real table's first ``n`` rows, a small PNG for each, the official lists."""
    import cv2
    import pandas as pd

    spec = importlib.util.find_spec("torchxrayvision")
    table = pd.read_csv(Path(next(iter(spec.submodule_search_locations))) / "data" / "Data_Entry_2017_v2020.csv.gz")
    table = table.head(n)
    rng = np.random.default_rng(0)
    for k, name in enumerate(table["Image Index"]):
        target = folder / f"images_{k // 10000 + 1:03d}" / "images" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (8, 8), dtype=np.uint8)  # no two alike: no near-duplicates by construction
        cv2.imwrite(str(target), np.kron(blocks, np.ones((8, 8), np.uint8)))
    table.to_csv(folder / "Data_Entry_2017_v2020.csv", index=False)
    test = table["Patient ID"] % 5 == 0
    (folder / "test_list.txt").write_text("\n".join(table.loc[test, "Image Index"]) + "\n")
    (folder / "train_val_list.txt").write_text("\n".join(table.loc[~test, "Image Index"]) + "\n")
    return folder


def bench_readers(work: Path, n: int) -> dict:
    start = time.perf_counter()
    folder = nih_folder(work / "nih", n)
    made = time.perf_counter() - start
    out = {"images": n, "generate_seconds": round(made, 1)}
    out["manifest"] = timed([*CLI, "manifest", "--data", str(folder), "--scheme", "chestxray14",
                             "--out", str(work / "manifest.csv")])
    out["split_official"] = timed([*CLI, "split", "--data", str(folder), "--scheme", "chestxray14", "--official",
                                   "--folds", "0", "--dedupe", "none", "--out", str(work / "split")])
    out["audit"] = timed([*CLI, "audit", str(work / "split" / "splits.csv"), "--workers", "2"])
    return out


def _all_pairs(hashes: np.ndarray, max_distance: int = 4, chunk: int = 2048) -> int:
    """The previous implementation (chunked all-pairs popcount), for comparison: the number of pairs."""
    count = 0
    for start in range(0, len(hashes), chunk):
        distance = np.bitwise_count(hashes[start:start + chunk, None] ^ hashes[None, :])
        rows, cols = np.nonzero(distance <= max_distance)
        count += int((start + rows < cols).sum())
    return count


def bench_duplicates() -> dict:
    from cxrlab.data.duplicates import find_near_duplicates

    rng = np.random.default_rng(0)
    out = {}
    for n in (10_000, 100_000):
        hashes = rng.integers(1, 2**63, n, dtype=np.uint64)
        hashes[: n // 100] = hashes[n // 100: n // 50] ^ np.uint64(0b101)  # 1% near-copies (2 bits apart)
        start = time.perf_counter()
        pairs = find_near_duplicates(hashes)
        index = time.perf_counter() - start
        row = {"index_seconds": round(index, 3), "pairs": len(pairs)}
        if n <= 10_000:
            start = time.perf_counter()
            row["all_pairs_pairs"] = _all_pairs(hashes)
            row["all_pairs_seconds"] = round(time.perf_counter() - start, 3)
        out[str(n)] = row
    return out


def write_shards(folder: Path, n: int, size: int = 224) -> None:
    """``n`` prepared images at ``size`` px written straight into shards (smooth random pictures)."""
    import cv2

    from cxrlab.core.defaults import DEFAULT_SHARD_SIZE
    from cxrlab.preprocess import PreprocessConfig
    from cxrlab.preprocess.shards import shard_path, write_shard

    rng = np.random.default_rng(0)
    labels = ("COVID-19", "Pneumonia", "Normal")
    config = PreprocessConfig(size=size).to_dict()
    for index, start in enumerate(range(0, n, DEFAULT_SHARD_SIZE)):
        records = []
        for k in range(start, min(n, start + DEFAULT_SHARD_SIZE)):
            pixels = cv2.resize(rng.integers(0, 256, (14, 14), dtype=np.uint8), (size, size),
                                interpolation=cv2.INTER_CUBIC)
            records.append({"image": f"images/{k:07d}.png", "label": labels[k % 3], "patient_id": f"p{k}",
                            "source": "synthetic", "view": "PA", "height": size, "width": size, "orig_h": 1024,
                            "orig_w": 1024, "pixels": pixels.tobytes(), "unlabelled": ""})
        write_shard(shard_path(folder, index), records, [], config)


STREAM_CHILD = r'''
import json, resource, sys, time
import numpy as np, torch
from cxrlab.preprocess import ShardAwareSampler, ShardDataset, ShardReader
from cxrlab.train.augment import Augmenter
from cxrlab.train.config import AugmentConfig
from cxrlab.models import create_classifier
torch.set_num_threads(2)
folder, workers, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reader = ShardReader(folder)
dataset = ShardDataset(reader, ("COVID-19", "Pneumonia", "Normal"), transform=Augmenter(AugmentConfig(enabled=True)))
loader = torch.utils.data.DataLoader(dataset, batch_size=32, sampler=ShardAwareSampler(dataset.shard_of, 0),
                                     num_workers=workers, persistent_workers=workers > 0)
model = create_classifier("efficientnet_lite0", 3) if steps else None
optimizer = torch.optim.AdamW(model.parameters(), 1e-4) if steps else None
start, images, train_images = time.perf_counter(), 0, 0
for i, (x, y) in enumerate(loader):
    images += len(x)
    if steps and i >= 5:  # after a few batches: training steps on what the loader delivers
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        train_images += len(x)
    if (steps and train_images >= steps * 32) or (not steps and images >= 6400):
        break
seconds = time.perf_counter() - start
print(json.dumps({"lazy": reader.lazy, "images": images, "seconds": seconds, "images_per_s": images / seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
'''


MODEL_ONLY = r'''
import json, resource, time, torch
from cxrlab.models import create_classifier
torch.set_num_threads(2)
model = create_classifier("efficientnet_lite0", 3)
optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
x, y = torch.randn(32, 3, 224, 224), torch.randint(0, 3, (32,))
start = time.perf_counter()
for _ in range(40):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
print(json.dumps({"images_per_s": 40 * 32 / (time.perf_counter() - start),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def bench_stream(work: Path) -> dict:
    out = {}
    for n in (10_000, 100_000):
        folder = work / f"shards-{n}"
        start = time.perf_counter()
        write_shards(folder, n)
        row = {"write_seconds": round(time.perf_counter() - start, 1),
               "shard_bytes_mb": round(sum(f.stat().st_size for f in (folder / "shards").glob("*")) / 2**20)}
        for workers in (0, 1, 2):
            result = subprocess.run([sys.executable, "-c", STREAM_CHILD, str(folder), str(workers), "0"],
                                    capture_output=True, text=True, check=True, env={**os.environ,
                                                                                      "CXRLAB_IN_MEMORY_GB": "0"})
            row[f"read_{workers}_workers"] = json.loads(result.stdout.strip().splitlines()[-1])
        result = subprocess.run([sys.executable, "-c", STREAM_CHILD, str(folder), "1", "40"], capture_output=True,
                                text=True, check=True)  # the default choice (streams above 2 GiB), training
        row["train_40_steps"] = json.loads(result.stdout.strip().splitlines()[-1])
        result = subprocess.run([sys.executable, "-c", MODEL_ONLY], capture_output=True, text=True, check=True)
        row["model_only_40_steps"] = json.loads(result.stdout.strip().splitlines()[-1])  # the same steps, no data
        out[str(n)] = row
        shutil.rmtree(folder)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--stages", default="readers,duplicates,stream")
    args = parser.parse_args()
    results = {"cpu": cpu(), "threads": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(dir=ROOT / "runs" if (ROOT / "runs").is_dir() else None) as tmp:
        work = Path(tmp)
        for stage in args.stages.split(","):
            print(f"{stage} ...", flush=True)
            results[stage] = {"readers": lambda: bench_readers(work, args.images), "duplicates": bench_duplicates,
                              "stream": lambda: bench_stream(work)}[stage]()
            print(json.dumps(results[stage], indent=1), flush=True)
    OUT.mkdir(exist_ok=True)
    previous = json.loads((OUT / "data.json").read_text()) if (OUT / "data.json").exists() else {}
    (OUT / "data.json").write_text(json.dumps({**previous, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
