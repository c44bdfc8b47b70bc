"""Run a study: every cell on every fold, resumable, failures recorded, then the test side.

Layout of a study folder::

    study.json            the study's config and its MLflow parent run
    splits.csv            the held-out test side and the folds (made once, reused on resume)
    runs/<cell>/fold<k>/  one training run each (summary.json marks it finished; failed.json failed);
                          ensemble/ the cell's runs as one model (test side, export)
                          fold<k>-repeat<r>/ the other seeds (repeats), refit/ the refit (refit: true)
    shared/               prepared shards per preprocessing, the frozen-prefix store
    results.csv/.parquet  one row per run; summary.csv: mean ± sd per cell, tests against the best
    report.md/.html       the comparison table, the metric-vs-k figure, the test-side results
    best-model/           the best cell's runs as one ensemble, loadable by evaluate / explain / predict
    refit-model/, refit.json  the best cell refit on train+validation and its test-side figures

A run is finished when its ``summary.json`` exists (written atomically, last); a rerun of the
same command skips finished runs, restarts the one that was interrupted, and retries failed
ones only with ``retry_failed``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import FileLock

from cxrlab.core.errors import CxrlabError
from cxrlab.core.io import atomic_write_bytes, atomic_write_text
from cxrlab.core.run_folder import TRACKING_DB
from cxrlab.study.config import StudyConfig
from cxrlab.study.plan import (
    Cell,
    cells,
    fold_frame,
    run_config,
    run_name,
    second_stage_cells,
    study_split,
)
from cxrlab.study.results import aggregate, compare_to_best, run_row
from cxrlab.study.queue import SharedRuns, claim_once, queue_name, shared_parent
from cxrlab.study.jobs import execution_order, run_jobs, run_status, train_run
from cxrlab.study.share import Share, split_digest
from cxrlab.study.stages import (
    cell_models,
    complete_runs,
    export_best,
    leave_one_source_out_stage,
    refit_stage,
    shortcut_checks,
)
from cxrlab.study.study_baseline import compare_to_probe, study_probe
from cxrlab.study.test_side import evaluate_cells
from cxrlab.study.tracking import finish_parent_run, folder_state
from cxrlab.train.reuse import check_same_config

log = logging.getLogger(__name__)
SPLIT_FIELDS = ("data", "splits", "scheme", "ratios", "folds", "seed")
OUTPUTS = ("results.csv", "results.parquet", "summary.csv", "report.md", "report.html", "refit.json",
           "leave_one_source_out.json", "shortcut_audit.json")  # what a worker that did not write the report reads


@dataclass
class StudyResult:
    """Outcome of :func:`run_study`."""

    out: Path
    table: pd.DataFrame
    summary: pd.DataFrame
    best: str | None
    trained: int
    reused: int
    failed: int
    warnings: list[str]


def _state(config: StudyConfig, out: Path, uri: str) -> dict:
    shared = shared_parent(config.storage, config.mlflow_uri, queue_name(config, "parent"), config.heartbeat)
    return folder_state(out / "study.json", config.model_dump(mode="json"), SPLIT_FIELDS, "a study", uri,
                        config.experiment, config.name,
                        {"grid": config.grid, "variants": config.variants, "folds": config.num_folds},
                        {"cxrlab.study": config.name}, shared)


def _write_table(table: pd.DataFrame, out: Path, name: str) -> None:
    atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
    if name == "results":
        atomic_write_bytes(out / f"{name}.parquet", table.astype({c: str for c in table.columns
                                                                   if table[c].dtype == object}).to_parquet(index=False))


def run_study(config: StudyConfig, out: str | Path, progress: Callable[[str], None] | None = None,
              retry_failed: bool = False) -> StudyResult:
    """Train every cell on every fold (skipping finished runs), evaluate the cells on the test side,
    and write the tables, the report and ``best-model``.

    Args:
        config: The study.
        out: Study folder (created; an existing one is resumed).
        progress: Called with a short description after each run.
        retry_failed: Run failed runs again (default: keep their recorded failure).

    Raises:
        ConfigError: ``out`` holds another study, or a finished run has other settings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    uri = config.mlflow_uri or f"sqlite:///{(out / TRACKING_DB).resolve()}"
    with FileLock(str(out / "study.lock")):  # workers sharing the folder: one makes the state, the split, the store
        state = _state(config, out, uri)
        frame = study_split(config, out)
    share = Share(config.share, out) if config.share else None
    if share is not None:  # refuses a share holding another study, or this study made from other data
        share.claim(config.model_dump(mode="json"), SPLIT_FIELDS, split_digest(frame))
    rows: dict[tuple[str, int, int], dict] = {}

    def run_cells(stage: list[Cell]) -> tuple[int, int]:
        """Train every run of ``stage``'s cells not finished before; ``(trained, reused)``."""
        jobs: list[tuple[Cell, int, int, Path]] = []
        reused = 0
        for cell in execution_order(stage):
            for fold in range(config.num_folds):
                for repeat in range(config.repeats):
                    run_dir = out / "runs" / cell.id / run_name(fold, repeat)
                    status, summary, error = run_status(run_dir)
                    if status == "todo" and share is not None and share.get_quietly(run_dir):  # trained elsewhere
                        status, summary, error = run_status(run_dir)
                    elif status != "todo" and share is not None:  # finished here when the share was unreachable
                        share.put_quietly(run_dir, only_missing=True)
                    if status == "failed" and retry_failed:
                        shutil.rmtree(run_dir)
                        status = "todo"
                    if status == "todo":
                        jobs.append((cell, fold, repeat, run_dir))
                        continue
                    if status == "done":
                        check_same_config(run_dir, run_config(config, cell, run_dir, out / "shared", {}, repeat))
                    reused += 1
                    row = rows[(cell.id, fold, repeat)] = run_row(cell.id, cell.factors, fold, summary, error, repeat,
                                                                  run_dir.name)
                    if progress:
                        progress(f"{cell.label()} {run_dir.name}: {row['status']} (done before)")

        def finished(job: tuple[Cell, int, int, Path], outcome: tuple[dict | None, str | None]) -> None:
            cell, fold, repeat, run_dir = job
            row = rows[(cell.id, fold, repeat)] = run_row(cell.id, cell.factors, fold, *outcome, repeat, run_dir.name)
            if share is not None:
                share.put_quietly(run_dir)
            if not config.storage:  # (shared: each run's folder is its record; one worker writes the tables)
                _write_table(pd.DataFrame(list(rows.values())), out, "results")  # nothing finished is lost if we die
            if progress:
                progress(f"{cell.label()} {run_dir.name}: {row['status']}")

        work = [(job, (config, job[0], job[3].name, job[3], fold_frame(frame, job[1], config.num_folds), out, uri,
                       state["mlflow_parent"], job[2])) for job in jobs]
        if config.storage:  # claimed through the database: any number of workers share them
            mine = _run_shared(config, stage, work, finished, share, retry_failed)
            for cell, fold, repeat, run_dir in jobs:  # what the other workers trained
                if (cell.id, fold, repeat) not in rows:
                    if share is not None and run_status(run_dir)[0] == "todo":
                        share.get_quietly(run_dir)
                    status, summary, error = run_status(run_dir)
                    rows[(cell.id, fold, repeat)] = run_row(cell.id, cell.factors, fold, summary, error, repeat,
                                                            run_dir.name)
            return mine, reused + len(jobs) - mine
        run_jobs(work, config.workers, finished)
        return len(jobs), reused

    plan = cells(config)
    trained, reused = run_cells(plan)
    if config.second_stage is not None:  # the top cells of the first stage, fine-tuned again
        first = aggregate(pd.DataFrame(list(rows.values())), config.num_folds * config.repeats)
        ranking = first[first["complete"]].sort_values(f"{config.select_metric}_mean", ascending=False, kind="stable")
        by_id = {cell.id: cell for cell in plan}
        second = second_stage_cells(config, [by_id[c] for c in ranking["cell"]])
        more = run_cells(second)
        trained, reused, plan = trained + more[0], reused + more[1], plan + second
    def write() -> StudyResult:
        result = report["result"] = _report(config, out, frame, plan, rows, trained, reused, uri, state, progress)
        if share is not None:
            share.put_quietly(out)  # tables, report, exports, runs; a rerun copies what could not be
        return result

    report: dict[str, StudyResult] = {}
    if not config.storage:
        return write()
    # one worker writes the report; the others read it
    if claim_once(config.storage, queue_name(config, "report"), config.heartbeat, lambda _: write()):
        return report["result"]
    if share is not None:  # (from the share, when the workers' folders are their own)
        try:
            for name in OUTPUTS:
                share.get_file(name)
        except Exception as err:  # noqa: BLE001 -- botocore's errors are not OSErrors
            raise CxrlabError(f"{config.share}: cannot read the results another worker wrote "
                              f"({type(err).__name__}: {err}); rerun to try again") from err
        share.get_quietly(out / "best-model", run=False)
    if not (out / "results.csv").exists():
        raise CxrlabError(f"{out / 'results.csv'}: the worker that claimed the report wrote none (it failed: "
                          "rerun the command to write it)")
    return _read_result(out, config, trained, reused)


