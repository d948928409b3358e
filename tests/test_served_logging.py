"""The served Prefect server's logging: Prefect's own config plus one filter, loaded by Prefect in a real process.

A SQLite lock that Prefect's worker-channel heartbeat retries is one warning line; anything else on that
logger keeps its traceback. The lock is real (SQLITE_BUSY_SNAPSHOT between two connections in WAL mode).
"""

from __future__ import annotations

import os
import subprocess
import sys

from influmix.services import write_prefect_logging_config
from tests.conftest import REPO

HEARTBEAT = """
import sqlite3, sys
from pathlib import Path
import sqlalchemy.exc
from prefect.logging import get_logger
from prefect.logging.configuration import setup_logging

setup_logging()
db = Path(sys.argv[1])
reader, writer = sqlite3.connect(db, isolation_level=None), sqlite3.connect(db, isolation_level=None)
reader.execute("PRAGMA journal_mode=WAL")
reader.execute("CREATE TABLE worker (beat)")
reader.execute("BEGIN")
reader.execute("SELECT * FROM worker").fetchall()  # the heartbeat reads the work pool
writer.execute("INSERT INTO worker VALUES (1)")  # another service commits
log = get_logger("prefect.server.utilities.worker_channel")
try:
    try:
        reader.execute("INSERT INTO worker VALUES (2)")  # the heartbeat writes: refused at once
    except sqlite3.OperationalError as orig:
        raise sqlalchemy.exc.OperationalError("INSERT INTO worker", {}, orig) from orig
except Exception:
    log.exception("Worker channel heartbeat persistence failed")
try:
    raise RuntimeError("a real bug")
except RuntimeError:
    log.exception("something else failed")
"""


def test_a_retried_heartbeat_lock_is_one_warning_line_and_bugs_keep_their_traceback(tmp_path):
    config = write_prefect_logging_config(tmp_path / "prefect-logging.yml")
    proc = subprocess.run([sys.executable, "-c", HEARTBEAT, str(tmp_path / "prefect.db")], capture_output=True,
                          text=True, timeout=120, check=False, cwd=REPO,
                          env={**os.environ, "PREFECT_LOGGING_SETTINGS_PATH": str(config), "COLUMNS": "250",
                               "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    heartbeat = [line for line in lines if "heartbeat persistence failed" in line]
    assert len(heartbeat) == 1 and "WARNING" in heartbeat[0] and "SQLite was busy" in heartbeat[0], proc.stderr
    assert "database is locked" not in proc.stderr
    assert proc.stderr.count("Traceback (most recent call last)") == 1 and "RuntimeError: a real bug" in proc.stderr
