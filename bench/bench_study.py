"""Benchmark: wall time of the papers' sweep shape as a study, with and without reusing work.

Run: ``.venv/bin/python bench/bench_study.py [--epochs 3] [--folds 5]`` (about 40 minutes on 2 cores
with the defaults). The study: efficientnet_lite0, k = 0…5, 5 patient-grouped folds, 224 px,
CLAHE, on ``../shared/data/cxr-real`` (phantoms when it is absent). Three modes, each a fresh
process and a fresh study folder:

* ``plain``: no caching: the frozen blocks run at every step (what the papers' code did);
* ``per-run cache``: each run computes its frozen prefix once (issue 3);
* ``shared store``: runs share the prefix activations across folds (this issue's reuse);
* ``shared store 2 workers``: the same with two runs at a time, one thread each (``workers: 2``).

Prints total wall time per mode and whether the mean validation metrics agree; writes
``bench/out/study.json``. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real" / "manifest.csv"
MODES = {"plain": {"cache_prefix": False, "share": False},
         "per-run cache": {"cache_prefix": True, "share": False},
         "shared store": {"cache_prefix": True, "share": True},
         "shared store 2 workers": {"cache_prefix": True, "share": True, "workers": 2}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--modes", default=",".join(list(MODES)[:3]), help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--out", default="study.json", help="file name under bench/out/")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = REAL
        if not REAL.exists():
            from cxrlab.data import generate_phantoms

            data = generate_phantoms(tmp / "phantoms", n_patients=180, size=512, seed=0)
        for mode in args.modes.split(","):
            settings = MODES[mode]
            study = {"name": mode.replace(" ", "-"), "data": str(data), "folds": args.folds, "seed": 0,
                     "share_prefix": settings["share"], "workers": settings.get("workers", 1),
                     "base": {"backbone": "efficientnet_lite0", "size": 224, "contrast": "clahe", "epochs": args.epochs,
                              "patience": args.epochs, "cache_prefix": settings["cache_prefix"]},
                     "grid": {"fine_tune": [0, 1, 2, 3, 4, 5]}}
            path = tmp / f"{study['name']}.yaml"
            path.write_text(yaml.safe_dump(study))
            start = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "cxrlab"), "study", str(path), "--out", str(tmp / study["name"])],
                           check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            summary = pd.read_csv(tmp / study["name"] / "summary.csv")
            results[mode] = {"seconds": round(seconds, 1),
                             "auc_macro_mean": summary.set_index("cell")["auc_macro_mean"].round(4).to_dict(),
                             "best": str(summary.sort_values("auc_macro_mean", ascending=False)["cell"].iloc[0])}
            print(f"{mode:14s} {seconds:8.1f} s  best {results[mode]['best']}", flush=True)
    base = results.get("plain") or next(iter(results.values()))
    for r in results.values():
        if base:
            r["speed_up_vs_first"] = round(base["seconds"] / r["seconds"], 2)
            r["max_auc_difference_vs_first"] = max(abs(r["auc_macro_mean"][c] - base["auc_macro_mean"][c])
                                                   for c in base["auc_macro_mean"])
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / args.out).write_text(json.dumps({"epochs": args.epochs, "folds": args.folds, "data": str(data),
                                                "results": results}, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
