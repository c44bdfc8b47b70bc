"""Two models on the same test images: is each class's AUC, and the accuracy, really different?

The differences are paired (both models on the same images), far more sensitive than comparing
two confidence intervals. Their intervals and p-values come from a bootstrap over **patients**
(several images of one patient are not independent evidence), and Holm's correction across the
comparisons (accuracy and every class) says which differences survive. DeLong's and McNemar's
image-level p-values are kept beside them for reference; they treat images as independent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cxrlab.core.defaults import DEFAULT_N_BOOT
from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.evaluate.bootstrap import bootstrap_cis, holm
from cxrlab.evaluate.delong import delong_test
from cxrlab.evaluate.metrics import binary_auc

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


def paired_differences(y: np.ndarray, scores_a: dict[str, np.ndarray], scores_b: dict[str, np.ndarray],
                       correct_a: np.ndarray, correct_b: np.ndarray, patients: np.ndarray, n_boot: int = DEFAULT_N_BOOT,
                       seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """A − B for accuracy (``accuracy``) and each class's one-vs-rest AUC (the class name), with
    patient-bootstrap intervals and two-sided p-values against no difference, Holm-adjusted across
    them (``p_holm``; ``survives``: below α after the correction)."""

    def difference(rows: np.ndarray) -> dict[str, float | None]:
        out: dict[str, float | None] = {"accuracy": float(correct_a[rows].mean() - correct_b[rows].mean())}
        for name in scores_a:
            positive = y[rows] == name
            a, b = binary_auc(positive, scores_a[name][rows]), binary_auc(positive, scores_b[name][rows])
            out[name] = None if a is None or b is None else a - b
        return out

    cis = bootstrap_cis(difference, patients, n_boot, seed, level, null=0.0)
    names = list(cis)
    for name, adjusted in zip(names, holm([cis[n]["p_value"] for n in names]), strict=True):
        cis[name].update(p_holm=adjusted, survives=adjusted is not None and adjusted < ALPHA)
    return cis


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame, class_names: tuple[str, ...], level: float = 0.95,
                        n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict:
    """Paired comparison of two prediction tables (``image``, ``label``, ``predicted``, one column per
    class; ``patient_id`` to resample patients, else each image is its own patient).

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
    patients = (joined["patient_id_a"] if "patient_id_a" in joined else joined["image"]).astype(str).to_numpy()
    tested, not_tested = [], {}
    for name in class_names:
        positive = y == name
        if min(positive.sum(), (~positive).sum()) < 2:  # DeLong's variance needs two of each
            not_tested[name] = f"{int(positive.sum())} positive and {int((~positive).sum())} negative images"
        else:
            tested.append(name)
    correct_a = (joined["predicted_a"] == y).to_numpy()
    correct_b = (joined["predicted_b"] == y).to_numpy()
    clustered = paired_differences(y, {n: joined[f"{n}_a"].to_numpy(float) for n in tested},
                                   {n: joined[f"{n}_b"].to_numpy(float) for n in tested}, correct_a, correct_b,
                                   patients, n_boot, seed, level)
    per_class = {}
    for name in tested:
        test = delong_test((y == name).astype(int), joined[f"{name}_a"].to_numpy(float), joined[f"{name}_b"].to_numpy(float), level)
        c = clustered[name]
        per_class[name] = {"auc_a": test["auc_a"], "auc_b": test["auc_b"], "difference": test["difference"],
                           "low": c["low"], "high": c["high"], "p_value": c["p_value"], "p_holm": c["p_holm"],
                           "significant": c["survives"], "delong_p_images": test["p_value"]}
    c = clustered["accuracy"]
    accuracy = {"a": float(correct_a.mean()), "b": float(correct_b.mean()), "low": c["low"], "high": c["high"],
                "p_value": c["p_value"], "p_holm": c["p_holm"], "significant": c["survives"]}
    exact = mcnemar(correct_a, correct_b)
    accuracy.update(a_only=exact["a_only"], b_only=exact["b_only"], mcnemar_p_images=exact["p_value"])
    return {"n": int(len(joined)), "patients": int(len(set(patients))), "level": level, "alpha": ALPHA,
            "n_boot": n_boot, "method": "paired bootstrap over patients, Holm-corrected across the comparisons",
            "accuracy": accuracy, "per_class": per_class, "not_tested": not_tested}


def render_comparison(result: dict, names: tuple[str, str]) -> str:
    """The comparison as Markdown."""
    a, b = names
    acc = result["accuracy"]
    verdict = lambda sig: "**yes**" if sig else "no, within noise"  # noqa: E731
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    lines = ["# Model comparison", "", f"- A: {a}", f"- B: {b}", "",
             f"{result['n']} paired test images of {result['patients']} patients. Intervals ({result['level']:.0%}) "
             f"and p-values from {result['n_boot']} bootstrap replicates over patients; a difference counts when "
             f"Holm's adjusted p is below α = {result['alpha']} (adjusted across accuracy and every class). The "
             "image-level DeLong/McNemar p treats images as independent (reference only).", "",
             "## Accuracy", "", "| A | B | A − B | CI | only A right | only B right | p | Holm p | McNemar p (images) "
             "| difference? |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| {acc['a']:.3f} | {acc['b']:.3f} | {acc['a'] - acc['b']:+.3f} | {fmt(acc['low'], '+.3f')} to "
             f"{fmt(acc['high'], '+.3f')} | {acc['a_only']} | {acc['b_only']} | {fmt(acc['p_value'], '.3g')} | "
             f"{fmt(acc['p_holm'], '.3g')} | {acc['mcnemar_p_images']:.3g} | {verdict(acc['significant'])} |", "",
             "## ROC AUC per class, one vs rest", "",
             "| class | AUC A | AUC B | A − B | CI | p | Holm p | DeLong p (images) | difference? |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, t in result["per_class"].items():
        lines.append(f"| {name} | {t['auc_a']:.3f} | {t['auc_b']:.3f} | {t['difference']:+.3f} | "
                     f"{fmt(t['low'], '+.3f')} to {fmt(t['high'], '+.3f')} | {fmt(t['p_value'], '.3g')} | "
                     f"{fmt(t['p_holm'], '.3g')} | {t['delong_p_images']:.3g} | {verdict(t['significant'])} |")
    lines += [f"| {name} | — | — | — | — | — | — | — | not tested: {why} |" for name, why in result["not_tested"].items()]
    return "\n".join(lines) + "\n"


def compare_evaluations(folder_a: str | Path, folder_b: str | Path, out: str | Path, n_boot: int = DEFAULT_N_BOOT,
                        seed: int = 0) -> dict:
    """Compare two ``cxrlab evaluate`` outputs; writes ``comparison.json`` and ``comparison.md`` to ``out``."""
    pred_a, classes_a, name_a = load_evaluation(folder_a)
    pred_b, classes_b, name_b = load_evaluation(folder_b)
    if classes_a != classes_b:
        raise ConfigError(f"the models have different classes: {list(classes_a)} vs {list(classes_b)}")
    result = compare_predictions(pred_a, pred_b, classes_a, n_boot=n_boot, seed=seed)
    result["models"] = {"a": name_a, "b": name_b}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2))
    atomic_write_text(out / "comparison.md", render_comparison(result, (name_a, name_b)))
    return result
