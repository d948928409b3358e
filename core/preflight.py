"""Check the services a run talks to before any heavy work, so an outage costs seconds, not an hour of compute.

* MLflow: a tracking *server* (http/https URI) that does not answer `/health` is an error up front -- a run
  that cannot be tracked would otherwise find out only at its last stage. (A sqlite URI needs no server.)
  If the server goes away mid-run, every stage's results are already committed to DuckDB; the `track`
  stage retries, then fails with `TrackingUnavailable`, and `influmix resume RUN_ID` tracks the run once
  the server is back, reusing every other stage.
* Prefect: a configured API (`PREFECT_API_URL`) that does not answer is not fatal -- the flow runs locally
  on a temporary Prefect server with a warning; it just won't show in that UI.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request

from core.config import Settings

TIMEOUT_S = 5.0


class TrackingUnavailable(ConnectionError):
    """The MLflow tracking server cannot be reached; a ConnectionError, so the track stage retries it."""


def _answers(url: str) -> str | None:
    """None if `url` answers 2xx, else why not (one line)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__


def tracking_problem(settings: Settings) -> str | None:
    """Why the MLflow tracking server is unusable, or None (always None for a local sqlite/file store)."""
    uri = settings.mlflow_uri
    if not uri.startswith(("http://", "https://")):
        return None
    why = _answers(uri.rstrip("/") + "/health")
    return None if why is None else f"MLflow tracking server at {uri} is unreachable ({why})"


def check_tracking(settings: Settings) -> None:
    """Raise TrackingUnavailable, naming the setting to change, if the tracking server does not answer."""
    problem = tracking_problem(settings)
    if problem:
        raise TrackingUnavailable(
            f"{problem}: start it (`influmix serve`), or set `track.tracking_uri` to a reachable server "
            "or a local sqlite:///path/mlflow.db")


def prefect_api_problem() -> str | None:
    """Why the configured Prefect API (`PREFECT_API_URL`) cannot be used, or None (also when none is set)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return None
    why = _answers(url.rstrip("/") + "/health")
    return None if why is None else (
        f"Prefect API at {url} is unreachable ({why}); running the flow locally on a temporary Prefect server: "
        "it will not appear in that UI")


def local_prefect() -> contextlib.AbstractContextManager:
    """Settings under which flows run on Prefect's temporary in-process server instead of the configured API."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: None})
