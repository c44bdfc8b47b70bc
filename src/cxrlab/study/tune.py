"""``run_tune``: an Optuna search (TPE sampler, median pruning) over training settings.

Layout of a search folder::

    tune.json               the config and the MLflow parent run
    splits.csv              the patient-grouped split every trial uses (made once)
    optuna.db               the Optuna storage (default; any SQLAlchemy URL by ``storage``)
    trials/trial-<n>/       one training run per trial
    shared/                 prepared shards and the frozen-prefix store, shared by the trials
    trials.csv              one row per trial: state, value, settings, time, error
    report.md/.html         best settings, its test-side figures, the search history
    best-model/             the best trial's model

Resumable: rerunning the same command continues the same Optuna study up to ``trials`` finished
trials; a trial that was running when the process died is marked failed and its settings are
tried again. Failed trials (bad settings, NaN) are recorded and the search goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import optuna
from filelock import FileLock
import pandas as pd

from cxrlab.core.run_folder import SUMMARY, TRACKING_DB
from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_bytes, atomic_write_text
from cxrlab.data import class_names, write_splits
from cxrlab.study.config import StudyConfig
from cxrlab.study.export import export_run
from cxrlab.study.plan import Cell, run_config, study_split
from cxrlab.study.queue import shared_parent
from cxrlab.study.share import Share, split_digest
from cxrlab.study.test_side import prediction_metrics
from cxrlab.workflows.predictions import predict_test_side
from cxrlab.study.tracking import finish_parent_run, folder_state
from cxrlab.study.tune_config import Range, TuneConfig
from cxrlab.train import train
from cxrlab.train.data import check_classes_present

log = logging.getLogger(__name__)
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass
class TuneResult:
    """Outcome of :func:`run_tune`."""

    out: Path
    trials: pd.DataFrame
    best_params: dict | None
    best_value: float | None
    test: dict | None
    ran: int


class PruneOnPlateau(L.Callback):
    """Report the monitored validation metric after every epoch (all phases count on) and stop a
    trial the pruner calls hopeless."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor, self.step = trial, monitor, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), self.step)
        self.step += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.monitor} {float(value):.4f} after {self.step} epoch(s): below the median")


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """One value per searched setting. Choices that are not plain values (e.g. a head as a mapping)
    are suggested by their JSON text, which the storage can hold."""
    params = {}
    for key, choice in space.items():
        if isinstance(choice, Range):
            if choice.is_int:
                params[key] = trial.suggest_int(key, int(choice.low), int(choice.high), step=int(choice.step or 1),
                                                log=choice.log)
            else:
                params[key] = trial.suggest_float(key, float(choice.low), float(choice.high), step=choice.step,
                                                  log=choice.log)
        elif all(isinstance(c, bool | int | float | str) or c is None for c in choice):
            params[key] = trial.suggest_categorical(key, choice)
        else:
            params[key] = json.loads(trial.suggest_categorical(key, [json.dumps(c, sort_keys=True) for c in choice]))
    return params


def _as_study(config: TuneConfig) -> StudyConfig:
    """The search as a one-fold study: the same split, shared folders and run configs."""
    return StudyConfig(name=config.name, data=config.data, splits=config.splits, scheme=config.scheme,
                       ratios=config.ratios, dedupe=config.dedupe, folds=0, seed=config.seed, base=config.base,
                       grid={k.split(".")[0]: [None] for k in config.space}, share_prefix=config.share_prefix,
                       mlflow_uri=config.mlflow_uri, experiment=config.experiment, shortcut_checks=False)


def _storage(config: TuneConfig, out: Path) -> optuna.storages.RDBStorage:
    url = config.storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    if config.storage:  # shared between machines: a trial is stale when its heartbeat stops
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=60, grace_period=300,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    return optuna.storages.RDBStorage(url)


