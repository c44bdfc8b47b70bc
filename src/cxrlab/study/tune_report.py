"""The search report: best settings, their test-side figures, the history and each setting's effect."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from cxrlab.core.io import atomic_write_text  # noqa: E402
from cxrlab.evaluate.report import html_page, markdown_page  # noqa: E402
from cxrlab.study.tune_config import TuneConfig  # noqa: E402

COLOURS = {"complete": "tab:blue", "pruned": "tab:grey", "fail": "tab:red"}


def _num(value, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _setting(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_search(config: TuneConfig, trials: pd.DataFrame, path: Path) -> Path:
    """Left: each trial's value and the best so far. Right panels: value against each searched setting."""
    params = [c for c in trials.columns if c.startswith("param.")]
    fig, axes = plt.subplots(1, 1 + len(params), figsize=(4.2 * (1 + len(params)), 3.6), squeeze=False)
    done = trials[trials["state"] == "complete"]
    history = axes[0][0]
    history.scatter(done["trial"], done["value"], color=COLOURS["complete"], label="complete", zorder=3)
    if len(done):
        best = done["value"].cummax() if config.direction == "maximize" else done["value"].cummin()
        history.step(done["trial"], best, where="post", color="tab:orange", label="best so far")
    for state in ("pruned", "fail"):
        part = trials[trials["state"] == state]
        if len(part):
            history.scatter(part["trial"], [history.get_ylim()[0]] * len(part), marker="x", color=COLOURS[state],
                            label=f"{state} ({len(part)})")
    history.set(xlabel="trial", ylabel=f"validation {config.metric}", title="search history")
    history.legend(fontsize=7)
    for axis, column in zip(axes[0][1:], params, strict=True):
        values = done[column]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all() and values.map(lambda v: not isinstance(v, bool | str)).all():
            axis.scatter(numeric, done["value"], color=COLOURS["complete"])
            space = config.space[column.removeprefix("param.")]
            if getattr(space, "log", False):
                axis.set_xscale("log")
        else:
            labels = sorted(values.astype(str).unique())
            axis.scatter([labels.index(v) for v in values.astype(str)], done["value"], color=COLOURS["complete"])
            axis.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        axis.set(xlabel=column.removeprefix("param."), title=column.removeprefix("param."))
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tune_report(config: TuneConfig, out: Path, trials: pd.DataFrame, best: optuna.trial.FrozenTrial | None,
                      test: dict | None, importances: dict[str, float]) -> None:
    """``report.md`` and a self-contained ``report.html`` in ``out``."""
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    lines = [f"Search `{config.name}`: {len(trials)} trial(s) ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
             f"TPE sampler, {'median pruning' if config.pruning else 'no pruning'}, validation {config.metric} "
             f"({config.direction}d) on one patient-grouped split; the test side was used once, for the best trial."]
    tables, figures = [], {}
    if best is None:
        lines.append("No trial finished.")
    else:
        settings = ", ".join(f"{k} = {_setting(v)}" for k, v in best.user_attrs.get("settings", best.params).items())
        lines.append(f"Best: trial {best.number} ({settings}), validation {config.metric} {_num(best.value)}; its model "
                     "is in `best-model/`.")
        if test:
            lines.append(f"On the held-out test side ({test['n']} images): accuracy {_num(test['accuracy'], 3)}, macro "
                         f"AUC {_num(test['auc_macro'], 3)}. One validation split picks the best of many trials: expect "
                         "the validation figure to flatter it; the test figure does not.")
            tables.append(("Best trial on the test side", ["class", "sensitivity", "specificity", "AUC"],
                           [[n, _num(m["sensitivity"], 3), _num(m["specificity"], 3), _num(m["roc_auc"], 3)]
                            for n, m in test["per_class"].items()]))
    if importances:
        tables.append(("Setting importance (Optuna's default evaluator): the share of the variation in the "
                       "validation metric each setting explains",
                       ["setting", "importance"], [[k, f"{v:.3f}"] for k, v in importances.items()]))
    if len(trials):
        params = [c for c in trials.columns if c.startswith("param.")]
        ordered = trials.sort_values("value", ascending=config.direction == "minimize", na_position="last")
        tables.append(("Trials (best first)", ["trial", "state", config.metric, *[p.removeprefix("param.") for p in params],
                                                "epochs", "seconds", "error"],
                       [[str(r["trial"]), r["state"], _num(r["value"]), *[_setting(r[p]) for p in params], str(r["epochs"]),
                         _num(r["seconds"], 1), str(r["error"])[:120] if isinstance(r["error"], str) else ""]
                        for _, r in ordered.iterrows()]))
        if np.isfinite(pd.to_numeric(trials["value"], errors="coerce")).any():
            figures["search"] = plot_search(config, trials, out / "search.png")
    atomic_write_text(out / "report.md", markdown_page("Tuning report", lines, tables, figures))
    atomic_write_text(out / "report.html", html_page("Tuning report", lines, tables, figures))
