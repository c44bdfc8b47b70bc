"""Benchmark: the default recipe, out of fold on cxr-real's development part and once on its confirmation part.

Run: ``.venv/bin/python bench/bench_confirm.py [--out runs/confirm]``.
``cxrlab train --folds 5 --seed 0`` (the default recipe, chosen on out-of-fold predictions among
the rows of ``bench/bench_recipe.py``) on the development part of ``bench/confirmation.py``; then
``cxrlab evaluate`` of the resulting fold ensemble on the confirmation part, which no choice has
touched. Both resumable (a finished fold is reused). For each, and for the linear probe on frozen
features beside it (out of fold; and fitted on the whole development part, scored on the
confirmation part): COVID-19-vs-rest AUC and 3-class macro-F1 with 95% patient-bootstrap
intervals, per source, and inside the Cohen collection (COVID-19 against the rest there, where a
source shortcut cannot help); the fine-tune's COVID-19 AUC minus the probe's, clustered by patient.
Writes ``bench/out/confirm.json`` and prints a Markdown table. Nothing asserts.
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
from sklearn.metrics import f1_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from confirmation import ROOT, write_parts  # noqa: E402

OUT = ROOT / "bench" / "out"
CLASSES = ["COVID-19", "Normal", "Pneumonia"]
CLI = str(ROOT / ".venv" / "bin" / "cxrlab")


def figures(frame: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict:
    """COVID-19 AUC and macro-F1 (of ``predicted``: the most probable class) with patient-bootstrap intervals."""
    from cxrlab.evaluate.bootstrap import bootstrap_cis

    y = frame["label"].to_numpy()
    covid, predicted = frame["COVID-19"].to_numpy(), frame["predicted"].to_numpy()

    def stats(rows: np.ndarray) -> dict:
        positive = y[rows] == "COVID-19"
        return {"auc_covid": float(roc_auc_score(positive, covid[rows])) if 0 < positive.sum() < len(rows) else None,
                "f1_macro": float(f1_score(y[rows], predicted[rows], labels=CLASSES, average="macro", zero_division=0))}

    out = bootstrap_cis(stats, frame["patient_id"].to_numpy(), n_boot=n_boot, seed=seed)
    return {"n": len(frame), "patients": int(frame["patient_id"].nunique()), **out}


def by_source(frame: pd.DataFrame) -> dict:
    """Per source: images, accuracy, and the COVID-19 AUC where the source holds both kinds."""
    rows = {}
    for source, part in frame.groupby("source"):
        positive = part["label"] == "COVID-19"
        rows[str(source)] = {"n": len(part), "accuracy": float((part["predicted"] == part["label"]).mean()),
                             "auc_covid": float(roc_auc_score(positive, part["COVID-19"]))
                             if 0 < positive.sum() < len(part) else None}
    return rows


def probe_on_confirmation(run: Path, scored: Path, development: pd.DataFrame) -> pd.DataFrame:
    """The frozen-feature probe (the baseline every fine-tune must beat) fitted on the whole development
    part and scored on the confirmation part: its probabilities per confirmation image."""
    import yaml

    from cxrlab.train import build_config
    from cxrlab.workflows.baseline import _full_probabilities, fit_probe, frozen_features

    config = build_config(yaml.safe_load((run / "config.yaml").read_text()))
    confirm = pd.read_csv(scored / "predictions.csv")
    train_x = frozen_features(config, run / "prepared", development["image"].tolist(), CLASSES)
    test_x = frozen_features(config, scored / "prepared-test", confirm["image"].tolist(), CLASSES)
    y = np.array([CLASSES.index(v) for v in development["label"]])
    probe = fit_probe(train_x, y, development["patient_id"].to_numpy(), seed=0)
    out = confirm[["image", "patient_id", "source", "label"]].copy()
    out[CLASSES] = _full_probabilities(probe, test_x, len(CLASSES))
    return out


def paired(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """COVID-19 AUC of ``a`` minus ``b`` on the same images, clustered by patient (Obuchowski's DeLong)."""
    from cxrlab.evaluate.delong import clustered_delong_test

    both = a.merge(b, on="image", suffixes=("", "_b"))
    test = clustered_delong_test((both["label"] == "COVID-19").astype(int), both["COVID-19"], both["COVID-19_b"],
                                 both["patient_id"])
    return {k: test[k] for k in ("difference", "low", "high", "p_value")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "confirm")
    args = parser.parse_args()
    development, confirmation = write_parts(args.out)
    run, scored = args.out / "default", args.out / "default-on-confirmation"
    subprocess.run([CLI, "train", "--data", str(development), "--folds", "5", "--seed", "0", "--out", str(run)],
                   check=True, stdout=subprocess.DEVNULL)  # reuses finished folds
    trained = sum(json.loads(f.read_text())["timing"]["seconds_total"]
                  for f in sorted((run / "folds").glob("fold*/summary.json")))
    subprocess.run([CLI, "evaluate", str(run), "--data", str(confirmation), "--out", str(scored), "--no-gradcam"],
                   check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run / "summary.json").read_text())
    oof = pd.read_csv(run / "oof_predictions.csv")
    confirm = pd.read_csv(scored / "predictions.csv")
    development_rows = pd.read_csv(run / "oof_predictions.csv")[["image", "patient_id", "label"]]
    parts = {"out_of_fold": oof, "out_of_fold, probe": pd.read_csv(run / "baseline_oof_predictions.csv"),
             "confirmation": confirm, "confirmation, probe": probe_on_confirmation(run, scored, development_rows)}
    for frame in parts.values():  # macro-F1 of the most probable class, as the out-of-fold summary reports it
        frame["predicted"] = np.array(CLASSES)[frame[CLASSES].to_numpy().argmax(1)]
    result = {name: {"pooled": figures(frame), "per_source": by_source(frame),
                     "cohen": figures(frame[frame["source"] == "cohen"])} for name, frame in parts.items()}
    result["fine_tune_minus_probe_covid_auc"] = {
        "out_of_fold": paired(parts["out_of_fold"], parts["out_of_fold, probe"]),
        "confirmation": paired(parts["confirmation"], parts["confirmation, probe"])}
    result["probe_out_of_fold_summary"] = {k: summary["baseline"]["out_of_fold"]["pooled"][k]
                                           for k in ("auc_covid", "f1_macro")}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result.update(cpu=cpu, threads=os.cpu_count(), train_seconds=round(trained, 1))
    OUT.mkdir(exist_ok=True)
    (OUT / "confirm.json").write_text(json.dumps(result, indent=2) + "\n")

    def cell(v: dict) -> str:
        return "—" if v["value"] is None else f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

    print("| part | images (patients) | COVID-19 AUC | macro-F1 | COVID-19 AUC inside Cohen |")
    print("|---|---|---|---|---|")
    for name in parts:
        r = result[name]
        print(f"| {name} | {r['pooled']['n']} ({r['pooled']['patients']}) | {cell(r['pooled']['auc_covid'])} | "
              f"{cell(r['pooled']['f1_macro'])} | {cell(r['cohen']['auc_covid'])} |")
    for name, v in result["fine_tune_minus_probe_covid_auc"].items():
        print(f"\nfine-tune − probe, COVID-19 AUC, {name}: {v['difference']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}], "
              f"p {v['p_value']:.2f} (clustered by patient)")
    for name in parts:
        print(f"\n{name} per source:", json.dumps(result[name]["per_source"]))
    print(f"\n{cpu}; the folds' training {trained / 60:.0f} min")


if __name__ == "__main__":
    main()
