"""The MLflow tracking server's app as `influmix serve` runs it: `mlflow server --app-name influmix`.

It is MLflow's own FastAPI app (`mlflow.server.fastapi_app:app`, what `mlflow server` serves by default)
with one race removed. On a server without the auth plugin, MLflow 3.18 imports its optional
`mlflow.server.auth` lazily on every `runs/search` (`search_runs_impl`). Without Flask-WTF that import
fails and is retried on the next search. While it runs, the half-imported module sits in `sys.modules`. The
UI's assistant and gateway requests read it from there (`auth_plugin_active`). A page load sends both kinds
of request at once, and one of them then fails with `AttributeError: partially initialized module
'mlflow.server.auth' has no attribute 'is_auth_enabled'`: a 500 for the browser and a traceback in the
server's log. The served-stack tests caught it in CI.

Here the import is tried once, before the server takes a request. If the plugin is not installed, it is
recorded as absent, so no request retries it. MLflow's code already treats an `ImportError` as "no auth".
If the plugin is installed, the import succeeds here, as it would have on the first search, and
behaviour is unchanged. A deployment that wants authentication runs `--app-name basic-auth` instead.
"""

from __future__ import annotations

import importlib
import sys

AUTH_PLUGIN = "mlflow.server.auth"


def import_auth_plugin_once() -> bool:
    """Import MLflow's auth plugin now; if it cannot be imported, mark it absent. Returns whether it is there."""
    try:
        importlib.import_module(AUTH_PLUGIN)
    except ImportError:
        sys.modules[AUTH_PLUGIN] = None  # a later `import` raises ImportError at once, in any thread
        return False
    return True


import_auth_plugin_once()

from mlflow.server.fastapi_app import app  # after the plugin is settled, by design

__all__ = ["app", "import_auth_plugin_once"]
