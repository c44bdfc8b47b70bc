"""Benchmark: the papers' hypothesis — does steering a model to the lungs help? — on uniform masks.

Run: ``.venv/bin/python bench/bench_guidance.py [--folds 3] [--out runs/guidance]``.

1. Masks of one origin and one quality for every image: ``cxrlab segment crossfit`` on the
   development part of ``bench/confirmation.py`` (each image masked by a segmenter that never saw
   its patient), and the confirmation part masked by fold 0's segmenter (trained on development
   patients only). Their Dice against the hand-drawn masks, per source and class, is in
   ``masks/summary.json``.
2. Each variant, ``cxrlab train --folds K --seed 0`` on the masked development part (the same
   folds for all): the default recipe; lung crop; the attention loss in both forms (cxrlab's
   ``outside_share`` and GAIN's ``gain``, alpha 1); burned-in text removal (``artifacts:
   inpaint``). Then ``cxrlab evaluate`` of each fold ensemble on the masked confirmation part.
3. For each variant, out of fold and on the confirmation part: COVID-19 AUC and macro-F1 with
   95% patient-bootstrap intervals, the COVID-19 AUC inside Cohen, and the COVID-19 AUC against
   the default's, paired and clustered by patient (Obuchowski's DeLong), Holm-corrected across
   the four variants.

Resumable (finished folds and evaluations are reused). Writes ``bench/out/guidance.json`` and
prints Markdown tables. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_confirm import CLASSES, CLI, by_source, figures  # noqa: E402
from confirmation import ROOT, write_parts  # noqa: E402

OUT = ROOT / "bench" / "out"
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "lung crop": ["--set", "lung_crop=true"],
    "attention loss (outside share)": ["--set", "attention_loss=1.0", "--set", "attention_form=outside_share"],
    "attention loss (GAIN)": ["--set", "attention_loss=1.0", "--set", "attention_form=gain"],
    "text removal": ["--set", "artifacts=inpaint"],
}


def _run(args: list[str]) -> None:
    subprocess.run([CLI, *args], check=True, stdout=subprocess.DEVNULL)


def masks(out: Path, development: Path, confirmation: Path) -> tuple[Path, Path]:
    """Crossfit masks for the development part, fold 0's segmenter's for the confirmation part."""
    _run(["segment", "crossfit", "--data", str(development), "--out", str(out / "masks"), "--folds", "3",
          "--epochs", "10"])
    confirm = out / "confirm-masks"
    if not (confirm / "manifest.csv").exists():
        _run(["segment", "predict", str(out / "masks" / "fold0"), "--data", str(confirmation), "--out", str(confirm),
              "--replace"])
    return out / "masks" / "manifest.csv", confirm / "manifest.csv"


def paired_vs(default: pd.DataFrame, other: pd.DataFrame) -> dict:
    """Other minus default, COVID-19 AUC, clustered by patient."""
    from cxrlab.evaluate.delong import clustered_delong_test

    both = other.merge(default, on="image", suffixes=("", "_default"))
    test = clustered_delong_test((both["label"] == "COVID-19").astype(int), both["COVID-19"],
                                 both["COVID-19_default"], both["patient_id"])
    return {k: float(test[k]) for k in ("difference", "low", "high", "p_value")}


def main() -> None:
    from cxrlab.evaluate.bootstrap import holm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "guidance")
    args = parser.parse_args()
    development, confirmation = write_parts(args.out / "parts")
    masked_dev, masked_confirm = masks(args.out, development, confirmation)
    predictions: dict[str, dict[str, pd.DataFrame]] = {}
    seconds = {}
    for name, settings in VARIANTS.items():
        folder = args.out / name.replace(" ", "-").replace("(", "").replace(")", "")
        print(f"{name} ...", flush=True)
        _run(["train", "--data", str(masked_dev), "--folds", str(args.folds), "--seed", "0", "--out",
              str(folder / "run"), *settings])
        if not (folder / "confirmation" / "predictions.csv").exists():
            _run(["evaluate", str(folder / "run"), "--data", str(masked_confirm), "--out", str(folder / "confirmation"),
                  "--no-gradcam"])
        seconds[name] = sum(json.loads(f.read_text())["timing"]["seconds_total"]
                            for f in sorted((folder / "run" / "folds").glob("fold*/summary.json")))
        parts = {"out_of_fold": pd.read_csv(folder / "run" / "oof_predictions.csv"),
                 "confirmation": pd.read_csv(folder / "confirmation" / "predictions.csv")}
        for frame in parts.values():
            frame["predicted"] = np.array(CLASSES)[frame[CLASSES].to_numpy().argmax(1)]
        predictions[name] = parts
    result: dict = {"folds": args.folds, "variants": {}}
    for part in ("out_of_fold", "confirmation"):
        versus = {name: paired_vs(predictions["default"][part], p[part]) for name, p in predictions.items()
                  if name != "default"}
        for (name, v), p_holm in zip(versus.items(), holm([v["p_value"] for v in versus.values()]), strict=True):
            v["p_holm"] = p_holm
        for name, p in predictions.items():
            frame = p[part]
            result["variants"].setdefault(name, {"settings": VARIANTS[name], "train_seconds": round(seconds[name])})[
                part] = {"pooled": figures(frame), "per_source": by_source(frame),
                         "cohen": figures(frame[frame["source"] == "cohen"]), "versus_default": versus.get(name)}
    crossfit = json.loads((args.out / "masks" / "summary.json").read_text())
    result["masks"] = {"dice_vs_given": crossfit.get("dice_vs_given"), "held_out_dice": crossfit.get("held_out_dice")}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result.update(cpu=cpu, threads=os.cpu_count())
    OUT.mkdir(exist_ok=True)
    (OUT / "guidance.json").write_text(json.dumps(result, indent=2) + "\n")

    def cell(v: dict) -> str:
        return "—" if v["value"] is None else f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

    for part in ("out_of_fold", "confirmation"):
        print(f"\n{part}:\n")
        print("| variant | COVID-19 AUC | macro-F1 | COVID-19 AUC inside Cohen | − default (Holm p) |")
        print("|---|---|---|---|---|")
        for name, r in result["variants"].items():
            v, x = r[part], r[part]["versus_default"]
            versus = "—" if x is None else f"{x['difference']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}] ({x['p_holm']:.2f})"
            print(f"| {name} | {cell(v['pooled']['auc_covid'])} | {cell(v['pooled']['f1_macro'])} | "
                  f"{cell(v['cohen']['auc_covid'])} | {versus} |")
    print(f"\n{cpu}; training minutes: " + ", ".join(f"{k} {v / 60:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
