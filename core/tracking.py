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
