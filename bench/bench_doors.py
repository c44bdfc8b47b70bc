"""Do the doors agree on real images? One trained model, its held-out test patients, and every door:
predict, explain, serve (HTTP), evaluate and the study's test side. Prints the largest probability
difference from predict's and the number of images whose class differs, per door, and each door's time.

    python bench/bench_doors.py                       # trains a quick model on ../shared/data/cxr-real
    python bench/bench_doors.py --kind folds          # a fold ensemble (train --folds 3 on the train side)
    python bench/bench_doors.py --run runs/R1         # an existing run folder (its splits.csv test side)

The quick models (head only, 2 epochs) are not meant to be good: the doors must agree on any model.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from cxrlab.cli import app

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "cxr-real" / "manifest.csv"


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    if result.exit_code not in (0, 3):
        raise SystemExit(f"cxrlab {' '.join(args[:2])} failed:\n{result.output[-3000:]}")
    return result.output


def _train(kind: str, work: Path) -> Path:
    common = ["--fine-tune", "0", "--epochs", "2", "--size", "224", "--set", "select_on=last",
              "--set", f"mlflow_uri=sqlite:///{work / 'mlflow.db'}"]
    if kind == "single":
        _cli("train", "--data", str(REAL), "--out", str(work / "run"), *common)
        return work / "run"
    _cli("split", "--data", str(REAL), "--out", str(work / "split"), "--ratios", "8:1:1", "--folds", "0")
    _cli("train", "--splits", str(work / "split" / "splits.csv"), "--folds", "3", "--out", str(work / "run"), *common)
    return work / "run"


def _doors(run: Path, work: Path) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    from fastapi.testclient import TestClient

    from cxrlab.data.manifest import read_table, resolve_paths
    from cxrlab.models import load_model
    from cxrlab.serve import ServeSettings, create_app
    from cxrlab.workflows.predictions import predict_test_side

    names = list(load_model(run)[0].class_names)
    split = resolve_paths(read_table(run / "splits.csv"), run)
    test = split[split["split"] == "test"].reset_index(drop=True)
    images = test["image"].tolist()
    tables, seconds = {}, {}
    for door, stem in (("predict", "predictions"), ("explain", "explanations")):
        start = time.perf_counter()
        _cli(door, str(run), *images, "--out", str(work / door))
        seconds[door] = time.perf_counter() - start
        tables[door] = pd.read_csv(work / door / f"{stem}.csv", keep_default_na=False)
    start = time.perf_counter()
    with TestClient(create_app(run, ServeSettings())) as client:
        rows = []
        for image in images:
            body = client.post("/predict", files={"file": (Path(image).name, Path(image).read_bytes())}).json()
            rows.append({"image": image, **body["probabilities"], "predicted": body["predicted"]})
    seconds["serve"] = time.perf_counter() - start
    tables["serve"] = pd.DataFrame(rows)
    start = time.perf_counter()
    _cli("evaluate", str(run), "--out", str(work / "evaluate"), "--no-gradcam", "--n-boot", "50")
    seconds["evaluate"] = time.perf_counter() - start
    tables["evaluate"] = pd.read_csv(work / "evaluate" / "predictions.csv", keep_default_na=False)
    side = work / "side"
    side.mkdir()
    (side / "model.pt").symlink_to(run / "model.pt")
    start = time.perf_counter()
    frame = predict_test_side(side, test, side / "work")
    seconds["test side"] = time.perf_counter() - start
    from cxrlab.models.predictor import Predictor

    tables["test side"] = frame.assign(predicted=Predictor(run).decision.decide_all(frame[names].to_numpy()))
    keyed = {door: t.assign(key=[Path(i).name for i in t["image"]]).set_index("key")[[*names, "predicted"]]
             for door, t in tables.items()}
    return keyed, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing run folder (default: train a quick one)")
    parser.add_argument("--kind", choices=("single", "folds"), default="single")
    args = parser.parse_args()
    if args.run is None and not REAL.exists():
        raise SystemExit(f"no real data at {REAL}")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    work = Path(tempfile.mkdtemp(prefix="cxrlab-doors-"))
    try:
        run = args.run or _train(args.kind, work)
        tables, seconds = _doors(run, work)
        reference = tables["predict"]
        print(f"{len(reference)} held-out images; {cpu}")
        print("| door | largest probability difference from predict | classes that differ | seconds |")
        print("|---|---:|---:|---:|")
        for door, table in tables.items():
            table = table.loc[reference.index]
            diff = float(np.abs(table.drop(columns="predicted").to_numpy(float)
                                - reference.drop(columns="predicted").to_numpy(float)).max())
            differ = int((table["predicted"] != reference["predicted"]).sum())
            print(f"| {door} | {diff:.1e} | {differ} | {seconds.get(door, float('nan')):.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
