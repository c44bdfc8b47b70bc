"""Benchmark: which training recipe earns its keep on real radiographs (issue 17's ablation).

Run: ``.venv/bin/python bench/bench_recipe.py [--only NAME,NAME] [--out runs/recipes]``.
Each recipe is ``cxrlab train --folds 5 --seed 0`` on the development part of ``cxr-real``
(``bench/confirmation.py``; the rows measured before 2026-12-07 used all 527 images) with a few
settings changed from the one before it (or from a named parent); every run is resumable (a
finished fold is reused), so the script can be stopped and started again.

For each recipe: out-of-fold COVID-19-vs-rest AUC and 3-class macro-F1 with 95% patient-bootstrap
intervals, the paired difference from the linear probe on frozen features (COVID-19 AUC: with a
p clustered by patient, Holm-corrected across the rows), the COVID-19 AUC
inside the Cohen collection (COVID-19 vs the rest there: where a source shortcut cannot help) and
the wall time. Writes ``bench/out/recipe.json`` and prints a Markdown table. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from confirmation import REAL, ROOT, write_parts  # noqa: E402
OUT = ROOT / "bench" / "out"

AUGMENT = {"enabled": True, "rotation": 10, "crop_scale": [0.85, 1.0], "translate": 0.05, "brightness": 0.1,
           "contrast": 0.2, "gamma": 0.2, "hflip": False}
FULL = {"fine_tune": "all", "optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.05, "schedule": "cosine",
        "warmup_epochs": 1, "epochs": 12, "patience": 6, "select_on": "auc_macro", "select_smoothing": 2,
        "min_epochs": 3}
# the default from 2026-12-02 to 2026-12-04: full-lr1e-4 with patience 3 (the epoch kept on validation AUC)
AUC_KEPT = {**FULL, "patience": 3}
# name -> (parent, changed settings): each row of the ablation changes a few things of its parent
RECIPES: dict[str, tuple[str | None, dict]] = {
    "papers": (None, {"recipe": "papers"}),  # cxrlab's default before this ablation
    "select-auc": ("papers", {"select_on": "auc_macro", "select_smoothing": 2, "min_epochs": 2}),
    "k2-lr1e-4": ("select-auc", {"lr": 1e-4, "epochs": 15, "patience": 6}),
    "full-lr1e-4": ("papers", FULL),
    "full-aug": ("full-lr1e-4", {"augment": AUGMENT}),
    "auc-kept": ("papers", AUC_KEPT),  # the previous default
    # each on the previous default (augmentation lowered every figure)
    "full-hflip": ("auc-kept", {"augment": {"enabled": True, "rotation": 0, "crop_scale": [1.0, 1.0],
                                               "hflip": True}}),
    "full-ls": ("auc-kept", {"label_smoothing": 0.1}),
    "full-decay": ("auc-kept", {"lr": 3e-4, "lr_decay": 0.7}),
    "lite2-260": ("auc-kept", {"backbone": "efficientnet_lite2", "size": 260}),
    "full-ema": ("auc-kept", {"ema_decay": 0.95}),  # ~10 steps an epoch: the average spans ~2 epochs
    # a fixed schedule keeps the last epoch: no fold is spent on choosing one, so each run trains on 4/5
    "full-last6": ("auc-kept", {"select_on": "last", "epochs": 6}),
    "full-last10": ("auc-kept", {"select_on": "last", "epochs": 10}),  # became the default
    "default": (None, {}),  # the small-data recipe in TrainConfig's defaults: `cxrlab train --folds 5`
    "default-mixup": ("default", {"mixup": 0.2}),  # on the current default
}


def settings(name: str) -> dict:
    """A recipe's settings: its parent's, then its own."""
    parent, own = RECIPES[name]
    return {**(settings(parent) if parent else {}), **own}


def run(name: str, out: Path, train: bool = True, data: Path = REAL) -> dict:
    """Train the recipe (or reuse it; ``train=False``: only read a finished one) and read its figures;
    ``seconds`` is the command's wall time, or without training the sum of the folds' own."""
    folder = out / name
    config = folder.parent / f"{name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    config.write_text(yaml.safe_dump({"data": str(data), "folds": 5, "seed": 0, "out": str(folder),
                                      **settings(name)}))
    start = time.perf_counter()
    if train:
        subprocess.run([str(ROOT / ".venv" / "bin" / "cxrlab"), "train", "--config", str(config)], check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
    else:
        seconds = sum(json.loads(f.read_text())["timing"]["seconds_total"]
                      for f in sorted((folder / "folds").glob("fold*/summary.json")))
    summary = json.loads((folder / "summary.json").read_text())
    oof = pd.read_csv(folder / "oof_predictions.csv")
    cohen = oof[oof["source"] == "cohen"]
    pooled, versus = summary["out_of_fold"]["pooled"], summary["versus_baseline"]
    probe = pd.read_csv(folder / "baseline_oof_predictions.csv")
    both = oof.merge(probe, on="image", suffixes=("", "_probe"))
    from cxrlab.evaluate.delong import clustered_delong_test

    clustered = clustered_delong_test((both["label"] == "COVID-19").astype(int), both["COVID-19"],
                                      both["COVID-19_probe"], both["patient_id"])
    return {"recipe": name, "settings": settings(name), "seconds": round(seconds, 1),
            "covid_auc": pooled["auc_covid"], "macro_f1": pooled["f1_macro"], "accuracy": pooled["accuracy"],
            "covid_auc_vs_probe": {**versus["auc_covid"], "p_clustered": clustered["p_value"]},
            "macro_f1_vs_probe": versus["f1_macro"],
            "cohen_covid_auc": float(roc_auc_score(cohen["label"] == "COVID-19", cohen["COVID-19"])),
            "epochs_kept": [r["best_epoch"] for r in summary["runs"]],
            "probe": {k: summary["baseline"]["out_of_fold"]["pooled"][k]["value"] for k in ("auc_covid", "f1_macro")}}


def reweighted_f1(name: str, out: Path) -> dict:
    """Macro-F1 of a finished recipe's out-of-fold predictions called argmax(p * w), with per-class
    weights ``w`` chosen (grid, COVID-19's fixed at 1) on the other folds' predictions only: what
    per-class operating points fitted without the scored fold would buy."""
    from sklearn.metrics import f1_score

    oof = pd.read_csv(out / name / "oof_predictions.csv")
    names = ["COVID-19", "Normal", "Pneumonia"]
    probs, y, folds = oof[names].to_numpy(), oof["label"].map(names.index).to_numpy(), oof["fold"].to_numpy()
    grid = np.exp(np.linspace(-3, 3, 25))
    called = np.zeros(len(y), int)
    for k in np.unique(folds):
        rest = folds != k
        scores = {(a, b): f1_score(y[rest], (probs[rest] * [1, a, b]).argmax(1), average="macro")
                  for a in grid for b in grid}
        a, b = max(scores, key=scores.get)
        called[~rest] = (probs[~rest] * [1, a, b]).argmax(1)
    return {"argmax": float(f1_score(y, probs.argmax(1), average="macro")),
            "cross_fitted_weights": float(f1_score(y, called, average="macro"))}


def _interval(v: dict) -> str:
    return f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated recipe names (default: all, in order)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "recipes")
    parser.add_argument("--data", type=Path, help="the manifest (default: cxr-real's development part, from "
                                                  "bench/confirmation.py: recipe work never sees the confirmation part; "
                                                  "the rows below before 2026-12-07 used all of cxr-real)")
    parser.add_argument("--no-train", action="store_true", help="only tabulate finished recipes")
    parser.add_argument("--reweight", metavar="NAME", help="only: macro-F1 of a finished recipe with per-class "
                                                            "weights chosen on the other folds (reweighted_f1)")
    args = parser.parse_args()
    if args.reweight:
        print(json.dumps(reweighted_f1(args.reweight, args.out), indent=1))
        return
    names = args.only.split(",") if args.only else list(RECIPES)
    data = args.data or write_parts(args.out / "parts")[0]
    rows = []
    for name in names:
        print(f"{name} ...", flush=True)
        rows.append(run(name, args.out, train=not args.no_train, data=data))
        row = rows[-1]
        print(f"  COVID-19 AUC {_interval(row['covid_auc'])}, macro-F1 {_interval(row['macro_f1'])}, "
              f"Cohen COVID-19 AUC {row['cohen_covid_auc']:.3f}, {row['seconds']:.0f} s", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    OUT.mkdir(exist_ok=True)
    previous = json.loads((OUT / "recipe.json").read_text())["rows"] if (OUT / "recipe.json").exists() else []
    merged = {r["recipe"]: r for r in previous} | {r["recipe"]: r for r in rows}
    (OUT / "recipe.json").write_text(json.dumps({"cpu": cpu, "threads": os.cpu_count(), "rows": list(merged.values())},
                                                indent=2) + "\n")
    # every row is compared with the one probe: Holm across the rows (rows from before the clustered p have none)
    from cxrlab.evaluate.bootstrap import holm

    rows_p = [r["covid_auc_vs_probe"].get("p_clustered") for r in merged.values()]
    for r, p_holm in zip(merged.values(), holm(rows_p), strict=True):
        r["covid_auc_vs_probe"]["p_holm"] = p_holm
    print("\nThe best row is chosen by its maximum on these same out-of-fold predictions: its lead is optimistic; "
          "bench/bench_confirm.py scores the chosen recipe once on the untouched confirmation part.")
    print("\n| recipe | COVID-19 AUC | macro-F1 | COVID-19 AUC − probe (Holm p, clustered) | macro-F1 − probe | "
          "Cohen COVID-19 AUC | epochs kept | time |")
    print("|---|---|---|---|---|---:|---|---:|")
    for r in merged.values():
        versus = [f"{v['value']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" for v in
                  (r["covid_auc_vs_probe"], r["macro_f1_vs_probe"])]
        if r["covid_auc_vs_probe"].get("p_holm") is not None:
            versus[0] += f" ({r['covid_auc_vs_probe']['p_holm']:.2f})"
        print(f"| {r['recipe']} | {_interval(r['covid_auc'])} | {_interval(r['macro_f1'])} | {versus[0]} | {versus[1]} | "
              f"{r['cohen_covid_auc']:.3f} | {','.join(map(str, r['epochs_kept']))} | {r['seconds'] / 60:.0f} min |")
    print(f"\n{cpu}; probe (frozen features): COVID-19 AUC {np.mean([r['probe']['auc_covid'] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
