"""The study report: the comparison table, metric-vs-fine-tuning-degree figures, the test side."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cxrlab.core.run_folder import SPLITS
from cxrlab.core.io import atomic_write_text  # noqa: E402
from cxrlab.data.classes import POSITIVE_CLASS  # noqa: E402
from cxrlab.data.manifest import read_table  # noqa: E402
from cxrlab.data.mask_provenance import mask_coverage  # noqa: E402
from cxrlab.evaluate.report import html_page, markdown_page  # noqa: E402
from cxrlab.study.config import StudyConfig  # noqa: E402
from cxrlab.study.results import METRICS  # noqa: E402

LABELS = {"accuracy": "accuracy", "sensitivity": f"{POSITIVE_CLASS} sensitivity",
          "specificity": f"{POSITIVE_CLASS} specificity", "auc_macro": "macro ROC AUC"}


def _num(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _mean_sd(row: pd.Series, metric: str) -> str:
    """``mean ± sd`` over runs, and with repeats the sd over seeds: ``0.812 ± 0.031 (seeds ± 0.012)``."""
    mean, sd, seeds = row.get(f"{metric}_mean"), row.get(f"{metric}_sd"), row.get(f"{metric}_sd_seeds")
    return (_num(mean) + ("" if _missing(sd) else f" ± {sd:.3f}")
            + ("" if _missing(seeds) else f" (seeds ± {seeds:.3f})"))


def _with_ci(row: pd.Series, key: str, digits: int = 3) -> str:
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (low, high)):
        return _num(row.get(key), digits)
    return f"{_num(row.get(key), digits)} [{low:.2f}, {high:.2f}]"


def _has(summary: pd.DataFrame, column: str) -> bool:
    return column in summary and pd.to_numeric(summary[column], errors="coerce").notna().any()


def plot_test_side(summary: pd.DataFrame, best: str | None, path: Path) -> Path:
    """Per configuration on the test side: accuracy, macro AUC and (with lung masks) the Grad-CAM
    in-lung share, each with its 95% interval; right for the right reason next to right."""
    panels = [("test_accuracy", "test accuracy"), ("test_auc_macro", "test macro ROC AUC")]
    if _has(summary, "test_in_lung_share"):
        panels.append(("test_in_lung_share", "Grad-CAM evidence inside the lungs"))
    if _has(summary, "test_road"):
        panels.append(("test_road", "ROAD (map faithfulness)"))
    factors = [c for c in summary.columns if c.startswith("factor.")]
    labels = [", ".join(str(r[f]) for f in factors) for _, r in summary.iterrows()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 0.5 * len(summary) + 1.8), squeeze=False)
    for axis, (key, title) in zip(axes[0], panels, strict=True):
        values = pd.to_numeric(summary[key], errors="coerce")
        low = (values - pd.to_numeric(summary.get(f"{key}_low"), errors="coerce")).fillna(0).clip(lower=0)
        high = (pd.to_numeric(summary.get(f"{key}_high"), errors="coerce") - values).fillna(0).clip(lower=0)
        colours = ["tab:red" if c == best else "tab:blue" for c in summary["cell"]]
        bars = axis.barh(labels, values.fillna(0), xerr=[low, high], color=colours, alpha=0.75, capsize=3)
        if key == "test_in_lung_share":  # a guided configuration's share is what it was trained on: hatched
            circular = [bar for bar, (_, row) in zip(bars, summary.iterrows(), strict=True) if _circular(row)]
            for i, bar in enumerate(circular):
                bar.set(hatch="//", alpha=0.35, label="trained on it (circular)" if i == 0 else None)
        if key == "test_road":
            axis.axvline(0, color="grey", linewidth=0.8)
        if key == "test_in_lung_share":
            axis.scatter(summary.get("test_even_share", summary["test_lung_area"]), labels, marker="|", s=200,
                         color="black", zorder=5, label="evenly spread evidence over what the model sees")
            axis.legend(fontsize=7, loc="lower right")
        axis.set(title=title, **({} if key == "test_road" else {"xlim": (0, 1.02)}))  # ROAD: a signed change
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    for axis in axes[0][1:]:
        axis.set_yticklabels([])
    fig.suptitle("test side: each configuration's fold ensemble, 95% patient-bootstrap intervals (red: best)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics(summary: pd.DataFrame, best: str | None, path: Path) -> Path:
    """Each metric (mean ± sd over folds) against the fine-tuning degree, one line per other-factor
    combination; without a ``fine_tune`` factor, against the cell."""
    factors = [c for c in summary.columns if c.startswith("factor.")]
    x_factor = "factor.fine_tune" if "factor.fine_tune" in factors else None
    others = [c for c in factors if c != x_factor]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.8), squeeze=False)
    groups = summary.groupby(others, sort=False) if others else [("all", summary)]
    for axis, metric in zip(axes[0], METRICS, strict=True):
        for name, part in groups:
            xs = part[x_factor].astype(str).tolist() if x_factor else part["cell"].tolist()
            axis.errorbar(xs, part[f"{metric}_mean"], yerr=part[f"{metric}_sd"].fillna(0), marker="o", capsize=3,
                          label=", ".join(map(str, name)) if isinstance(name, tuple) else str(name))
            for x, cell, y in zip(xs, part["cell"], part[f"{metric}_mean"], strict=True):
                if cell == best:
                    axis.scatter([x], [y], s=160, facecolors="none", edgecolors="red", zorder=5)
        axis.set(title=LABELS[metric], xlabel="fine-tuned blocks k" if x_factor else "cell", ylim=(0, 1.02))
        axis.grid(alpha=0.3)
        if not x_factor:
            axis.tick_params(axis="x", rotation=60, labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("validation folds: mean ± sd (red ring: the best configuration)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _circular(row: pd.Series) -> bool:
    """Whether a configuration was trained to put its evidence inside the lung masks (guided attention)."""
    value = row.get("test_lung_circular")
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def _tables(config: StudyConfig, table: pd.DataFrame, summary: pd.DataFrame, best: str | None) -> list[tuple[str, list[str], list[list[str]]]]:
    factors = [c for c in summary.columns if c.startswith("factor.")]
    header = [f.removeprefix("factor.") for f in factors] + [
        "folds ok", "accuracy", "sensitivity", "specificity", "AUC", "params", "trainable params", "s/epoch",
        f"Holm p vs best ({config.select_metric})", "test accuracy [95% CI]", "test AUC [95% CI]",
        f"test {POSITIVE_CLASS} AUC", "Holm p vs best (test, patients)"]
    shares = _has(summary, "test_in_lung_share")
    if shares:
        header.append("test in-lung share [95% CI] (evenly spread: its own baseline)")
    road = _has(summary, "test_road")
    if road:
        header.append("test ROAD [95% CI] (map faithfulness)")
    rows = []
    for _, r in summary.iterrows():
        noise = "" if r.get("within_noise") is None else (" (noise)" if r["within_noise"] else " (differs)")
        mark = "**best** " if r["cell"] == best else ""
        rows.append([mark + str(r[factors[0]])] + [str(r[f]) for f in factors[1:]] + [
            f"{r['folds_ok']}/{config.num_folds * config.repeats}", *(_mean_sd(r, m) for m in METRICS),
            f"{int(r['params']):,}" if pd.notna(r.get("params")) else "—",
            f"{int(r['trainable_params']):,}" if pd.notna(r.get("trainable_params")) else "—",
            _num(r.get("seconds_per_epoch"), 1), _num(r.get("p_vs_best_holm", r.get("p_vs_best"))) + noise,
            _with_ci(r, "test_accuracy"), _with_ci(r, "test_auc_macro"), _num(r.get("test_auc_covid")),
            _num(r.get("test_p_holm", r.get("test_p_vs_best")))] + ([f"{_with_ci(r, 'test_in_lung_share', 2)} ({_num(r.get('test_even_share', r.get('test_lung_area')), 2)})"
                                               + (" — trained on it: circular, not comparable" if _circular(r) else "")]
                                              if shares else []) + ([_with_ci(r, "test_road", 3)] if road else []))
    runs = f"{config.num_folds} validation fold(s)" + (
        f" × {config.repeats} seeds (and the sd over seeds of the mean over folds)" if config.repeats > 1 else "")
    out = [(f"Configurations: mean ± sd over {runs}; sensitivity/specificity of "
            f"{POSITIVE_CLASS}; the best is the configuration with the highest mean validation score, so its lead over "
            "the others on validation is optimistic (the test-side p is on patients the choice did not see); test "
            "columns: each configuration's runs as one ensemble (mean probability) on the held-out test side (intervals: "
            "patient bootstrap; in-lung share: mean share of the Grad-CAM evidence for the predicted class inside the "
            "lung mask, beside what evidence spread evenly over the region the model sees would score; ROAD: confidence "
            "lost removing the map's least minus its most relevant pixels, halved: higher = the map points at what "
            "the model uses, ~0 for a random map)",
            header, rows)]
    failed = table[table["status"] == "failed"]
    if len(failed):
        out.append(("Failed runs (recorded; the others went on)", ["cell", "run", "error"],
                    [[r["cell"], str(r.get("run", r["fold"])), str(r["error"])[:200]] for _, r in failed.iterrows()]))
    return out


def _loso_table(loso: dict) -> tuple[str, list[str], list[list[str]]]:
    rows = []
    for source, r in loso["sources"].items():
        classes = ", ".join(f"{k} {v}" for k, v in r["classes"].items())
        if r["status"] != "ok":
            rows.append([source, str(r["images"]), classes, "failed: " + str(r.get("error", ""))[:120], "", "", ""])
            continue
        recall = ", ".join(f"{k} {v:.2f}" for k, v in r["recall"].items())
        reference = f"{_num(r.get('reference'))} ({r['reference_kind']})" if "reference_kind" in r else "—"
        rows.append([source, str(r["images"]), classes, _num(r["accuracy"]), reference, _num(r["auc_macro"]), recall])
    side = (loso.get("in_distribution") or {}).get("side", "validation (optimistic)")
    return (f"Leave one source out: {loso['cell']} trained on the other sources, tested on the unseen one, beside the "
            f"same figure in distribution ({side}; for a source holding one class its accuracy is that class's "
            "recall, so the class's in-distribution recall is the reference)",
            ["unseen source", "images", "classes", "accuracy", "in distribution", "macro AUC", "recall per class"], rows)


def _probe_table(audit: dict) -> tuple[str, list[str], list[list[str]]]:
    rows = []
    for features, probe in audit["probes"].items():
        for scope, p in [("all images", probe["all"])] + [(f"{label} only", q) for label, q in probe["within_class"].items()]:
            if "skipped" in p:
                rows.append([features, scope, "—", "—", "—", "—", p["skipped"]])
            else:
                mix = ", ".join(f"{k} {v}" for k, v in p["sources"].items())
                interval = f" [{_num(p.get('low'), 2)}, {_num(p.get('high'), 2)}]" if p.get("low") is not None else ""
                verdict = "**yes**" if p.get("above_chance") else "no"
                rows.append([features, scope, str(p["n"]), _num(p["balanced_accuracy"], 2) + interval,
                             _num(p["chance"], 2), verdict, mix])
    v = next(iter(audit["probes"].values())).get("association") if audit["probes"] else None
    return ("Source probe: a logistic regression on the pooled last-block features predicts each image's source "
            f"(patient-grouped cross-validation), balanced accuracy with its 95% patient-bootstrap interval; above chance "
            f"when the interval lies above 1 / number of sources. Source × class association: Cramér's V {_num(v, 2)} "
            "(0 = classes spread evenly over sources, 1 = each source holds one class)",
            ["features", "images probed", "n", "balanced accuracy [95% CI]", "chance", "above chance?",
             "images per source"], rows)


def _lung_tables(audit: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    inputs, share = audit["masked_inputs"], audit["lung_evidence"]
    rows = []
    for variant, v in inputs["variants"].items():
        recall = ", ".join(f"{k} {r:.2f}" for k, r in v["recall"].items())
        rows.append([variant, _num(v["accuracy"], 2), _num(v["p_above_chance"]), _num(v["auc_positive"], 2),
                     _num(v["p_auc_above_half"]), _num(v["auc_macro"], 2), recall])
    positive = inputs.get("positive", "")
    tables = [(f"The best model on {inputs['n']} test images with lung masks, whole and with the lungs or everything "
               f"else blacked out. Always naming the commonest class scores accuracy "
               f"{_num(inputs['no_information_rate'], 2)}. p: one-sided, from a bootstrap over patients, of accuracy "
               f"above that and of the {positive} AUC above 0.5; Holm-corrected across the two for the verdict. "
               "Evidence that survives removing the lungs lies outside them",
               ["input", "accuracy", "p above chance", f"{positive} AUC", "p above 0.5", "macro AUC", "recall per class"],
               rows)]
    if share.get("n"):
        tables.append((f"Grad-CAM evidence inside the lungs ({share['n']} test images; a map spread evenly would "
                       f"score {_num(share.get('median_even_share', share['median_lung_area']), 2)} over what the model sees)",
                       ["true class / prediction", "images", "median in-lung share", "mostly outside (< 0.5)"],
                       [[g, str(v["n"]), _num(v["median"], 2), str(v["below_half"])] for g, v in share["groups"].items()]))
    return tables


def _audit_tables(audit: dict | None) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    if audit and audit.get("source_probe", {}).get("probes"):
        tables.append(_probe_table(audit["source_probe"]))
    if audit and "masked_inputs" in audit.get("lungs", {}):
        tables += _lung_tables(audit["lungs"])
    return tables


def _refit_table(refit: dict) -> tuple[str, list[str], list[list[str]]]:
    settings = refit["settings"]
    length = (f"{settings['epochs']} epoch(s)" if "epochs" in settings
              else f"phases of {', '.join(str(p['epochs']) for p in settings['phases'])} epoch(s)" if "phases" in settings
              else "the epochs")
    title = (f"Refit: {refit['cell']} trained once more on all {refit['train_images']} train+validation images for "
             f"{length} (per phase, the median its runs kept), scored on the test side beside its fold ensemble "
             "(p: paired bootstrap over the test patients)")
    if refit["status"] != "ok":
        return title, ["model", "result"], [["refit", "failed: " + str(refit.get("error", ""))[:200]]]
    test, fold = refit["test"], refit.get("fold_model_test", {})
    rows = [["refit on train+validation (refit-model/)", _with_ci(pd.Series(test), "test_accuracy"),
             _with_ci(pd.Series(test), "test_auc_macro"), _num(test.get("test_auc_covid")), _num(refit.get("p_vs_fold_model", refit.get("delong_p")))],
            [f"fold ensemble ({fold.get('run', '—')}; best-model/)", _num(fold.get("accuracy")),
             _num(fold.get("auc_macro")), _num(fold.get("auc_covid")), ""]]
    return title, ["model", "test accuracy [95% CI]", "test AUC [95% CI]", f"test {POSITIVE_CLASS} AUC",
                   "p (refit vs fold model)"], rows


def _lines(config: StudyConfig, summary: pd.DataFrame, best: str | None, loso: dict | None = None,
           audit: dict | None = None) -> list[str]:
    lines = [f"Study `{config.name}`: {len(summary)} configuration(s) × {config.num_folds} fold(s)"
             + (f" × {config.repeats} seeds" if config.repeats > 1 else "")
             + f", patient-grouped; the best configuration is chosen by mean validation {config.select_metric}."]
    if config.second_stage is not None:
        lines.append(f"Two stages: the top {config.second_stage.top} configuration(s) of the first (stage=1) ran "
                     f"again with {', '.join(f'{k}={v}' for k, v in config.second_stage.settings.items())} (stage=2).")
    if best is None:
        return lines + ["No configuration finished all its folds."]
    row = summary[summary["cell"] == best].iloc[0]
    noise = summary[(summary["cell"] != best) & (summary["within_noise"] == True)]  # noqa: E712
    lines.append(f"Best: {best} ({config.select_metric} {_mean_sd(row, config.select_metric)}); its model is in "
                 "`best-model/`.")
    if len(noise):
        lines.append(f"{len(noise)} other configuration(s) are within noise of it (corrected resampled t-test, "
                     "p ≥ 0.05): do not rank them on these differences.")
    if loso and loso.get("skipped"):
        lines.append(f"Leave-one-source-out was skipped: {loso['skipped']}.")
    lines += [f"**Shortcut warning:** {w}." for w in (loso or {}).get("warnings", [])]
    for name, part in (audit or {}).items():
        if not isinstance(part, dict):
            continue
        if part.get("skipped"):
            lines.append(f"{'Source probe' if name == 'source_probe' else 'Lung checks'} skipped: {part['skipped']}.")
        lines += [f"**Shortcut warning:** {w}." for w in part.get("warnings", [])]
        lines += [f"Note: {n}." for n in part.get("notes", [])]
    return lines


def _mask_table(split: pd.DataFrame) -> tuple[str, list[str], list[list[str]]] | None:
    """Lung masks per side, class and origin (a mask's presence or origin tracking the class is a cue);
    None when no image has a mask."""
    coverage = mask_coverage(split)
    origins = sorted({o for side in coverage.values() for per_class in side.values() for o in per_class})
    if origins == ["none"]:
        return None
    rows = [[side, label, *(str(counts.get(o, 0)) for o in origins)]
            for side, per_class in coverage.items() for label, counts in per_class.items()]
    return ("Lung masks per side, class and origin (mask-using settings need one origin for every image: "
            "training refuses masks whose presence or origin tracks the class)", ["side", "class", *origins], rows)


def _probe_baseline_table(config: StudyConfig, summary: pd.DataFrame, probe: pd.DataFrame) -> tuple:
    """Each configuration against the linear probe on frozen features, fold by fold."""
    metric = config.select_metric
    mean, sd = probe[metric].mean(), probe[metric].std(ddof=1)
    factors = [c for c in summary.columns if c.startswith("factor.")]
    rows = []
    for _, r in summary.iterrows():
        verdict = ("—" if r.get("beats_probe") is None or _missing(r.get("p_vs_probe")) else
                   "beats it" if r["beats_probe"] else "within noise of it (or below)")
        rows.append([", ".join(str(r[f]) for f in factors) or str(r["cell"]), _mean_sd(r, metric),
                     f"{mean:.3f} ± {sd:.3f}", _num(r.get("p_vs_probe")), verdict])
    return (f"Against the baseline: a logistic regression on the frozen pretrained features of "
            f"{probe['backbone'].iloc[0]} at {int(probe['size'].iloc[0])} px, fit on the same folds ({LABELS[metric]} on "
            "each validation fold; corrected resampled t-test, Holm across configurations)",
            ["configuration", LABELS[metric], "linear probe", "Holm p vs probe", "verdict"], rows)


def write_study_report(config: StudyConfig, out: Path, table: pd.DataFrame, summary: pd.DataFrame,
                       best: str | None, loso: dict | None = None, audit: dict | None = None,
                       refit: dict | None = None, probe: pd.DataFrame | None = None) -> None:
    """``report.md`` and a self-contained ``report.html`` (figure embedded) in ``out``."""
    figures = {"metrics vs k": plot_metrics(summary, best, out / "metrics_vs_k.png")} if len(summary) else {}
    if _has(summary, "test_accuracy"):
        figures["test side"] = plot_test_side(summary, best, out / "test_side.png")
    tables, lines = _tables(config, table, summary, best), _lines(config, summary, best, loso, audit)
    if probe is not None and "p_vs_probe" in summary:
        tables.insert(1, _probe_baseline_table(config, summary, probe))
        beaten = int(summary["beats_probe"].fillna(False).astype(bool).sum())
        lines.append(f"{beaten} of {len(summary)} configuration(s) beat the linear probe on frozen features beyond "
                     "noise (the rest learned nothing their pretrained features did not already separate).")
    if refit:
        tables.append(_refit_table(refit))
    if loso and loso.get("sources"):
        tables.append(_loso_table(loso))
    tables += _audit_tables(audit)
    if (out / SPLITS).exists() and (masks := _mask_table(read_table(out / SPLITS))):
        tables.append(masks)
    atomic_write_text(out / "report.md", markdown_page("Study report", lines, tables, figures))
    atomic_write_text(out / "report.html", html_page("Study report", lines, tables, figures))
