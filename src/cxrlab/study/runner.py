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

import concurrent.futures
import json
import logging
import multiprocessing
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import FileLock

from cxrlab.core.errors import ConfigError, CxrlabError
from cxrlab.core.io import atomic_write_bytes, atomic_write_text
from cxrlab.core.logging import configure_logging, quiet_lightning
from cxrlab.core.run_folder import CHECKPOINTS, CONFIG, FAILED, LAST_CHECKPOINT, SUMMARY, TEST_PREDICTIONS, TRACKING_DB
from cxrlab.core.runtime import default_workers, exit_with_parent
from cxrlab.data import write_splits
from cxrlab.study.cell_ensemble import cell_model, export_ready
from cxrlab.study.config import StudyConfig
from cxrlab.study.export import export_run
from cxrlab.study.plan import (
    Cell,
    cells,
    check_same_config,
    fold_frame,
    run_config,
    run_name,
    second_stage_cells,
    study_split,
)
from cxrlab.study.results import aggregate, compare_to_best, run_row
from cxrlab.study.queue import SharedRuns, claim_once, queue_name, shared_parent
from cxrlab.study.share import Share, split_digest
from cxrlab.study.shortcuts import held_out_results, source_runs
from cxrlab.study.study_baseline import compare_to_probe, study_probe
from cxrlab.study.test_side import TEST_COLUMNS, evaluate_cells, prediction_metrics
from cxrlab.study.tracking import finish_parent_run, folder_state
from cxrlab.train import load_config, train

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


def _run_status(run_dir: Path) -> tuple[str, dict | None, str | None]:
    summary, failed = run_dir / SUMMARY, run_dir / FAILED
    if summary.exists():
        data = json.loads(summary.read_text())
        return ("done" if data.get("status") == "ok" else "failed"), data, data.get("status")
    if failed.exists():
        return "failed", None, json.loads(failed.read_text()).get("error")
    return "todo", None, None


def _record_failure(run_dir: Path, error: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / FAILED, json.dumps({"error": error}) + "\n")


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
        for cell in _execution_order(stage):
            for fold in range(config.num_folds):
                for repeat in range(config.repeats):
                    run_dir = out / "runs" / cell.id / run_name(fold, repeat)
                    status, summary, error = _run_status(run_dir)
                    if status == "todo" and share is not None and share.get_quietly(run_dir):  # trained elsewhere
                        status, summary, error = _run_status(run_dir)
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
                    if share is not None and _run_status(run_dir)[0] == "todo":
                        share.get_quietly(run_dir)
                    status, summary, error = _run_status(run_dir)
                    rows[(cell.id, fold, repeat)] = run_row(cell.id, cell.factors, fold, summary, error, repeat,
                                                            run_dir.name)
            return mine, reused + len(jobs) - mine
        _run_jobs(work, config.workers, finished)
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
    models = _cell_models(out, _complete_runs(table, summary_table))
    summary_table = evaluate_cells(config, out, frame, summary_table, models, best)
    _write_table(summary_table, out, "summary")
    if best is not None:
        _export_best(config, out, frame, table, best, summary_table, models[best])
    refit = _refit(config, out, frame, plan, table, summary_table, best, uri, state["mlflow_parent"], progress)
    loso = _leave_one_source_out(config, out, frame, plan, summary_table, best, uri, state["mlflow_parent"], progress)
    from cxrlab.study.report import write_study_report

    audit = _shortcut_checks(config, out, frame, best)
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
    queue.enqueue(sorted(by_id))

    def train_run(run_id: str) -> str | None:
        job, arguments = by_id[run_id]
        run_dir = job[3]
        if share is not None and share.get_quietly(run_dir):  # a retried run another worker finished after all
            status, summary, error = _run_status(run_dir)
            if status == "done" or (status == "failed" and not retry_failed):
                finished(job, (summary, error))
                return error
            shutil.rmtree(run_dir)  # a failure recorded there, to be tried again
        outcome = _train_one(*arguments)
        finished(job, outcome)
        return outcome[1]

    return queue.work(train_run) if by_id else 0


def _read_result(out: Path, config: StudyConfig, trained: int, reused: int) -> StudyResult:
    """The outcome another worker wrote (``results.csv``, ``summary.csv``)."""
    table, summary = pd.read_csv(out / "results.csv"), pd.read_csv(out / "summary.csv")
    best, _ = compare_to_best(table, summary, config.select_metric)
    return StudyResult(out, table, summary, best, trained, reused, int((table["status"] == "failed").sum()), [])


