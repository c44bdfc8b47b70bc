"""``cxrlab tune``: an Optuna search over training settings, resumable, with one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrlab.cli._common import console, exit_if_failed, handle_errors, progress_bar, quiet_lightning, search_overrides


def tune_command(
    config: Annotated[Path, typer.Argument(help="Tuning YAML (see configs/tune/).")],
    out: Annotated[Optional[Path], typer.Option(help="Search folder (default: runs/tune/<name>); rerun to resume.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Override the search's data.")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Override the number of trials (in total).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL, e.g. postgresql://host/db to share "
                                                        "the search between machines (default: SQLite in OUT).")] = None,
    share: Annotated[Optional[str], typer.Option(help="Where finished trials and results are copied (s3://bucket/path "
                                                      "or a folder), so workers without a shared OUT search together.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override base.epochs (quick trials).")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE over any setting (repeatable); "
                                                                  "dotted keys reach nested ones, e.g. trials=20 or base.size=256.")] = None,
) -> None:
    """Search training settings with Optuna (TPE sampler, median pruning); report and export the best.
    Exit code 3 when some trials failed (each is in trials.csv with its error)."""
    from cxrlab.study.tune import run_tune
    from cxrlab.study.tune_config import load_tune_config

    with handle_errors():
        overrides = search_overrides(data, trials=trials, storage=storage, share=share)
        search = load_tune_config(config, overrides, assignments or ())
        if epochs is not None:
            search = search.model_copy(update={"base": {**search.base, "epochs": epochs}})
        target = out or Path("runs") / "tune" / search.name
        quiet_lightning()
        with progress_bar("trials") as bar:
            task = bar.add_task("trials", total=search.trials)
            result = run_tune(search, target, progress=lambda text: bar.update(task, advance=1, description=text[:60]))
        states = result.trials["state"].value_counts().to_dict() if len(result.trials) else {}
        console.print(f"{result.ran} trial(s) run now; in total {', '.join(f'{v} {k}' for k, v in states.items())}")
        if result.best_params is not None:
            console.print(f"best: {result.best_params} (validation {search.metric} {result.best_value:.4f})"
                          f" → {target / 'best-model'}")
            if result.test:
                console.print(f"test side: accuracy {result.test['accuracy']:.3f}, macro AUC "
                              f"{result.test['auc_macro'] if result.test['auc_macro'] is None else round(result.test['auc_macro'], 3)}")
        console.print(f"wrote {target / 'report.html'}, {target / 'report.md'} and {target / 'trials.csv'}")
    exit_if_failed(int(states.get("fail", 0)), "trial(s)")
