"""What a study does once its grid has run: each complete cell as one model (the ensemble of its runs),
the best one exported, the refit, leave-one-source-out and the shortcut audit of the best model. Each
failure here is logged and recorded, never the end of a finished study."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cxrlab.core.device import stage_record, use_policy
from cxrlab.core.errors import ConfigError, CxrlabError
from cxrlab.core.io import atomic_write_text
from cxrlab.core.run_folder import CONFIG, TEST_PREDICTIONS
from cxrlab.study.cell_ensemble import cell_model, export_ready
from cxrlab.study.config import StudyConfig
from cxrlab.study.export import export_run
from cxrlab.study.jobs import train_run
from cxrlab.study.plan import Cell
from cxrlab.study.shortcuts import held_out_results, source_runs
from cxrlab.study.test_side import TEST_COLUMNS, prediction_metrics
from cxrlab.train import load_config
from cxrlab.train.runner import run_policy

log = logging.getLogger("cxrlab.study.runner")  # the study's messages, whichever module says them


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

def leave_one_source_out_stage(config: StudyConfig, out: Path, frame: pd.DataFrame, plan: list[Cell],
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
            outcome = train_run(config, cell, part, run_dir, split, out, uri, parent)
            if progress:
                progress(f"{cell.label()} {part}: {'failed' if outcome[1] else 'ok'}")
            return outcome

        result = held_out_results(out, cell, splits, in_distribution, train_one)
    atomic_write_text(out / "leave_one_source_out.json", json.dumps(result, indent=2, default=str) + "\n")
    return result

def refit_stage(config: StudyConfig, out: Path, frame: pd.DataFrame, plan: list[Cell], table: pd.DataFrame,
           summary: pd.DataFrame, best: str | None, uri: str, parent: str,
           progress: Callable[[str], None] | None) -> dict | None:
    if not config.refit or best is None:
        return None
    from cxrlab.study.refit import refit_best

    cell = next(c for c in plan if c.id == best)

    def train_one(part: str, run_dir: Path, split: pd.DataFrame, settings: dict):
        outcome = train_run(config, cell, part, run_dir, split, out, uri, parent, 0, settings)
        if progress:
            progress(f"{cell.label()} {part}: {'failed' if outcome[1] else 'ok'}")
        return outcome

    try:
        return refit_best(config, out, frame, cell, table, summary, train_one)
    except Exception as err:  # noqa: BLE001 -- a failed refit must not cost the finished study's report
        log.warning("study: the refit of %s failed: %s: %s", cell.label(), type(err).__name__, err)
        return {"cell": best, "settings": {}, "train_images": 0, "status": "failed",
                "error": f"{type(err).__name__}: {err}"}

def shortcut_checks(config: StudyConfig, out: Path, frame: pd.DataFrame, best: str | None) -> dict | None:
    """The source probe and the lung checks of the best model (written to ``shortcut_audit.json``);
    a failing check is recorded, never fatal: the study's results are already safe."""
    if not config.shortcut_checks or best is None:
        return None
    from cxrlab.models.predictor import Predictor
    from cxrlab.study.shortcut_probes import lung_audit, source_probe_audit

    policy = run_policy(out / "best-model")  # the device its runs trained on
    audit: dict = {"cell": best}
    predictor = None
    for name, check in (("source_probe", lambda model: source_probe_audit(config, out, frame, model)),
                        ("lungs", lambda model: lung_audit(out, frame, model))):
        try:
            predictor = predictor or Predictor(out / "best-model")  # once, for both checks
            with use_policy(policy):
                audit[name] = check(predictor)
        except Exception as err:  # noqa: BLE001 -- an audit failure must not cost the finished study
            log.warning("study: %s check failed: %s", name, err)
            audit[name] = {"skipped": f"failed: {type(err).__name__}: {err}", "warnings": []}
    # features and maps in fp32 (probe features, Grad-CAM); the masked-input calls in the policy's precision
    audit["ran_on"] = stage_record(policy, next(predictor.model.parameters()).device if predictor else None)
    atomic_write_text(out / "shortcut_audit.json", json.dumps(audit, indent=2, default=str) + "\n")
    return audit

def complete_runs(table: pd.DataFrame, summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each complete cell's finished runs."""
    complete = summary.loc[summary["complete"], "cell"]
    return {cell: ok for cell in complete if not (ok := table[(table["cell"] == cell) & (table["status"] == "ok")]).empty}

def cell_models(out: Path, complete: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """Each complete cell's model folder (the ensemble of its runs); a cell whose runs cannot be read
    together is left out of the test side with a warning, the others go on."""
    models = {}
    for cell, ok in complete.items():
        try:
            models[cell] = cell_model(out, cell, ok)
        except (CxrlabError, OSError) as err:
            log.warning("study: %s's runs could not be put together as one model: %s", cell, err)
    return models

def export_best(config: StudyConfig, out: Path, frame: pd.DataFrame, table: pd.DataFrame, best: str,
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
