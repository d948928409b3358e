"""MLflow's tracking URI is process-global state; scope it to the block that logs.

`mlflow.set_tracking_uri` also exports the URI as MLFLOW_TRACKING_URI (for subprocesses), and influmix's
settings fall back on that variable when `track.tracking_uri` is unset. Left in place, one run's store
(or a server that has since gone away) would silently become the next run's default in the same process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

ENV_VAR = "MLFLOW_TRACKING_URI"


@contextmanager
def tracking_scope(uri: str) -> Iterator[None]:
    """Track to `uri` inside the block; afterwards the process's tracking URI and environment are as before."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous_uri, previous_env = utils._tracking_uri, os.environ.get(ENV_VAR)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if previous_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous_env


RUN_TAG = "influmix.run_id"
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limits
MAX_METRICS_PER_BATCH = 1000


def mlflow_client(uri: str):
    """A client bound to `uri` for tracking and the registry: no process-global state, safe from any thread."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def open_pipeline_run(client, experiment_id: str, run_id: str, tags: dict[str, str]) -> str:
    """The MLflow run of pipeline run `run_id`, marked running: the one an interrupted attempt opened (so a
    resumed run keeps one MLflow run), else a new one named after it."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        return client.create_run(experiment_id, run_name=run_id, tags={RUN_TAG: run_id, **tags}).info.run_id
    mlflow_run_id = found[0].info.run_id
    client.update_run(mlflow_run_id, status="RUNNING")
    for key, value in tags.items():
        client.set_tag(mlflow_run_id, key, value)
    return mlflow_run_id


def log_new_params(client, mlflow_run_id: str, params: dict[str, str]) -> None:
    """Log the params the run does not have yet (MLflow refuses to change a logged param; a resumed run
    re-logs the same settings)."""
    from mlflow.entities import Param

    logged = client.get_run(mlflow_run_id).data.params
    new = [Param(key, value) for key, value in params.items() if key not in logged]
    for start in range(0, len(new), MAX_PARAMS_PER_BATCH):
        client.log_batch(mlflow_run_id, params=new[start:start + MAX_PARAMS_PER_BATCH])


def log_metric_points(client, mlflow_run_id: str, points: list[tuple[str, float, int]]) -> None:
    """Log (key, value, step) points in as few requests as MLflow allows; non-finite values are skipped."""
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, int(step)) for key, value, step in points
               if value is not None and math.isfinite(float(value))]
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(mlflow_run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])


def logged_steps(client, mlflow_run_id: str, key: str) -> set[int]:
    """The steps at which `key` was logged: which stages a run already has in MLflow."""
    return {m.step for m in client.get_metric_history(mlflow_run_id, key)}