def _report(config: StudyConfig, out: Path, frame: pd.DataFrame, plan: list[Cell], rows: dict, trained: int,
            reused: int, uri: str, state: dict, progress: Callable[[str], None] | None) -> StudyResult:
    """Everything after the grid's runs: tables, test side, exports, refit, leave-one-source-out, audit, report."""
    failed = sum(row["status"] == "failed" for row in rows.values())
    order = {cell.id: i for i, cell in enumerate(plan)}  # report in the grid's order
    table = pd.DataFrame(list(rows.values()))
    table = table.sort_values(["cell", "fold", "repeat"], key=lambda c: c.map(order) if c.name == "cell" else c,
                              kind="stable").reset_index(drop=True)
    _write_table(table, out, "results")
    summary_table = aggregate(table, config.num_folds * config.repeats)
    best, summary_table = compare_to_best(table, summary_table, config.select_metric)
    try:  # the baseline every configuration must beat: frozen features and a logistic regression
        probe = study_probe(config, out, frame)
    except Exception as err:  # noqa: BLE001 -- a failed baseline must not cost the study's report
        log.warning("study: the linear-probe baseline failed: %s: %s", type(err).__name__, err)
        probe = None
    summary_table = compare_to_probe(table, summary_table, probe, config.select_metric)
    models = cell_models(out, complete_runs(table, summary_table))
    summary_table = evaluate_cells(config, out, frame, summary_table, models, best)
    _write_table(summary_table, out, "summary")
    if best is not None:
        export_best(config, out, frame, table, best, summary_table, models[best])
    refit = refit_stage(config, out, frame, plan, table, summary_table, best, uri, state["mlflow_parent"], progress)
    loso = leave_one_source_out_stage(config, out, frame, plan, summary_table, best, uri, state["mlflow_parent"], progress)
    from cxrlab.study.report import write_study_report

    audit = shortcut_checks(config, out, frame, best)
    write_study_report(config, out, table, summary_table, best, loso, audit, refit, probe)
    metric = config.select_metric
    best_row = summary_table.set_index("cell").loc[best] if best is not None else None
    finish_parent_run(uri, state["mlflow_parent"], {"cxrlab.best_cell": best} if best is not None else {},
                      {f"best_{metric}_mean": float(best_row[f"{metric}_mean"])} if best_row is not None else {})
    warnings = [w for part in [loso or {}, *(audit or {}).values()] if isinstance(part, dict)
                for w in part.get("warnings", [])]
    return StudyResult(out, table, summary_table, best, trained, reused, failed, warnings)


