"""Keep what is no bug to one line: user mistakes while a flow runs, and SQLite locks Prefect's server retries.

Prefect logs every failed task run and flow run with `exc_info`, so a setting that turns out wrong only
mid-run (`cluster.k` above the number of documents, found by the cluster stage) prints two screens of
engine frames before the CLI's own one-line error. `quiet_user_tracebacks` keeps Prefect's log lines --
they still say which task failed and why -- and drops the traceback for the given exception types only;
bugs keep their tracebacks, and `influmix run --debug` does not install it at all.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator

PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class DropUserTracebacks(logging.Filter):
    """Strip `exc_info` from records whose exception is one of `errors` (a user mistake, not a bug)."""

    def __init__(self, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(exc, self.errors):
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def quiet_user_tracebacks(
    errors: tuple[type[BaseException], ...], loggers: tuple[str, ...] = PREFECT_RUN_LOGGERS
) -> Iterator[None]:
    """While active, the named loggers log `errors` without their traceback."""
    filt = DropUserTracebacks(errors)
    targets = [logging.getLogger(name) for name in loggers]
    for logger in targets:
        logger.addFilter(filt)
    try:
        yield
    finally:
        for logger in targets:
            logger.removeFilter(filt)


WORKER_CHANNEL_LOGGER = "prefect.server.utilities.worker_channel"


def is_sqlite_busy(exc: BaseException | None) -> bool:
    """SQLite refused a write because another connection holds or just changed the database (SQLITE_BUSY*)."""
    orig = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's error
    return isinstance(orig, sqlite3.OperationalError) and (
        "database is locked" in str(orig) or str(getattr(orig, "sqlite_errorname", "")).startswith("SQLITE_BUSY"))


class RetriedSQLiteLock(logging.Filter):
    """Prefect's worker-channel heartbeat hit a SQLite lock: one warning line instead of an error and two tracebacks.

    The heartbeat reads the work pool, then writes, in one deferred transaction; when another connection of
    the server commits in between, SQLite refuses the write at once (SQLITE_BUSY_SNAPSHOT, no busy timeout
    helps). Prefect retries it -- it closes the channel as retryable and the worker reconnects and beats
    again -- and drops such retryable errors from its other logs (`server.log_retryable_errors`), but logs this
    one with `logger.exception`. The line stays: a heartbeat that keeps failing is still visible.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if is_sqlite_busy(exc):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"{record.msg} (SQLite was busy; the worker reconnects and beats again)"
        return True
