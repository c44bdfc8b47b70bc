"""Benchmark: does test-time augmentation help the fold models on real radiographs?

Run: ``.venv/bin/python bench/bench_tta.py runs/recipes/NAME [...]`` on finished ``cxrlab train
--folds K`` folders. Each fold's model predicts its own out-of-fold images once plainly and once
averaged over the ``crops`` views (:mod:`cxrlab.models.tta`); prints out-of-fold COVID-19-vs-rest
AUC and macro-F1 of both with the paired patient-bootstrap interval of the difference, and the
seconds each took. Inference only: a few minutes on 2 cores. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score, roc_auc_score

from cxrlab.data.manifest import read_table, resolve_paths
from cxrlab.evaluate.bootstrap import bootstrap_cis
from cxrlab.models.predictor import Predictor
from cxrlab.models.tta import mean_probabilities

ROOT = Path(__file__).resolve().parents[1]


def oof(run: Path, mode: str) -> tuple[pd.DataFrame, float]:
    """Out-of-fold probabilities of every fold's model on its own fold, with ``mode`` views."""
    frames, seconds = [], 0.0
    for fold_dir in sorted((run / "folds").glob("fold*")):
        predictor = Predictor(fold_dir)
        model = predictor.model.eval()
        split = resolve_paths(read_table(fold_dir / "splits.csv"), fold_dir)
        held = split[split["split"] == "test"].reset_index(drop=True)
        kept, dataset, _ = predictor.dataset(held, run / f"prepared-tta-{fold_dir.name}")
        start = time.perf_counter()
        with torch.no_grad():
            probs = torch.cat([mean_probabilities(model, x, mode) for x, _ in
                               torch.utils.data.DataLoader(dataset, batch_size=16)]).numpy()
        seconds += time.perf_counter() - start
        frames.append(kept[["image", "patient_id", "source", "label"]].reset_index(drop=True).join(
            pd.DataFrame(probs, columns=list(model.class_names))))
    return pd.concat(frames, ignore_index=True), seconds


def scores(frame: pd.DataFrame, rows: np.ndarray | None = None) -> dict:
    part = frame if rows is None else frame.iloc[rows]
    names = ["COVID-19", "Pneumonia", "Normal"]
    predicted = part[names].to_numpy().argmax(1)
    truth = part["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    return {"covid_auc": roc_auc_score(part["label"] == "COVID-19", part["COVID-19"]),
            "macro_f1": f1_score(truth, predicted, average="macro")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    results = {}
    for run in args.runs:
        plain, plain_s = oof(run, "none")
        views, views_s = oof(run, "crops")
        both = plain.merge(views, on=["image", "patient_id", "source", "label"], suffixes=("", "_tta"))
        tta = both[["image", "patient_id", "source", "label"]].assign(
            **{n: both[f"{n}_tta"] for n in ("COVID-19", "Pneumonia", "Normal")})

        def difference(rows: np.ndarray, tta=tta, both=both) -> dict:
            a, b = scores(tta, rows), scores(both, rows)
            return {k: a[k] - b[k] for k in a}

        cis = bootstrap_cis(difference, both["patient_id"].to_numpy(), 1000, 0)
        results[run.name] = {"plain": scores(both), "crops": scores(tta), "difference": cis,
                             "seconds": {"plain": round(plain_s, 1), "crops": round(views_s, 1)}}
        r = results[run.name]
        print(f"{run.name}: COVID-19 AUC {r['plain']['covid_auc']:.3f} → {r['crops']['covid_auc']:.3f} "
              f"({cis['covid_auc']['value']:+.3f} [{cis['covid_auc']['low']:+.3f}, {cis['covid_auc']['high']:+.3f}]), "
              f"macro-F1 {r['plain']['macro_f1']:.3f} → {r['crops']['macro_f1']:.3f} "
              f"({cis['macro_f1']['value']:+.3f} [{cis['macro_f1']['low']:+.3f}, {cis['macro_f1']['high']:+.3f}]); "
              f"{plain_s:.0f} s → {views_s:.0f} s", flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "tta.json").write_text(json.dumps({"cpu": cpu, "runs": results}, indent=2, default=float) + "\n")
    print(cpu)


if __name__ == "__main__":
    main()
