"""Benchmark: the near-duplicate criterion on real radiographs, and its cost at 100 000 images.

Run: ``.venv/bin/python bench/bench_duplicates.py [--images 300] [--scale 100000]``.

1. **False pairs** on ``../shared/data/cxr-real`` (527 radiographs, 374 patients; its README says
   copies were removed): for every pair of images of *different* patients, the pHash distance and
   the correlation of their 16 x 16 thumbnails; how many pairs each radius would join with the
   hash alone and with the thumbnail confirmation (``DEFAULT_MIN_CORRELATION``).
2. **Recall** on copies made here from the first ``--images`` radiographs: re-saved losslessly
   (PNG of the decoded pixels), JPEG quality 70, halved, brightened by 15 grey levels, gamma 0.8,
   cropped 3% on each side: the share still found by the criterion.
3. **Scale**: time and peak memory of the pair search, its confirmation and the grouping for
   ``--scale`` signatures whose hash bits follow the real bits' frequencies (skewed, as on
   radiographs; independent between bits) and whose thumbnails are unrelated: how many candidate
   pairs the hash alone yields there, and what the confirmation keeps.

Writes ``bench/out/duplicates.json``. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import cv2
import numpy as np

from cxrlab.core.defaults import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION
from cxrlab.data import read_manifest
from cxrlab.data.duplicates import (Signatures, compute_signatures, duplicate_groups, find_near_duplicates,
                                    image_signature, largest_group, thumb_correlation)
from cxrlab.data.images import decode_image, read_image

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "cxr-real" / "manifest.csv"
OUT = ROOT / "bench" / "out"


def _bits(hashes: np.ndarray) -> np.ndarray:
    return ((hashes[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)


def false_pairs(signatures: Signatures, patients: np.ndarray) -> dict:
    """Pairs of images of different (and of the same) patients joined at each radius, hash alone and confirmed."""
    bits = _bits(signatures.phashes)
    distance = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    upper = np.triu_indices(len(patients), 1)
    same = (patients[:, None] == patients[None, :])[upper]
    d = distance[upper]
    thumbs = signatures.thumbs
    corr = thumb_correlation(thumbs[upper[0]], thumbs[upper[1]])
    rows = {}
    for radius in (4, 6, 8, 10):
        near = d <= radius
        rows[radius] = {"different_patients_hash": int((near & ~same).sum()),
                        "different_patients_confirmed": int((near & ~same & (corr >= DEFAULT_MIN_CORRELATION)).sum()),
                        "same_patient_hash": int((near & same).sum()),
                        "same_patient_confirmed": int((near & same & (corr >= DEFAULT_MIN_CORRELATION)).sum())}
    return {"pairs_different_patients": int((~same).sum()), "by_radius": rows,
            "max_correlation_different_patients": float(corr[~same].max()),
            "different_patients_correlation_above_0.95": int((corr[~same] >= 0.95).sum()),
            "bits_far_from_balanced": int((np.abs(bits.mean(0) - 0.5) > 0.2).sum())}


def _variants(full: np.ndarray) -> dict[str, tuple[bytes, str]]:
    h, w = full.shape
    png = lambda a: cv2.imencode(".png", a)[1].tobytes()  # noqa: E731
    return {"lossless re-save": (png(full), "x.png"),
            "JPEG q70": (cv2.imencode(".jpg", full, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes(), "x.jpg"),
            "halved": (png(cv2.resize(full, (w // 2, h // 2), interpolation=cv2.INTER_AREA)), "x.png"),
            "brightened +15": (png(np.clip(full.astype(int) + 15, 0, 255).astype(np.uint8)), "x.png"),
            "gamma 0.8": (png((255 * (full / 255.0) ** 0.8).astype(np.uint8)), "x.png"),
            "cropped 3%": (png(full[int(0.03 * h):h - int(0.03 * h), int(0.03 * w):w - int(0.03 * w)]), "x.png")}


def recall(paths: list[str]) -> dict:
    """Share of each kind of copy the criterion finds (pHash within the radius and thumbnails confirming)."""
    found: dict[str, list[bool]] = {}
    for path in paths:
        original = image_signature(path)
        for name, (data, suffix) in _variants(read_image(path).pixels).items():
            pixels = decode_image(data, suffix, reduce_to=64).pixels
            thumb = cv2.resize(pixels, (16, 16), interpolation=cv2.INTER_AREA).ravel()
            import imagehash
            from PIL import Image

            phash = int(str(imagehash.phash(Image.fromarray(pixels))), 16)
            close = bin(phash ^ original[1]).count("1") <= DEFAULT_MAX_DISTANCE
            agree = thumb_correlation(thumb[None], original[2][None])[0] >= DEFAULT_MIN_CORRELATION
            found.setdefault(name, []).append(bool(close and agree))
    return {name: float(np.mean(v)) for name, v in found.items()}


def scale(frequency: np.ndarray, n: int, seed: int = 0) -> dict:
    """Time and peak memory of the search, confirmation and grouping for ``n`` synthetic signatures
    (run in a fresh process, so that its peak memory is its own)."""
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the libraries alone
    rng = np.random.default_rng(seed)
    bits = (rng.random((n, 64)) < frequency).astype(np.uint64)
    hashes = (bits << np.arange(64, dtype=np.uint64)).sum(1).astype(np.uint64)
    hashes[hashes == 0] = 1
    thumbs = rng.integers(0, 256, (n, 256)).astype(np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    candidates = find_near_duplicates(hashes, DEFAULT_MAX_DISTANCE)
    hash_seconds = time.perf_counter() - start
    start = time.perf_counter()
    confirmed = find_near_duplicates(hashes, DEFAULT_MAX_DISTANCE, thumbs, DEFAULT_MIN_CORRELATION)
    confirm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    hash_groups = duplicate_groups(n, candidates)
    groups = duplicate_groups(n, confirmed)
    group_seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images": n, "hash_candidate_pairs": len(candidates), "largest_group_hash_alone": largest_group(hash_groups),
            "confirmed_pairs": len(confirmed), "largest_group_confirmed": largest_group(groups),
            "search_seconds": round(hash_seconds, 2), "search_and_confirm_seconds": round(confirm_seconds, 2),
            "grouping_seconds": round(group_seconds, 2), "process_peak_rss_mb": round(peak / 1024, 1),
            "rss_growth_mb": round((peak - before) / 1024, 1), "libraries_rss_mb": round(imported / 1024, 1)}


def _in_fresh_process(function, *args):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="radiographs to copy for the recall figures")
    parser.add_argument("--scale", type=int, default=100_000)
    args = parser.parse_args()
    table = read_manifest(REAL).table
    start = time.perf_counter()
    signatures = compute_signatures(table["image"].tolist())
    per_image_ms = 1000 * (time.perf_counter() - start) / len(table)
    result = {"signature_ms_per_image": round(per_image_ms, 2),
              "false_pairs": false_pairs(signatures, table["patient_id"].astype(str).to_numpy()),
              "recall": recall(table["image"].tolist()[:args.images]),
              "scale": _in_fresh_process(scale, _bits(signatures.phashes).mean(0), args.scale)}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result.update(cpu=cpu, threads=os.cpu_count(), max_distance=DEFAULT_MAX_DISTANCE,
                  min_correlation=DEFAULT_MIN_CORRELATION)
    OUT.mkdir(exist_ok=True)
    (OUT / "duplicates.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
