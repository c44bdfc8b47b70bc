"""Benchmark: the screening service under load, the ONNX path, and the out-of-distribution flag.

Run: ``.venv/bin/python bench/bench_serve.py --model RUN_OR_MODEL [--images FOLDER_OR_MANIFEST]``.

1. **Load**: starts ``cxrlab serve MODEL`` as its own process (real uvicorn on loopback), then
   sends 200 ``POST /predict`` requests with real images from 8 concurrent clients (then 30 from
   one client: the latency of a request that does not queue); reports status codes (zero 5xx
   expected), p50/p95/max latency and requests/s. The clients share the server's 2 cores.
2. **ONNX**: exports the model, checks onnxruntime's probabilities against PyTorch's on the
   preprocessed images (max difference), and times both at batch 1 and batch 32.
3. **Out of distribution**: the share of held-out images (``split == test`` of the run's
   ``splits.csv``) flagged, against photos, a text page, blank and noise frames, 10 of those
   X-rays turned 90 degrees and all of them inverted; and which check fired (``ood_reason``).
   ``--fresh`` measures only this, on inputs never looked at while the checks were designed (other
   photos, page, grey levels and noise; ``--exclude-test-of RUN`` leaves out that run's test images):
   ``--model`` should then be a run on another split.

Writes ``bench/out/serve.json`` (``serve-fresh.json`` with ``--fresh``); nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import httpx
import numpy as np
import pandas as pd
import torch

from cxrlab.core.runtime import tune_allocator
from cxrlab.explain.screening import Screener
from cxrlab.models import load_model
from cxrlab.models.inference import InferenceModel
from cxrlab.models.onnx_export import OnnxClassifier, export_onnx
from cxrlab.preprocess import Preprocessor
from cxrlab.preprocess.transforms import to_model_input

OUT = Path(__file__).parent / "out"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _test_images(run: Path, limit: int) -> list[Path]:
    splits = pd.read_csv(run / "splits.csv")
    test = splits[splits["split"] == "test"]["image"].tolist()
    return [(run / p).resolve() for p in test][:limit]


def load_test(model: Path, images: list[Path], requests: int, clients: int) -> dict:
    port = _free_port()
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([str(Path(sys.executable).with_name("cxrlab")), "serve", str(model), "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                log.seek(0)
                raise SystemExit(f"server did not start: {log.read().decode()[-2000:]}")
            time.sleep(0.2)
        payloads = [(p.name, p.read_bytes()) for p in images]
        with httpx.Client(timeout=60) as client:  # warm-up (first-call allocations)
            for name, data in payloads[:3]:
                client.post(f"{base}/predict", files={"file": (name, data)})

        def one(i: int) -> tuple[int, float, float]:
            name, data = payloads[i % len(payloads)]
            start = time.perf_counter()
            response = httpx.post(f"{base}/predict", files={"file": (name, data)}, timeout=120)
            total = sum(response.json()["probabilities"].values()) if response.status_code == 200 else float("nan")
            return response.status_code, time.perf_counter() - start, total

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    finally:
        server.terminate()  # SIGTERM: uvicorn's graceful shutdown
        server.wait(timeout=30)
        log.seek(0)
        graceful = b"Application shutdown complete" in log.read()
    latencies = sorted(r[1] for r in results)
    statuses = pd.Series([r[0] for r in results]).value_counts().to_dict()
    return {"requests": requests, "clients": clients, "statuses": {str(k): int(v) for k, v in statuses.items()},
            "server_5xx": int(sum(v for k, v in statuses.items() if k >= 500)),
            "probability_sums_max_error": float(np.nanmax([abs(r[2] - 1) for r in results])),
            "latency_p50_ms": 1000 * statistics.median(latencies),
            "latency_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
            "latency_max_ms": 1000 * latencies[-1], "requests_per_s": requests / wall,
            "graceful_shutdown_on_sigterm": graceful}


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def onnx_bench(model_path: Path, images: list[Path]) -> dict:
    model, preprocess, _ = load_model(model_path)
    pre = Preprocessor(preprocess)
    spec = model.spec
    x = np.stack([to_model_input(pre(p).pixels, spec.mean, spec.std, spec.in_chans) for p in images])
    batch = np.concatenate([x] * (32 // len(x) + 1))[:32]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        export_onnx(model, Path(tmp) / "m.onnx", preprocess)
        export_s = time.perf_counter() - start
        runner = OnnxClassifier(Path(tmp) / "m.onnx")
        eager = InferenceModel(model)  # cxrlab's default PyTorch path: fp32, channels-last, eager
        with torch.inference_mode():
            expected = eager.probabilities(torch.from_numpy(x)).numpy()
        difference = float(np.abs(runner.probabilities(x) - expected).max())
        figures = {"images_compared": len(x), "max_probability_difference": difference, "export_s": export_s}
        for size, data in (("batch1", batch[:1]), ("batch32", batch)):
            torch_s = _median_time(lambda d=data: eager.probabilities(torch.from_numpy(d)), 7)
            onnx_s = _median_time(lambda d=data: runner.probabilities(d), 7)
            figures[size] = {"pytorch_ms": 1000 * torch_s, "onnxruntime_ms": 1000 * onnx_s,
                             "pytorch_img_s": len(data) / torch_s, "onnxruntime_img_s": len(data) / onnx_s,
                             "speedup": torch_s / onnx_s}
    return figures


# the inputs the checks were designed on (docs/benchmarks/serve.md, first table), and others never looked at then
ODD_SETS = {"design": {"photos": ("astronaut", "chelsea", "coffee", "camera", "rocket", "immunohistochemistry"),
                       "page": "page", "grey": (0, 128, 255), "seed": 0},
            "fresh": {"photos": ("brick", "grass", "gravel", "coins", "moon", "clock", "hubble_deep_field", "cell",
                                 "retina", "shepp_logan_phantom"),
                      "page": "text", "grey": (32, 96, 192), "seed": 1}}


def _odd_inputs(images: list[Path], folder: Path, which: str = "design") -> dict[str, list[Path]]:
    from skimage import data
    from skimage.util import img_as_ubyte

    odd = ODD_SETS[which]
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[Path]] = {"photos": [], "text page": [], "blank": [], "noise": [], "x-ray turned 90°": [],
                                   "x-ray inverted": []}
    for name in odd["photos"]:
        path = folder / f"{name}.png"
        image = img_as_ubyte(getattr(data, name)())
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
        made["photos"].append(path)
    cv2.imwrite(str(folder / "page.png"), getattr(data, odd["page"])())
    made["text page"].append(folder / "page.png")
    rng = np.random.default_rng(odd["seed"])
    for value in odd["grey"]:
        cv2.imwrite(str(folder / f"blank{value}.png"), np.full((512, 512), value, np.uint8))
        made["blank"].append(folder / f"blank{value}.png")
    for i in range(3):
        cv2.imwrite(str(folder / f"noise{i}.png"), rng.integers(0, 256, (512, 512), np.uint8))
        made["noise"].append(folder / f"noise{i}.png")
    for i, image in enumerate(images):
        pixels = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        if i < 10:
            cv2.imwrite(str(folder / f"turned{i}.png"), cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE))
            made["x-ray turned 90°"].append(folder / f"turned{i}.png")
        cv2.imwrite(str(folder / f"inverted{i}.png"), 255 - pixels)
        made["x-ray inverted"].append(folder / f"inverted{i}.png")
    return made


def ood_bench(model_path: Path, test_images: list[Path], which: str = "design") -> dict:
    with tempfile.TemporaryDirectory() as tmp, Screener(model_path) as screener:
        groups = {"held-out test X-rays": test_images, **_odd_inputs(test_images, Path(tmp), which)}
        threshold = screener.ood.threshold if screener.ood else None
        out = {"threshold": threshold}
        for group, paths in groups.items():
            results = [screener.screen_file(p) for p in paths]
            scores = [r.ood_score for r in results]
            out[group] = {"n": len(results), "flagged": int(sum(bool(r.ood) for r in results)),
                          "score_median": float(np.median(scores)), "score_min": float(np.min(scores)),
                          "reasons": dict(Counter(r.ood_reason.split(" (")[0] for r in results if r.ood))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/demo/best-model"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--fresh", action="store_true",
                        help="out-of-distribution part only, on inputs never used to design the checks: other "
                             "photos, page, grey levels and noise, and held-out X-rays minus --exclude-test-of's")
    parser.add_argument("--exclude-test-of", type=Path, action="append", default=[],
                        help="a run whose test images were used to design the checks (leave them out)")
    args = parser.parse_args()
    tune_allocator()
    model = args.model / "model.pt" if args.model.is_dir() else args.model
    test = _test_images(model.parent, 200)
    excluded = {p for run in args.exclude_test_of for p in _test_images(run, 10_000)}
    kept = [p for p in test if p not in excluded]
    left_out, test = len(test) - len(kept), kept
    if not test:
        raise SystemExit(f"{model.parent / 'splits.csv'}: no test images")
    results = {"model": str(model), "torch_threads": torch.get_num_threads(), "test_images_left_out": left_out}
    print("out-of-distribution flags ...", flush=True)
    results["ood"] = ood_bench(model, test, "fresh" if args.fresh else "design")
    print(json.dumps(results["ood"], indent=1))
    if args.fresh:
        OUT.mkdir(exist_ok=True)
        (OUT / "serve-fresh.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {OUT / 'serve-fresh.json'}")
        return
    print("onnx ...", flush=True)
    results["onnx"] = onnx_bench(model, test[:8])
    print(json.dumps(results["onnx"], indent=1))
    print(f"load: {args.requests} requests from {args.clients} clients ...", flush=True)
    results["load"] = load_test(model, test[:40], args.requests, args.clients)
    print(json.dumps(results["load"], indent=1))
    print("one client, 30 requests in a row ...", flush=True)
    results["single_client"] = load_test(model, test[:40], 30, 1)
    print(json.dumps(results["single_client"], indent=1))
    if shutil.which("nproc"):
        results["cpus"] = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    OUT.mkdir(exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT / 'serve.json'}")


if __name__ == "__main__":
    main()
