"""``cxrlab study``: a grid of configurations × patient-grouped folds, resumable, with one report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrlab.cli._common import console, exit_if_failed, handle_errors, progress_bar, quiet_lightning, search_overrides


def study_command(
    config: Annotated[Path, typer.Argument(help="Study YAML (see configs/studies/).")],
    out: Annotated[Optional[Path], typer.Option(help="Study folder (default: runs/studies/<name>); rerun to resume.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Override the study's data.")] = None,
    folds: Annotated[Optional[int], typer.Option(help="Override the number of folds.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override base.epochs (quick trials).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run recorded failures again.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Runs trained at once, each in its own process "
                                                        "(default: the study's setting, 1).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Database the runs are claimed through, so that any number "
                                                        "of these commands (on any machines, sharing OUT or --share) split the "
                                                        "study: sqlite:///study.db or postgresql://user@host/db.")] = None,
    share: Annotated[Optional[str], typer.Option(help="Where finished runs and results are copied (s3://bucket/path "
                                                      "or a folder), so workers on machines without a shared OUT "
                                                      "use each other's runs.")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE over any setting (repeatable); "
                                                                  "dotted keys reach nested ones, e.g. base.lr=1e-4 or folds=3.")] = None,
) -> None:
    """Train every configuration on every fold, evaluate on the test side, write report and best-model.
    Exit code 3 when some runs failed (each is in results.csv with its error; the rest is written)."""
    from cxrlab.study import load_study_config, run_study
    from cxrlab.study.plan import cells

    with handle_errors():
        overrides = search_overrides(data, folds=folds, workers=workers, storage=storage, share=share)
        study = load_study_config(config, overrides, assignments or ())
        if epochs is not None:
            study = study.model_copy(update={"base": {**study.base, "epochs": epochs}})
        target = out or Path("runs") / "studies" / study.name
        quiet_lightning()
        second = min(study.second_stage.top, len(cells(study))) if study.second_stage else 0
        # leave-one-source-out runs extend it when they start
        total = (len(cells(study)) + second) * study.num_folds * study.repeats + int(study.refit)
        with progress_bar("study runs") as bar:
            task = bar.add_task("study runs", total=total)

            def advance(text: str) -> None:
                done = bar.tasks[0].completed + 1
                bar.update(task, completed=done, total=max(bar.tasks[0].total or 0, done), description=text[:60])

            result = run_study(study, target, progress=advance, retry_failed=retry_failed)
        console.print(f"{result.trained} run(s) trained, {result.reused} reused, {result.failed} failed")
        print_study_summary(result.summary, study.select_metric, result.best)
        print_warnings(result.warnings)
        if result.best is not None:
            console.print(f"best: {result.best} → {target / 'best-model'}")
        if study.refit and (target / "refit.json").exists():
            print_refit(json.loads((target / "refit.json").read_text()), target)
        console.print(f"wrote {target / 'report.html'}, {target / 'report.md'}, {target / 'results.csv'} and "
                      f"{target / 'summary.csv'}")
    exit_if_failed(result.failed, "run(s)")



def print_study_summary(summary, metric: str, best: str | None) -> None:
    """A table: each configuration's mean±sd over its validation runs and its test-side figures."""
    from rich.table import Table

    factors = [c for c in summary.columns if c.startswith("factor.")]
    short = {"accuracy": "acc", "auc_macro": "AUC"}
    metrics = ["accuracy"] + ([metric] if metric != "accuracy" else [])
    table = Table(*[f.removeprefix("factor.") for f in factors], *[f"val {short[m]}" for m in metrics],
                  *[f"test {short[m]}" for m in metrics], "", title="validation: mean±sd over runs (folds × seeds)")
    for _, row in summary.iterrows():
        table.add_row(*[str(row[f]) for f in factors],
                      *[f"{row[f'{m}_mean']:.3f}±{row[f'{m}_sd']:.3f}" for m in metrics],
                      *[f"{row[f'test_{m}']:.3f}" for m in metrics], "best" if row["cell"] == best else "")
    console.print(table)


def print_refit(refit: dict, target: Path) -> None:
    """One line: the refit's test-side figures beside its best run's model, or why it failed."""
    if refit.get("status") != "ok":
        console.print(f"[yellow]refit failed:[/] {refit.get('error')}", highlight=False)
        return
    test, fold = refit["test"], refit.get("fold_model_test", {})
    p = refit.get("p_vs_fold_model")
    console.print(f"refit on {refit['train_images']} train+validation images → {target / 'refit-model'}: test "
                  f"accuracy {test['test_accuracy']:.3f}, AUC {test['test_auc_macro']:.3f} (best run's model "
                  f"{fold.get('accuracy', float('nan')):.3f}, {fold.get('auc_macro', float('nan')):.3f}"
                  + (f"; paired patient-bootstrap p {p:.3f}" if p is not None else "") + ")")


def print_warnings(warnings: list[str]) -> None:
    """The shortcut audit's warnings, or that it found nothing to warn about."""
    for text in warnings:
        console.print(f"[bold yellow]shortcut warning:[/] {text}", highlight=False)
    if not warnings:
        console.print("shortcut audit: no warnings (see the report for its figures)")