def _run_shared(config: StudyConfig, stage: list[Cell], work: list, finished, share: Share | None,
                retry_failed: bool) -> int:
    """Train the stage's runs this worker claims (:class:`cxrlab.study.queue.SharedRuns`); how many."""
    by_id = {f"{job[0].id}/{job[3].name}": (job, arguments) for job, arguments in work}
    queue = SharedRuns(config.storage, queue_name(config, "stage-" + "-".join(sorted(c.id for c in stage))[:80]),
                       config.heartbeat)
    # every worker names the stage's runs alike, whichever of them it found finished already (a worker that
    # started later, with some runs on the share, must not offer the database another list of choices)
    every = sorted(f"{cell.id}/{run_name(fold, repeat)}" for cell in stage for fold in range(config.num_folds)
                   for repeat in range(config.repeats))
    queue.enqueue(sorted(by_id), choices=every)

    def claimed_run(run_id: str) -> str | None:
        if run_id not in by_id:  # finished before this worker started (it found it done): nothing to train
            return None
        job, arguments = by_id[run_id]
        run_dir = job[3]
        if share is not None and share.get_quietly(run_dir):  # a retried run another worker finished after all
            status, summary, error = run_status(run_dir)
            if status == "done" or (status == "failed" and not retry_failed):
                finished(job, (summary, error))
                return error
            shutil.rmtree(run_dir)  # a failure recorded there, to be tried again
        outcome = train_run(*arguments)
        finished(job, outcome)
        return outcome[1]

    return queue.work(claimed_run) if by_id else 0


def _read_result(out: Path, config: StudyConfig, trained: int, reused: int) -> StudyResult:
    """The outcome another worker wrote (``results.csv``, ``summary.csv``)."""
    table, summary = pd.read_csv(out / "results.csv"), pd.read_csv(out / "summary.csv")
    best, _ = compare_to_best(table, summary, config.select_metric)
    return StudyResult(out, table, summary, best, trained, reused, int((table["status"] == "failed").sum()), [])


