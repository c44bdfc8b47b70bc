"""Benchmark: are models trained on the phantoms right for the right reason, and does Grad-CAM show it?

Run: ``.venv/bin/python bench/bench_phantom_evidence.py [--only NAME,NAME]`` (about 5 minutes a run
on 2 cores). Trains efficientnet_lite0 on 240 phantom patients (256 px) at two fine-tuning degrees,
and at k = 2 guided by the lung masks with each attention loss (``outside_share``, ``gain``), then, on 60 fresh
phantoms rendered twice — with and without their planted opacity, all else equal:

* **counterfactual**: the share of COVID-19/Pneumonia phantoms that the model calls Normal once the
  opacity is removed (near 1: the model's decision rests on the finding itself);
* **pointing game**: the share whose map peak (true class) lies on the opacity, within 15 px at
  224 px, for Grad-CAM, HiResCAM and LayerCAM at the last block (7×7 grid) and at ``fine``, the
  last block with a finer grid (14×14).

Prints a table and writes ``bench/out/phantom_evidence.json``. Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cxrlab.data import generate_phantoms
from cxrlab.data.synthetic import SOURCES, random_anatomy, render_phantom
from cxrlab.explain import lesion_evidence
from cxrlab.models import load_model
from cxrlab.preprocess.pipeline import build_transforms
from cxrlab.preprocess.transforms import to_model_input
from cxrlab.train import build_config, train

RUNS = {"k=2": {"fine_tune": 2, "epochs": 8},
        "all (augmented)": {"fine_tune": "all", "epochs": 8, "augment": {"enabled": True}},
        # guided by the lung masks during training only (the masks are not an input): does the map follow?
        "k=2 guided (outside share)": {"fine_tune": 2, "epochs": 8, "attention_loss": 1.0},
        "k=2 guided (GAIN)": {"fine_tune": 2, "epochs": 8, "attention_loss": 1.0, "attention_form": "gain"}}
MAPS = [("gradcam", "last"), ("gradcam", "fine"), ("hirescam", "fine"), ("layercam", "fine")]


def counterfactual_pairs(folder: Path, n: int, size: int = 256) -> pd.DataFrame:
    """``n`` fresh phantoms (half COVID-19, half Pneumonia), each written with and without its opacity."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = ("COVID-19", "Pneumonia")[i % 2]
        anatomy = random_anatomy(np.random.default_rng(10_000 + i))
        paths = {}
        for kind, with_lesion in (("with", True), ("without", False)):
            image, _, lesion = render_phantom(size, label, anatomy, np.random.default_rng(20_000 + i),
                                              SOURCES[(i // 2) % 2], with_lesion=with_lesion)
            paths[kind] = folder / f"{kind}-{i:03d}.png"
            cv2.imwrite(str(paths[kind]), image)
        cv2.imwrite(str(folder / f"lesion-{i:03d}.png"), lesion)
        rows.append({"image": str(paths["with"]), "without": str(paths["without"]),
                     "lesion": str(folder / f"lesion-{i:03d}.png"), "label": label})
    return pd.DataFrame(rows)


def predict(model, preprocess, paths: list[str]) -> list[str]:
    transforms = build_transforms(preprocess)
    spec = model.spec
    x = torch.stack([torch.from_numpy(to_model_input(transforms(cv2.imread(p, 0))[0], spec.mean, spec.std,
                                                     spec.in_chans)) for p in paths])
    with torch.no_grad():
        return [model.class_names[i] for i in model(x).argmax(1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--only", help=f"comma-separated runs (default: all of {', '.join(RUNS)})")
    args = parser.parse_args()
    runs = {name: RUNS[name] for name in args.only.split(",")} if args.only else RUNS
    out = Path(__file__).parent / "out"
    saved = out / "phantom_evidence.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = generate_phantoms(tmp / "phantoms", n_patients=240, size=256, seed=1)
        pairs = counterfactual_pairs(tmp / "pairs", args.pairs)
        for name, overrides in runs.items():
            config = build_config({"data": str(manifest), "out": str(tmp / name.replace(" ", "_")), "seed": 0,
                                   "mlflow_uri": f"sqlite:///{tmp / 'mlflow.db'}", **overrides})
            result = train(config)
            model, preprocess, _ = load_model(result.out / "model.pt")
            frame = pairs.assign(predicted=predict(model, preprocess, pairs["image"].tolist()))
            without = predict(model, preprocess, pairs["without"].tolist())
            row = {"val_accuracy": json.loads((result.out / "summary.json").read_text())["val"]["accuracy"],
                   "correct_with_opacity": float((frame["predicted"] == frame["label"]).mean()),
                   "normal_without_opacity": float(np.mean([p == "Normal" for p in without]))}
            for method, layer in MAPS:
                table = lesion_evidence(model, preprocess, frame, method, layer)
                row[f"pointing hit rate, {method} @ {layer}"] = float(table["hit"].mean())
                row[f"median map share on lesion, {method} @ {layer}"] = float(table["lesion_share"].median())
            row["median lesion area"] = float(table["lesion_area"].median())
            results[name] = row
            print(name, json.dumps(row, indent=1, ensure_ascii=False), flush=True)
            out.mkdir(exist_ok=True)
            saved.write_text(json.dumps(results, indent=2, ensure_ascii=False))  # earlier runs' rows are kept
    print(pd.DataFrame(results).to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
