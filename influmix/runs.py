"""`influmix resume`: finish a crashed or failed run with its own stored settings.

The stage cache then reuses every stage that had finished. Refuses while the run's process is still
alive (on this host) and says so for a completed run.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil

from core import db, store
from core.config import Settings
from influmix.processes import alive


def _alive(pid: int) -> bool:
    """Whether `pid` still runs a Python process (a crashed run's pid may since belong to something else)."""
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return alive(process) and ("python" in command or "influmix" in command)


def resume_settings_file(database: Path, run_id: str) -> Path:
    """The settings file to re-run `run_id` with; raises LookupError/ValueError when it cannot be resumed."""
    with db.connect(database, read_only=True) as con:
        run = store.run_row(con, run_id)
    if run is None:
        raise LookupError(f"no run {run_id} in {database}")
    if run.status == "completed":
        raise ValueError(f"run {run_id} already completed; nothing to resume (`influmix show {run_id}`)")
    if (run.status == "running" and run.pid and run.host == socket.gethostname() and run.pid != os.getpid()
            and _alive(run.pid)):
        raise ValueError(f"run {run_id} is still running in process {run.pid}; stop it first or wait for it")
    settings = Settings.model_validate_json(run.config_json).model_copy(update={"run_id": run_id})
    path = settings.stage_dir(run_id) / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(settings.model_dump_json(indent=2), encoding="utf-8")
    return path
