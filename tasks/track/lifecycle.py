"""A run's life, in DuckDB and in MLflow: registered and opened when the flow starts, its stages' metrics
logged as each stage finishes, closed with the flow's status.

A run stores its exact settings (in `runs.config_json` and `<run_dir>/<run_id>/settings.json`) and the
process running it, so `influmix resume RUN_ID` can finish it after a crash with the same settings; the
resumed run continues the same MLflow run (found by its `influmix.run_id` tag).

MLflow is driven through an `MlflowClient` bound to the run's tracking URI, never the process-global
fluent state, so stages may log from any thread or process. What the live logging could not send (the
server was away) stays in DuckDB and the stage folders; the track stage sends whatever is still missing.
"""

from __future__ import annotations

import os
import secrets
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from core import db
from core.artifacts import Corpus, Run, StageResult
from core.config import Settings, flatten_settings, load_settings
from core.preflight import TrackingUnavailable, check_tracking, tracking_problem
from core.tracking import ensure_experiment, log_new_params, mlflow_client, open_pipeline_run
from tasks.track.points import log_missing_points

EFFECTIVE_CONFIG = "config/settings.json"  # the run's resolved settings, as an MLflow artifact


def new_run_id() -> str:
    """Sortable by time, unique without coordination."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def pinned_settings(settings: Settings, run_id: str) -> Settings:
    """The settings as this run resolved them: its id and the database it writes, not `None` defaults."""
    return settings.model_copy(update={"run_id": run_id, "db_path": Path(settings.database).resolve()})


def register_run(settings: Settings, prefect_flow_run_id: str | None = None, mlflow_run_id: str | None = None,
                 run_id: str | None = None) -> Run:
    """The run's `runs` row and folder, with its settings file (benchmarks register runs this way too)."""
    run_id = run_id or settings.run_id or new_run_id()
    pinned = pinned_settings(settings, run_id)
    run_dir = settings.stage_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(pinned.model_dump_json(indent=2), encoding="utf-8")
    with db.connect(settings.database) as con:
        db.run(con, "insert_run", {
            "run_id": run_id, "config_hash": settings.config_hash(), "config_json": pinned.model_dump_json(),
            "mlflow_run_id": mlflow_run_id, "prefect_flow_run_id": prefect_flow_run_id,
            "host": socket.gethostname(), "pid": os.getpid()})
    return Run(run_id, str(settings.database), str(run_dir), prefect_flow_run_id, mlflow_run_id)


def start_run(settings: Settings, prefect_flow_run_id: str | None = None) -> Run:
    """Register the run and open its MLflow run, after checking the tracking server answers (a deployment
    has no CLI preflight): from here on the run can be watched in MLflow as it goes."""
    check_tracking(settings)
    run_id = settings.run_id or new_run_id()
    with lost_server_is_resumable(settings, run_id):
        experiment_id, mlflow_run_id = open_tracked_run(settings, run_id, prefect_flow_run_id)
    return replace(register_run(settings, prefect_flow_run_id, mlflow_run_id, run_id), experiment_id=experiment_id)


def experiment_location(settings: Settings) -> str | None:
    """A local store keeps its artifacts beside the run directory, not in the working directory."""
    return (settings.run_dir / "mlartifacts").resolve().as_uri() if settings.mlflow_uri.startswith("sqlite:") else None


def open_tracked_run(settings: Settings, run_id: str, prefect_flow_run_id: str | None) -> tuple[str, str]:
    """(experiment id, MLflow run id) of the run, opened with its params and effective config."""
    client = mlflow_client(settings.mlflow_uri)
    experiment_id = ensure_experiment(client, settings.track.experiment, experiment_location(settings))
    tags = {"influmix.config_hash": settings.config_hash()}
    if prefect_flow_run_id:
        tags["prefect.flow_run_id"] = prefect_flow_run_id
    mlflow_run_id = open_pipeline_run(client, experiment_id, run_id, tags)
    pinned = pinned_settings(settings, run_id).model_dump(mode="json")
    log_new_params(client, mlflow_run_id, flatten_settings(pinned))
    client.log_dict(mlflow_run_id, pinned, EFFECTIVE_CONFIG)
    return experiment_id, mlflow_run_id


def log_progress(settings: Settings, run: Run, corpus: Corpus, stages: list[StageResult]) -> int:
    """Send the metrics of every finished stage MLflow does not have yet; returns how many points were sent.

    Called as each stage finishes. An unreachable server costs a warning, not the run: the track stage
    sends the rest once it answers again.
    """
    if not run.mlflow_run_id:
        return 0
    with lost_server_is_a_warning(settings, f"metrics of {run.run_id} wait in {settings.database}; "
                                            "the track stage sends them"):
        return log_missing_points(mlflow_client(settings.mlflow_uri), run, corpus, stages)
    return 0


def finish_run(settings: Settings, run: Run, status: str, mlflow_run_id: str | None = None) -> None:
    """Close the `runs` row (and the MLflow run, if the track stage has not closed it) with `status`."""
    mlflow_run_id = mlflow_run_id or run.mlflow_run_id
    with db.connect(settings.database) as con:
        db.run(con, "finish_run", {"run_id": run.run_id, "status": status, "mlflow_run_id": mlflow_run_id})
    if not mlflow_run_id:
        return
    with lost_server_is_a_warning(settings, f"MLflow run {mlflow_run_id} keeps its last status"):
        mlflow_client(settings.mlflow_uri).set_terminated(mlflow_run_id, "FINISHED" if status == "completed" else "FAILED")


def mark_run_failed(flow, flow_run, state) -> None:
    """Prefect on_failure hook: the `runs` row and the MLflow run say failed instead of running forever."""
    params = flow_run.parameters or {}
    settings = load_settings(params.get("config"), params.get("overrides"))
    with db.connect(settings.database) as con:
        failed = db.rows(con, "fail_run", {"prefect_flow_run_id": str(flow_run.id)})
    for _run_id, mlflow_run_id in failed:
        if not mlflow_run_id:
            continue
        try:
            client = mlflow_client(settings.mlflow_uri)
            client.set_tag(mlflow_run_id, "influmix.failure", (getattr(state, "message", None) or "failed")[:5000])
            client.set_terminated(mlflow_run_id, "FAILED")
        except Exception as exc:  # noqa: BLE001 -- the hook must not hide the flow's own error
            warnings.warn(f"could not mark MLflow run {mlflow_run_id} failed: {exc}", stacklevel=2)


@contextmanager
def lost_server_is_resumable(settings: Settings, run_id: str) -> Iterator[None]:
    """Inside: an error while the tracking server does not answer becomes TrackingUnavailable, saying how to
    go on; any other error is raised as it is."""
    try:
        yield
    except Exception as exc:
        if (problem := tracking_problem(settings)) is None:
            raise
        raise TrackingUnavailable(f"{problem}; every stage's results are saved in {settings.database}: "
                                  f"`influmix resume {run_id}` tracks them once it is back") from exc


@contextmanager
def lost_server_is_a_warning(settings: Settings, consequence: str) -> Iterator[None]:
    """Inside: an error while the tracking server does not answer is a warning naming `consequence`, not the
    run's end; any other error is raised as it is."""
    try:
        yield
    except Exception:
        if (problem := tracking_problem(settings)) is None:
            raise
        warnings.warn(f"{problem}: {consequence}", stacklevel=3)
