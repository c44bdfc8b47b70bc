"""MLflow parent runs of studies and tuning searches (each training run nests under one); without
MLflow (``cxrlab[track]``) nothing is tracked and the parent run's id is empty."""

from __future__ import annotations

import json

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
