"""Keep user mistakes to one line while a flow runs: Prefect's run loggers drop their tracebacks.

Prefect logs every failed task run and flow run with `exc_info`, so a setting that turns out wrong only
mid-run (`cluster.k` above the number of documents, found by the cluster stage) prints two screens of
engine frames before the CLI's own one-line error. `quiet_user_tracebacks` keeps Prefect's log lines --
they still say which task failed and why -- and drops the traceback for the given exception types only;
bugs keep their tracebacks, and `influmix run --debug` does not install it at all.
"""

from __future__ import annotations

import contextlib
import logging
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