def _in_distribution(out: Path, row: pd.Series, frame: pd.DataFrame) -> dict:
    """What a held-out source's figures are compared with: the best cell's accuracy and per-class
    recall on the test side (same sources, never chosen on); without a test side its mean
    validation accuracy, marked optimistic (early stopping chose on those images)."""
    predictions = out / "runs" / str(row.name) / str(row.get("test_run", "")) / TEST_PREDICTIONS
    if pd.notna(row.get("test_accuracy")) and predictions.is_file():
        metrics, names = prediction_metrics(pd.read_csv(predictions))
        return {"side": "test", "accuracy": float(row["test_accuracy"]),
                "recall": {n: metrics["per_class"][n]["sensitivity"] for n in names if metrics["per_class"][n]["support"]}}
    return {"side": "validation (optimistic: early stopping chose on it)", "accuracy": float(row["accuracy_mean"]),
            "recall": {}}


def _leave_one_source_out(config: StudyConfig, out: Path, frame: pd.DataFrame, plan: list[Cell],
                          summary: pd.DataFrame, best: str | None, uri: str, parent: str,
                          progress: Callable[[str], None] | None) -> dict | None:
    if not config.leave_one_source_out or best is None:
        return None
    cell = next(c for c in plan if c.id == best)
    in_distribution = _in_distribution(out, summary.set_index("cell").loc[best], frame)
    try:
        splits = source_runs(config, frame)
    except ConfigError as err:
        log.warning("study: leave-one-source-out skipped: %s", err)
        result: dict = {"cell": best, "skipped": str(err), "sources": {}, "warnings": []}
    else:
        def train_one(part: str, run_dir: Path, split: pd.DataFrame):
            outcome = _train_one(config, cell, part, run_dir, split, out, uri, parent)
            if progress:
                progress(f"{cell.label()} {part}: {'failed' if outcome[1] else 'ok'}")
            return outcome

        result = held_out_results(out, cell, splits, in_distribution, train_one)
    atomic_write_text(out / "leave_one_source_out.json", json.dumps(result, indent=2, default=str) + "\n")
    return result


def _refit(config: StudyConfig, out: Path, frame: pd.DataFrame, plan: list[Cell], table: pd.DataFrame,
           summary: pd.DataFrame, best: str | None, uri: str, parent: str,
           progress: Callable[[str], None] | None) -> dict | None:
    if not config.refit or best is None:
        return None
    from cxrlab.study.refit import refit_best

    cell = next(c for c in plan if c.id == best)

    def train_one(part: str, run_dir: Path, split: pd.DataFrame, settings: dict):
        outcome = _train_one(config, cell, part, run_dir, split, out, uri, parent, 0, settings)
        if progress:
            progress(f"{cell.label()} {part}: {'failed' if outcome[1] else 'ok'}")
        return outcome

    try:
        return refit_best(config, out, frame, cell, table, summary, train_one)
    except Exception as err:  # noqa: BLE001 -- a failed refit must not cost the finished study's report
        log.warning("study: the refit of %s failed: %s: %s", cell.label(), type(err).__name__, err)
        return {"cell": best, "settings": {}, "train_images": 0, "status": "failed",
                "error": f"{type(err).__name__}: {err}"}


def _shortcut_checks(config: StudyConfig, out: Path, frame: pd.DataFrame, best: str | None) -> dict | None:
    """The source probe and the lung checks of the best model (written to ``shortcut_audit.json``);
    a failing check is recorded, never fatal: the study's results are already safe."""
    if not config.shortcut_checks or best is None:
        return None
    from cxrlab.models.predictor import Predictor
    from cxrlab.study.shortcut_probes import lung_audit, source_probe_audit

    audit: dict = {"cell": best}
    predictor = None
    for name, check in (("source_probe", lambda model: source_probe_audit(config, out, frame, model)),
                        ("lungs", lambda model: lung_audit(out, frame, model))):
        try:
            predictor = predictor or Predictor(out / "best-model")  # once, for both checks
            audit[name] = check(predictor)
        except Exception as err:  # noqa: BLE001 -- an audit failure must not cost the finished study
            log.warning("study: %s check failed: %s", name, err)
            audit[name] = {"skipped": f"failed: {type(err).__name__}: {err}", "warnings": []}
    atomic_write_text(out / "shortcut_audit.json", json.dumps(audit, indent=2, default=str) + "\n")
    return audit


def _run_jobs(work: list[tuple[tuple, tuple]], workers: int,
              finished: Callable[[tuple, tuple[dict | None, str | None]], None]) -> None:
    """Train each job (``(job, _train_one's arguments)``), here or in ``workers`` processes, and call
    ``finished(job, outcome)`` in this process as each one ends."""
    if workers <= 1 or len(work) <= 1:
        for job, arguments in work:
            finished(job, _train_one(*arguments))
        return
    threads = max(1, default_workers() // workers)
    context = multiprocessing.get_context("spawn")  # fork after torch and MLflow threads is unsafe
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                                initargs=(threads, logging.getLogger("cxrlab").level)) as pool:
        futures = {pool.submit(_train_one, *arguments): job for job, arguments in work}
        for future in concurrent.futures.as_completed(futures):
            try:
                outcome = future.result()
            except Exception as err:  # noqa: BLE001 -- a worker that died (memory): record, go on
                outcome = (None, f"{type(err).__name__}: {err}")
            finished(futures[future], outcome)


