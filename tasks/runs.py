"""Run bookkeeping: the `runs` row that every other table's run_id points at."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from influmix import db
from influmix.config import Settings


def new_run_id() -> str:
    """Sortable by time, unique without coordination."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def start_run(settings: Settings, prefect_flow_run_id: str | None = None) -> str:
    run_id = settings.run_id or new_run_id()
    settings.stage_dir(run_id).mkdir(parents=True, exist_ok=True)
    with db.connect(settings.database) as con:
        db.run(
            con,
            "insert_run",
            {
                "run_id": run_id,
                "config_hash": settings.config_hash(),
                "config_json": settings.model_dump_json(),
                "prefect_flow_run_id": prefect_flow_run_id,
            },
        )
    return run_id


def finish_run(settings: Settings, run_id: str, status: str, mlflow_run_id: str | None = None) -> None:
    with db.connect(settings.database) as con:
        db.run(con, "finish_run", {"run_id": run_id, "status": status, "mlflow_run_id": mlflow_run_id})


def mark_run_failed(flow, flow_run, state) -> None:
    """Prefect on_failure hook: the flow's `runs` row says failed instead of running forever."""
    from influmix.config import load_settings

    params = flow_run.parameters or {}
    settings = load_settings(params.get("config"), params.get("overrides"))
    with db.connect(settings.database) as con:
        db.run(con, "fail_run", {"prefect_flow_run_id": str(flow_run.id)})


start_run_task = task(start_run, name="start-run", cache_policy=NO_CACHE)
finish_run_task = task(finish_run, name="finish-run", cache_policy=NO_CACHE)
