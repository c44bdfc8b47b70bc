"""A study's runs shared by many workers through a database: Optuna's RDB storage as the job queue.

``cxrlab study CONFIG --storage URL`` on any number of processes or machines (``sqlite:///study.db``
on one machine, ``postgresql://user@host/db`` for many; the driver is ``cxrlab[postgres]``): each
run of a stage is an Optuna trial enqueued with its id as fixed parameters. ``Study.optimize``
hands each waiting trial to one worker (its claim is a state change the database makes once); a
worker whose process dies stops sending heartbeats, and after the grace period another worker marks
its trial failed and Optuna's ``RetryFailedTrialCallback`` puts it back in the queue, so a killed
run is trained again (resuming from its checkpoint when the study folder is shared). Two workers
that start a stage together may enqueue a run twice; the copy with the higher trial number gives
way, so each run is trained once. Hand-written here: only the mapping of runs to trials, not the
queue (Optuna's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

from cxrlab.core.optional import require
from cxrlab.study.config import StudyConfig

log = logging.getLogger(__name__)
PARAM = "run"
EMPTY = "-"  # what a trial that is not from the queue gets: the queue is empty


def _queue_sampler(optuna):
    """A sampler that proposes nothing: an enqueued trial has its run fixed, any other trial gets
    :data:`EMPTY` (Optuna samples a trial when its queue is empty)."""

    class QueueOnly(optuna.samplers.BaseSampler):
        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            return EMPTY

    return QueueOnly()


class SharedRuns:
    """The runs of one stage of a study, claimed through ``storage``.

    Args:
        storage: An SQLAlchemy URL Optuna's RDB storage takes.
        name: The stage's name in the database (the study's name, its settings' fingerprint and the stage).
        heartbeat: Seconds between a worker's heartbeats; a run silent for twice as long is retried.
    """

    def __init__(self, storage: str, name: str, heartbeat: int = 60) -> None:
        optuna = require("optuna", "shared studies (--storage)")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.name, self.heartbeat = optuna, name, heartbeat
        self.storage = optuna.storages.RDBStorage(
            storage, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
        self.study = optuna.create_study(study_name=name, storage=self.storage, load_if_exists=True,
                                         sampler=_queue_sampler(optuna))

    def _trials(self, states=None):
        return self.study.get_trials(deepcopy=False, states=states)

    def enqueue(self, runs: Sequence[str], choices: Sequence[str] | None = None) -> None:
        """Put every run not yet in the database in the queue (once, whichever worker comes first), and
        again a run whose every trial failed (its worker crashed on it; a rerun tries it again).
        ``choices``: every run of the queue, the same list on every worker (the database refuses a trial
        whose list of choices differs from an earlier one's); default: ``runs``."""
        self.runs = list(choices) if choices is not None else list(runs)
        failed = self.optuna.trial.TrialState.FAIL
        states: dict[str, set] = {}
        for trial in self._trials():  # a waiting trial has its run in its fixed parameters only
            run = trial.params.get(PARAM, trial.system_attrs.get("fixed_params", {}).get(PARAM))
            states.setdefault(run, set()).add(trial.state)
        for run in runs:  # skip_if_exists: a run already enqueued (or tried) by a worker is not added again
            self.study.enqueue_trial({PARAM: run}, skip_if_exists=states.get(run, set()) != {failed})

    def _taken_by_another(self, trial) -> bool:
        """Another trial of the same run finished it, or holds it with a lower number."""
        run = trial.params[PARAM]
        states = (self.optuna.trial.TrialState.RUNNING, self.optuna.trial.TrialState.COMPLETE)
        return any(t.number != trial.number and t.params.get(PARAM) == run and
                   (t.state == self.optuna.trial.TrialState.COMPLETE or t.number < trial.number)
                   for t in self._trials(states))

    def work(self, train: Callable[[str], str | None]) -> int:
        """Train waiting runs until none is left, nor running on another worker; ``train(run)`` returns
        an error text or None. Returns how many this worker trained."""
        done = 0

        def objective(trial) -> float:
            nonlocal done
            if trial.suggest_categorical(PARAM, [*self.runs, EMPTY]) == EMPTY:  # not from the queue: it is empty
                self.study.stop()
                raise self.optuna.TrialPruned("no run waiting")
            if self._taken_by_another(trial):
                raise self.optuna.TrialPruned("another worker has this run")
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who trains it
            error = train(trial.params[PARAM])
            done += 1
            if error:
                trial.set_user_attr("error", error[:2000])
            return 0.0

        running = self.optuna.trial.TrialState.RUNNING
        while True:
            self.study.optimize(objective, catch=(), gc_after_trial=True)
            self.optuna.storages.fail_stale_trials(self.study)  # another worker's silent runs: back in the queue
            waiting = self._trials((self.optuna.trial.TrialState.WAITING,))
            if waiting:
                continue
            if not self._trials((running,)):
                return done
            log.info("study: waiting for %d run(s) on other workers", len(self._trials((running,))))
            time.sleep(min(self.heartbeat, 30))

    def finished(self) -> set[str]:
        """The runs a worker has finished (trained, well or not: errors are in the run folders)."""
        return {t.params[PARAM] for t in self._trials((self.optuna.trial.TrialState.COMPLETE,))} - {EMPTY}


def queue_name(config: StudyConfig, part: str) -> str:
    """A study's name in the database: its name, a fingerprint of what its runs are, and the part."""
    settings = config.model_dump(mode="json", exclude={"workers", "storage", "heartbeat", "share"})
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{config.name}-{digest}-{part}"


def claim_once(storage: str, name: str, heartbeat: int, job: Callable[[SharedRuns], object]) -> bool:
    """Run ``job`` in the one worker that claims ``name`` in ``storage`` (the others wait until it is
    done); whether this worker ran it."""
    queue = SharedRuns(storage, name, heartbeat)
    queue.enqueue([name])
    return queue.work(lambda _: job(queue) and None) > 0


def shared_parent(storage: str | None, mlflow_uri: str | None, name: str,
                  heartbeat: int) -> Callable[[Callable[[], str]], str] | None:
    """For :func:`cxrlab.study.tracking.folder_state`: with a database and a tracking server (workers
    with folders of their own), the MLflow parent run of a study or a search is started by the one
    worker that claims ``name``, and every worker gets its id; otherwise None (one per folder)."""
    if not (storage and mlflow_uri):
        return None

    def claimed(start: Callable[[], str]) -> str:
        def begin(queue: SharedRuns) -> None:
            queue.study.set_user_attr("mlflow_parent", start())

        claim_once(storage, name, heartbeat, begin)
        return SharedRuns(storage, name, heartbeat).study.user_attrs.get("mlflow_parent", "")

    return claimed
