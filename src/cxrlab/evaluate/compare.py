"""Two models on the same test images: DeLong for each class's AUC difference, McNemar for accuracy.

Both tests pair the models image by image, so they are far more sensitive than comparing two
confidence intervals, and they say when a difference is within noise. They treat images as
independent; several images of one patient make the p-values somewhat optimistic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.evaluate.delong import delong_test

ALPHA = 0.05


def load_evaluation(folder: str | Path) -> tuple[pd.DataFrame, tuple[str, ...], str]:
    """``(predictions, class names, model description)`` from a folder written by ``cxrlab evaluate``.

    Raises:
        ConfigError: the folder lacks ``predictions.csv`` or ``metrics.json``.
    """
    folder = Path(folder)
    predictions, metrics = folder / "predictions.csv", folder / "metrics.json"
    if not predictions.is_file() or not metrics.is_file():
        raise ConfigError(f"{folder}: no predictions.csv/metrics.json; run `cxrlab evaluate RUN --out {folder}` first")
    model = json.loads(metrics.read_text())["model"]
    frame = pd.read_csv(predictions, keep_default_na=False)
    return frame, tuple(model["class_names"]), f"{model['backbone']} (k={model['fine_tune']}) from {model['file']}"


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test on paired correctness: ``{"a_only", "b_only", "p_value"}``."""
    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame, class_names: tuple[str, ...], level: float = 0.95) -> dict:
    """Paired comparison of two prediction tables (``image``, ``label``, one column per class).

    Raises:
        ConfigError: the tables do not cover the same images with the same labels.
    """
    missing = set(a["image"]) ^ set(b["image"])
    if missing:
        raise ConfigError(f"the two evaluations cover different images ({len(missing)} in only one, e.g. "
                          f"{sorted(missing)[0]}); evaluate both models on the same data")
    joined = a.merge(b, on="image", suffixes=("_a", "_b"))
    if (joined["label_a"] != joined["label_b"]).any():
        raise ConfigError("the two evaluations give some images different labels (different class schemes?)")
    y = joined["label_a"].to_numpy()
    per_class, not_tested = {}, {}
    for name in class_names:
        positive = y == name
        if min(positive.sum(), (~positive).sum()) < 2:  # DeLong's variance needs two of each
            not_tested[name] = f"{int(positive.sum())} positive and {int((~positive).sum())} negative images"
            continue
        test = delong_test(positive.astype(int), joined[f"{name}_a"].to_numpy(float), joined[f"{name}_b"].to_numpy(float), level)
        per_class[name] = {**test, "significant": test["p_value"] < ALPHA}
    correct_a = (joined["predicted_a"] == y).to_numpy()
    correct_b = (joined["predicted_b"] == y).to_numpy()
    accuracy = {"a": float(correct_a.mean()), "b": float(correct_b.mean()), **mcnemar(correct_a, correct_b)}
    accuracy["significant"] = accuracy["p_value"] < ALPHA
    return {"n": int(len(joined)), "patients": int(joined["patient_id_a"].nunique()) if "patient_id_a" in joined else None,
            "level": level, "alpha": ALPHA, "accuracy": accuracy, "per_class": per_class, "not_tested": not_tested}


def render_comparison(result: dict, names: tuple[str, str]) -> str:
    """The comparison as Markdown."""
    a, b = names
    acc = result["accuracy"]
    verdict = lambda sig: "**yes**" if sig else "no, within noise"  # noqa: E731
    lines = ["# Model comparison", "", f"- A: {a}", f"- B: {b}", "",
             f"{result['n']} paired test images. Tests at α = {result['alpha']}; images are treated as independent.", "",
             "## Accuracy (exact McNemar test)", "", "| A | B | only A right | only B right | p | difference? |",
             "|---|---|---|---|---|---|",
             f"| {acc['a']:.3f} | {acc['b']:.3f} | {acc['a_only']} | {acc['b_only']} | {acc['p_value']:.3g} | "
             f"{verdict(acc['significant'])} |", "",
             f"## ROC AUC per class, one vs rest (DeLong; {result['level']:.0%} CI of A − B)", "",
             "| class | AUC A | AUC B | A − B | CI | p | difference? |", "|---|---|---|---|---|---|---|"]
    for name, t in result["per_class"].items():
        lines.append(f"| {name} | {t['auc_a']:.3f} | {t['auc_b']:.3f} | {t['difference']:+.3f} | "
                     f"{t['low']:+.3f} to {t['high']:+.3f} | {t['p_value']:.3g} | {verdict(t['significant'])} |")
    lines += [f"| {name} | — | — | — | — | — | not tested: {why} |" for name, why in result["not_tested"].items()]
    return "\n".join(lines) + "\n"


def compare_evaluations(folder_a: str | Path, folder_b: str | Path, out: str | Path) -> dict:
    """Compare two ``cxrlab evaluate`` outputs; writes ``comparison.json`` and ``comparison.md`` to ``out``."""
    pred_a, classes_a, name_a = load_evaluation(folder_a)
    pred_b, classes_b, name_b = load_evaluation(folder_b)
    if classes_a != classes_b:
        raise ConfigError(f"the models have different classes: {list(classes_a)} vs {list(classes_b)}")
    result = compare_predictions(pred_a, pred_b, classes_a)
    result["models"] = {"a": name_a, "b": name_b}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2))
    atomic_write_text(out / "comparison.md", render_comparison(result, (name_a, name_b)))
    return result
