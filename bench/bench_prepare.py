"""Benchmark: prepare throughput (1024-px JPEG → CLAHE → 224 px), local engine vs Spark vs raw OpenCV.

Run: ``make bench`` or ``.venv/bin/python bench/bench_prepare.py [--images 400] [--real]``.
Prints a table and writes ``bench/out/prepare.json``. Not a test: nothing here asserts a time.

The baseline is the plain loop a researcher would write: ``cv2.imread`` (grayscale) →
``CLAHE.apply`` → ``cv2.resize`` in one process. The engines add reading the manifest,
validating every file, writing Parquet shards and the report.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import pandas as pd

from cxrlab.core.runtime import find_java
from cxrlab.data import generate_phantoms, read_manifest
from cxrlab.preprocess import PreprocessConfig, prepare

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real" / "manifest.csv"


def make_jpegs(folder: Path, n: int) -> Path:
    """n phantoms at 1024 px saved as JPEG (quality 92, like the real set), with a manifest."""
    src = generate_phantoms(folder / "png", n_patients=max(6, n), size=1024, seed=0, max_images_per_patient=2)
    table = pd.read_csv(src).head(n)
    (folder / "jpg").mkdir()
    for i, row in table.iterrows():
        target = folder / "jpg" / (Path(row["image"]).stem + ".jpg")
        cv2.imwrite(str(target), cv2.imread(str(src.parent / row["image"]), 0), [cv2.IMWRITE_JPEG_QUALITY, 92])
        table.loc[i, "image"] = str(target)
    table["mask"] = ""
    table.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def raw_loop(paths: list[str], reduced: bool) -> float:
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    flag = cv2.IMREAD_REDUCED_GRAYSCALE_2 if reduced else cv2.IMREAD_GRAYSCALE
    start = time.perf_counter()
    for p in paths:
        cv2.resize(clahe.apply(cv2.imread(p, flag)), (224, 224), interpolation=cv2.INTER_AREA)
    return time.perf_counter() - start


def raw_parallel(paths: list[str], reduced: bool, workers: int) -> float:
    """The raw loop split over ``workers`` processes: the fair multi-core baseline."""
    chunks = [paths[i::workers] for i in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        start = time.perf_counter()
        pool.starmap(raw_loop, [(c, reduced) for c in chunks])
        return time.perf_counter() - start


def run_engine(manifest, engine: str, workers: int, fast: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="cxrlab-bench-"))
        start = time.perf_counter()
        prepare(manifest, out, PreprocessConfig(size=224, contrast="clahe", fast_decode=fast),
                engine=engine, workers=workers)
        best = min(best, time.perf_counter() - start)
        shutil.rmtree(out)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--real", action="store_true", help="use ../shared/data/cxr-real instead of 1024-px phantoms")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-spark", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cxrlab-bench-data-"))
    manifest = read_manifest(REAL if args.real else make_jpegs(work, args.images))
    paths = manifest.table["image"].tolist()
    n = len(paths)
    raw_loop(paths[:20], False)  # warm the page cache
    rows = []
    for fast in (False, True):
        for workers in (1, 2):
            base = min(raw_loop(paths, fast) if workers == 1 else raw_parallel(paths, fast, workers)
                       for _ in range(args.repeats))
            rows.append({"what": f"raw OpenCV loop, {workers} process(es)", "fast_decode": fast,
                         "workers": workers, "img_per_s": n / base})
            t = run_engine(manifest, "local", workers, fast, args.repeats)
            rows.append({"what": "cxrlab prepare --engine local", "fast_decode": fast, "workers": workers,
                         "img_per_s": n / t, "vs_raw": base / t})
        if not args.no_spark and find_java():
            for label in ("first run, incl. JVM start", "warm session"):
                t = run_engine(manifest, "spark", 2, fast, 1)
                rows.append({"what": f"cxrlab prepare --engine spark, local[2] ({label})", "fast_decode": fast,
                             "workers": 2, "img_per_s": n / t, "vs_raw": base / t})
            from pyspark.sql import SparkSession

            SparkSession.builder.getOrCreate().stop()  # the next "first run" starts a new JVM
    table = pd.DataFrame(rows)
    print(f"{n} images ({'cxr-real' if args.real else '1024-px phantom JPEGs'}) -> CLAHE -> 224 px, "
          f"best of {args.repeats}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "prepare.json").write_text(json.dumps({"images": n, "real": args.real, "rows": rows}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