def _recover_interrupted(storage: optuna.storages.BaseStorage, name: str) -> list[tuple[int, dict]]:
    """Trials still marked running in the folder's own database were cut off (kill, power loss):
    nobody else runs trials there. Mark them failed; return ``(number, settings)`` to try again.

    Runs before the study is loaded, so Optuna's trial cache never holds the stale state."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return []
    stale = storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return [(t.number, t.params) for t in stale]


def _counted(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=DONE) if not t.user_attrs.get("interrupted"))


FIXED = ("data", "splits", "scheme", "ratios", "seed", "base", "space", "metric")  # what a resumed search keeps


def _state(config: TuneConfig, out: Path, uri: str) -> dict:
    current = config.model_dump(mode="json")
    shared = shared_parent(config.storage, config.mlflow_uri, f"{config.name}-mlflow-parent", 60)
    return folder_state(out / "tune.json", current, FIXED, "a search", uri, config.experiment, config.name,
                        {"space": current["space"], "metric": config.metric}, {"cxrlab.tune": config.name}, shared)


def run_tune(config: TuneConfig, out: str | Path, progress: Callable[[str], None] | None = None) -> TuneResult:
    """Run (or resume) the search, then evaluate the best trial on the test side and write the
    trials table, the report and ``best-model``.

    Raises:
        ConfigError: ``out`` holds a search with other settings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    uri = config.mlflow_uri or f"sqlite:///{(out / TRACKING_DB).resolve()}"
    as_study = _as_study(config).model_copy(update={"mlflow_uri": uri})
    with FileLock(str(out / "tune.lock")):  # workers sharing the folder: one makes the state (one MLflow parent)
        state = _state(config, out, uri)
        frame = study_split(as_study, out)
    check_classes_present(frame, class_names(config.scheme))  # before any trial: each would fail the same way
    share = Share(config.share, out) if config.share else None
    if share is not None:  # refuses a share holding another search, or this one made from other data
        share.claim(config.model_dump(mode="json"), FIXED, split_digest(frame))
    storage = _storage(config, out)
    interrupted = _recover_interrupted(storage, config.name) if config.storage is None else []
    study = optuna.create_study(
        storage=storage, study_name=config.name, direction=config.direction, load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials),
        pruner=(optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials, n_warmup_steps=1)
                if config.pruning else optuna.pruners.NopPruner()))
    for number, params in interrupted:
        log.warning("tune: trial %d was interrupted; its settings run again", number)
        study.enqueue_trial(params, user_attrs={"retry_of": number})

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, config.space)
        trial.set_user_attr("settings", params)  # decoded: a mapping chosen by its JSON text is a mapping again
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        trial.set_user_attr("run", str(run_dir.relative_to(out)))
        tags = {"mlflow.parentRunId": state["mlflow_parent"], "cxrlab.tune": config.name,
                "cxrlab.trial": str(trial.number)}
        try:
            train_config = run_config(as_study, Cell(f"trial-{trial.number}", params, params), run_dir, out / "shared", tags)
            write_splits(frame, {"tune": config.name, "trial": trial.number}, run_dir)
            summary = train(train_config, callbacks=[PruneOnPlateau(trial, config.monitored)],
                            screening=False).summary  # the exported trial gets its reference then
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
            raise
        if share is not None:
            share.put_quietly(run_dir)
        value = summary["best_val_loss"] if config.metric == "loss" else summary["val"].get(config.metric)
        if value is None or not math.isfinite(value):
            raise ConfigError(f"trial {trial.number}: validation {config.metric} is undefined (one class on the "
                              "validation side?)")
        return float(value)

    ran = 0

    def report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        _write_trials(study, out)  # nothing finished is lost if we die now
        if progress:
            value = (f" after {len(trial.intermediate_values)} epoch(s)" if trial.state == optuna.trial.TrialState.PRUNED
                     else "" if trial.value is None else f" {config.metric} {trial.value:.4f}")
            progress(f"trial {trial.number}: {trial.state.name.lower()}{value}")

    remaining = config.trials - _counted(study)
    if remaining > 0:
        with _quiet_optuna():
            study.optimize(objective, n_trials=remaining, timeout=config.timeout, catch=(Exception,),
                           callbacks=[report_trial], gc_after_trial=True)
    trials = _write_trials(study, out)
    result = _finish(config, out, study, trials, frame, uri, state["mlflow_parent"], ran, share)
    if share is not None:  # the tables and report of the search as this worker saw it at its end
        share.put_quietly(out)
    return result


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO: the progress bar and trials.csv already say it."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _write_trials(study: optuna.Study, out: Path) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        settings = t.user_attrs.get("settings", t.params)
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     "value": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                     **{f"param.{k}": json.dumps(v) if isinstance(v, dict | list) else v for k, v in settings.items()},
                     "epochs": len(t.intermediate_values), "seconds": seconds, "run": t.user_attrs.get("run", ""),
                     "error": t.user_attrs.get("error", "interrupted" if t.user_attrs.get("interrupted") else "")})
    table = pd.DataFrame(rows)
    atomic_write_text(out / "trials.csv", table.to_csv(index=False))
    if len(table):
        atomic_write_bytes(out / "trials.parquet", table.astype({c: str for c in table.columns
                                                                 if table[c].dtype == object}).to_parquet(index=False))
    return table


def _finish(config: TuneConfig, out: Path, study: optuna.Study, trials: pd.DataFrame, frame: pd.DataFrame, uri: str,
            parent: str, ran: int, share: Share | None = None) -> TuneResult:
    from cxrlab.study.tune_report import write_tune_report

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    test = None
    if best is not None:
        run_dir = out / best.user_attrs["run"]
        if share is not None and not (run_dir / SUMMARY).exists():
            share.get_quietly(run_dir)  # another worker's trial
        export_run(run_dir, out / "best-model", {"trial": best.number, "settings": _settings(best)})
        test_side = frame[frame["split"] == "test"]
        if len(test_side):
            metrics, names = prediction_metrics(predict_test_side(run_dir, test_side, out / "shared" / "prepared-test"))
            test = {"accuracy": metrics["accuracy"], "auc_macro": metrics["macro"]["roc_auc"], "n": metrics["n"],
                    "per_class": {n: {k: metrics["per_class"][n][k] for k in ("sensitivity", "specificity", "roc_auc")}
                                  for n in names}}
    importances = _importances(study) if len(complete) >= 3 else {}
    write_tune_report(config, out, trials, best, test, importances)
    finish_parent_run(uri, parent, {"cxrlab.best_trial": str(best.number)} if best else {},
                      {f"best_{config.metric}": best.value} if best else {})
    return TuneResult(out, trials, _settings(best) if best else None, best.value if best else None, test, ran)


def _settings(trial: optuna.trial.FrozenTrial) -> dict:
    return trial.user_attrs.get("settings", trial.params)


def _importances(study: optuna.Study) -> dict[str, float]:
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as err:  # e.g. a parameter that never varied
        log.info("tune: no parameter importances (%s)", err)
        return {}