def _worker_init(threads: int, level: int) -> None:
    """A worker process: its share of the CPU threads; warnings only (the parent reports progress)."""
    import torch

    exit_with_parent()
    torch.set_num_threads(threads)
    configure_logging()
    logging.getLogger("cxrlab").setLevel(max(level, logging.WARNING))
    quiet_lightning()


def _execution_order(plan: list[Cell]) -> list[Cell]:
    """Cells with more trainable blocks (fewer frozen ones) first: the prefix store then builds each
    deeper entry from the previous one, so a k-sweep runs each frozen block about once per image."""
    def trainable(cell: Cell) -> float:
        k = cell.settings.get("fine_tune")
        return float("inf") if k == "all" else (k if isinstance(k, int) else -1)

    return sorted(plan, key=trainable, reverse=True)


def _train_one(config: StudyConfig, cell: Cell, part: str, run_dir: Path, split: pd.DataFrame, out: Path,
               uri: str, parent: str, repeat: int = 0,
               overrides: dict | None = None) -> tuple[dict | None, str | None]:
    """Train one run on ``split`` (``part``: ``fold0``…, ``fold0-repeat1``, ``without-<source>`` or
    ``refit``) with seed ``config.seed + repeat`` and ``overrides`` over the cell's settings; record a
    failure."""
    if run_dir.exists() and not (run_dir / CHECKPOINTS / LAST_CHECKPOINT).exists():
        shutil.rmtree(run_dir)  # a run interrupted before its first epoch ended: start it again
    run_dir.mkdir(parents=True, exist_ok=True)  # one with a checkpoint resumes from it (cxrlab.train)
    tags = {"mlflow.parentRunId": parent, "cxrlab.study": config.name, "cxrlab.cell": cell.id, "cxrlab.part": part}
    try:
        train_config = run_config(config.model_copy(update={"mlflow_uri": uri}), cell, run_dir, out / "shared", tags,
                                  repeat, overrides)
        write_splits(split, {"study": config.name, "cell": cell.id, "part": part}, run_dir)
        result = train(train_config, screening=False)  # the exported run gets its reference then
        return result.summary, None
    except Exception as err:  # noqa: BLE001 -- one bad cell (setting, NaN, bug, memory) must not stop the study
        message = f"{type(err).__name__}: {err}"
        log.warning("study: %s %s failed: %s", cell.label(), part, message)
        log.debug("study: traceback of the failure", exc_info=True)
        if not (run_dir / SUMMARY).exists():
            _record_failure(run_dir, message)
        return None, message


def _complete_runs(table: pd.DataFrame, summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each complete cell's finished runs."""
    complete = summary.loc[summary["complete"], "cell"]
    return {cell: ok for cell in complete if not (ok := table[(table["cell"] == cell) & (table["status"] == "ok")]).empty}


def _cell_models(out: Path, complete: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """Each complete cell's model folder (the ensemble of its runs); a cell whose runs cannot be read
    together is left out of the test side with a warning, the others go on."""
    models = {}
    for cell, ok in complete.items():
        try:
            models[cell] = cell_model(out, cell, ok)
        except (CxrlabError, OSError) as err:
            log.warning("study: %s's runs could not be put together as one model: %s", cell, err)
    return models


def _export_best(config: StudyConfig, out: Path, frame: pd.DataFrame, table: pd.DataFrame, best: str,
                 summary: pd.DataFrame, folder: Path) -> None:
    """Export the best cell's model (``folder``: the ensemble of its runs), with its test-side figures
    (its model card quotes them)."""
    ok = table[(table["cell"] == best) & (table["status"] == "ok")]
    try:
        export_ready(folder, out, best, ok, frame, load_config(folder / CONFIG).optim.batch_size)  # its runs' own
    except Exception as err:  # noqa: BLE001 -- exported without the screening reference, which says why
        log.warning("study: no screening reference for %s's ensemble: %s: %s", best, type(err).__name__, err)
    row = summary[summary["cell"] == best].iloc[0]
    test = {k.removeprefix("test_"): _plain(row[k]) for k in TEST_COLUMNS if k in row and k != "test_run"}
    origin = {"cell": best, "runs": sorted(ok["run"]), "part": folder.name, "study": str(out)}
    if row.get("test_run") == folder.name:
        origin["test"] = {k: v for k, v in test.items() if v is not None}
    export_run(folder, out / "best-model", origin)


def _plain(value) -> float | int | None:
    """A table cell as a JSON number, ``None`` for missing."""
    return None if value is None or pd.isna(value) else value.item() if hasattr(value, "item") else value
