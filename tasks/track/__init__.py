"""Track the run: its `runs` row in DuckDB from start to finish, and one MLflow run for the whole pipeline,
opened when the flow starts, fed as each stage finishes, completed by the track stage (plots, datasets, the
influence model in the registry behind a quality-gated alias) and closed with the flow's status."""

from __future__ import annotations

import os

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.policies import STAGE_CACHE, retry_on_network_error
from tasks.track.final import track_run
from tasks.track.lifecycle import (
    finish_run,
    log_progress,
    mark_run_failed,
    new_run_id,
    register_run,
    start_run,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = ["finish_run", "finish_run_task", "log_progress", "log_progress_task", "mark_run_failed", "new_run_id",
           "register_run", "start_run", "start_run_task", "track_run", "track_task"]

start_run_task = task(start_run, name="start-run", cache_policy=NO_CACHE)
log_progress_task = task(log_progress, name="log-progress", cache_policy=NO_CACHE)
finish_run_task = task(finish_run, name="finish-run", cache_policy=NO_CACHE)
track_task = task(track_run, name="track", cache_policy=STAGE_CACHE, persist_result=True,
                  retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_network_error)
