"""MLflow parent runs of studies and tuning searches (each training run nests under one); without
MLflow (``cxrlab[track]``) nothing is tracked and the parent run's id is empty."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.core.optional import available


def start_parent_run(uri: str, experiment: str, name: str, params: dict, tags: dict[str, str]) -> str:
    """Create the parent run (its experiment too, when new) and return its id ("" without MLflow)."""
    if not available("mlflow"):
        return ""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value if isinstance(value, int | float | str) else json.dumps(value))
    return run.info.run_id


def finish_parent_run(uri: str, run_id: str, tags: dict[str, str], metrics: dict[str, float]) -> None:
    """Tag the parent run with its outcome, log its metrics and mark it finished."""
    if not run_id or not available("mlflow"):
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")


def folder_state(path: Path, config: dict, fixed: Sequence[str], what: str, uri: str, experiment: str, name: str,
                 params: dict, tags: dict[str, str], shared: Callable[[Callable[[], str]], str] | None = None) -> dict:
    """The state file of a resumable folder (``study.json``, ``tune.json``): the current ``config``
    and the MLflow parent run (started once), written atomically. ``shared(start)``, when given,
    returns the parent run of workers with folders of their own (calling ``start`` in one of them).

    Raises:
        ConfigError: the folder holds ``what`` made with other values of the ``fixed`` settings.
    """
    if path.exists():
        state = json.loads(path.read_text())
        changed = [k for k in fixed if state["config"].get(k) != config.get(k)]
        if changed:
            raise ConfigError(f"{path.parent}: holds {what} with other settings (differs in {', '.join(changed)}); "
                              "use a new --out")
    else:
        state = {"name": name}
    state["config"] = config
    if not state.get("mlflow_parent"):
        def start() -> str:
            return start_parent_run(uri, experiment, name, params, tags)

        state["mlflow_parent"] = shared(start) if shared is not None else start()
    atomic_write_text(path, json.dumps(state, indent=2) + "\n")
    return state
