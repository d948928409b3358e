"""Run bookkeeping: the `runs` row that every other table's run_id points at, and resuming a run.

A run stores its exact settings (in `runs.config_json` and `<run_dir>/<run_id>/settings.json`) and the
process running it, so `influmix resume RUN_ID` can finish it after a crash with the same settings -- the
stage cache then reuses every stage that had finished -- and refuses while that process is still alive.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from core import db
from core.config import Settings
from core.preflight import check_tracking


def new_run_id() -> str:
    """Sortable by time, unique without coordination."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def start_run(settings: Settings, prefect_flow_run_id: str | None = None) -> str:
    """Register the run, after checking the tracking server answers (a deployment has no CLI preflight)."""
    check_tracking(settings)
    run_id = settings.run_id or new_run_id()
    pinned = settings.model_copy(update={"run_id": run_id})
    run_dir = settings.stage_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(pinned.model_dump_json(indent=2), encoding="utf-8")
    with db.connect(settings.database) as con:
        db.run(con, "insert_run", {
            "run_id": run_id, "config_hash": settings.config_hash(), "config_json": pinned.model_dump_json(),
            "prefect_flow_run_id": prefect_flow_run_id, "host": socket.gethostname(), "pid": os.getpid(),
        })
    return run_id


def _alive(pid: int) -> bool:
    """Whether `pid` still runs a Python process (a crashed run's pid may since belong to something else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"python" in cmdline.read_bytes() or b"influmix" in cmdline.read_bytes()


def resume_settings_file(database: Path, run_id: str) -> Path:
    """The settings file to re-run `run_id` with; raises LookupError/ValueError when it cannot be resumed."""
    with db.connect(database, read_only=True) as con:
        found = db.rows(con, "get_run", {"run_id": run_id})
    if not found:
        raise LookupError(f"no run {run_id} in {database}")
    _, _, config_json, status, *_, host, pid = found[0]
    if status == "completed":
        raise ValueError(f"run {run_id} already completed; nothing to resume (`influmix show {run_id}`)")
    if status == "running" and pid and host == socket.gethostname() and pid != os.getpid() and _alive(pid):
        raise ValueError(f"run {run_id} is still running in process {pid}; stop it first or wait for it")
    settings = Settings.model_validate_json(config_json).model_copy(update={"run_id": run_id})
    path = settings.stage_dir(run_id) / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(settings.model_dump_json(indent=2), encoding="utf-8")
    return path


def finish_run(settings: Settings, run_id: str, status: str, mlflow_run_id: str | None = None) -> None:
    with db.connect(settings.database) as con:
        db.run(con, "finish_run", {"run_id": run_id, "status": status, "mlflow_run_id": mlflow_run_id})


def mark_run_failed(flow, flow_run, state) -> None:
    """Prefect on_failure hook: the flow's `runs` row says failed instead of running forever."""
    from core.config import load_settings

    params = flow_run.parameters or {}
    settings = load_settings(params.get("config"), params.get("overrides"))
    with db.connect(settings.database) as con:
        db.run(con, "fail_run", {"prefect_flow_run_id": str(flow_run.id)})


start_run_task = task(start_run, name="start-run", cache_policy=NO_CACHE)
finish_run_task = task(finish_run, name="finish-run", cache_policy=NO_CACHE)
