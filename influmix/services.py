"""The served stack: a Prefect server (UI + API), a Prefect worker on a process pool, an MLflow server.

`influmix serve` starts the three as background processes bound to `serve.host` (127.0.0.1 unless
configured), each logging to `<run_dir>/services/<name>.log`, and waits until each is healthy: the API
answers, the work pool says READY (a worker is polling it), MLflow answers `/health`. `influmix stop` stops
exactly the processes it started, with everything they started (a flow run in flight on the worker too;
`influmix.processes`). An `env` file there tells clients (`prefect deploy`, the CLI, a shell) where the
services are.

What Prefect's own server management does (3.8.8), and why only its pid file is used: `prefect server start
--background` pipes the server's output to a parent that exits at once, so the server's log -- and any
traceback of its scheduler -- is lost, and it returns before the server answers; `prefect server stop`
SIGTERMs whatever pid `$PREFECT_HOME/server.pid` names, without checking that it is still the server, and
does not wait. So the server runs as `prefect server start` in a process we start, logging to a file, and
its pid goes into Prefect's own `<PREFECT_HOME>/server.pid`: `prefect server stop` stops it too, and
`prefect server start --background` refuses to put a second server on the same database. The worker and
MLflow have no such command; their pid files lie beside the logs.

The Prefect home is `<run_dir>/prefect`, the same one `influmix run` uses for that run directory, so runs
made without the stack (`make demo`) show in its UI once it is up. The server logs through Prefect's own
logging config plus one filter (`influmix.quiet.RetriedSQLiteLock`): a SQLite lock its worker heartbeat
retries is a warning line, not an error with two tracebacks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from core.config import Settings
from influmix.processes import from_pid_file, stop_all, tree, write_pid_file
from influmix.quiet import WORKER_CHANNEL_LOGGER

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SERVER_MARKER = "prefect server start"


class ServiceError(RuntimeError):
    """A service could not start or be reached; the message says which, why, and which log to read."""


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    healthy: Callable[[], bool]
    url: str
    pid_file: Path
    marker: str  # words of the command line that identify our process
    port: int | None = None
    port_setting: str = ""

    def log_file(self, folder: Path) -> Path:
        return folder / f"{self.name}.log"

    def running(self) -> psutil.Process | None:
        return from_pid_file(self.pid_file, self.marker)


def services_dir(settings: Settings) -> Path:
    return (settings.serve.dir or settings.run_dir / "services").resolve()


def prefect_home(settings: Settings) -> Path:
    """One Prefect home (database, result storage) per run directory, for served and local runs alike."""
    return settings.run_dir.resolve() / "prefect"


def prefect_api_url(settings: Settings) -> str:
    return f"http://{settings.serve.host}:{settings.serve.prefect_port}/api"


def mlflow_url(settings: Settings) -> str:
    return f"http://{settings.serve.host}:{settings.serve.mlflow_port}"


def http_ok(url: str, check: Callable[[bytes], bool] = lambda body: True, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200 and check(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pool_ready(settings: Settings) -> bool:
    """The work pool exists and a worker is polling it (Prefect marks it READY)."""
    url = f"{prefect_api_url(settings)}/work_pools/{settings.serve.work_pool}"
    return http_ok(url, lambda body: json.loads(body).get("status") == "READY")


def base_env(settings: Settings) -> dict[str, str]:
    """What every served process and every client of the stack needs to find it."""
    return {
        "PREFECT_API_URL": prefect_api_url(settings),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": mlflow_url(settings),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }


def plan(settings: Settings) -> list[Service]:
    """The three services, in start order (the worker needs the Prefect API)."""
    s, bindir, folder = settings.serve, Path(sys.executable).parent, services_dir(settings)
    run_dir, home = settings.run_dir.resolve(), prefect_home(settings)
    prefect_url = prefect_api_url(settings)[:-4]
    return [
        Service("prefect-server", [str(bindir / "prefect"), "server", "start", "--host", s.host,
                                   "--port", str(s.prefect_port)],
                {"PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": s.host, "PREFECT_SERVER_API_PORT": str(s.prefect_port),
                 "PREFECT_UI_API_URL": prefect_api_url(settings),
                 "PREFECT_LOGGING_SETTINGS_PATH": str(folder / "prefect-logging.yml")},
                lambda: http_ok(f"{prefect_api_url(settings)}/health"), prefect_url,
                home / "server.pid", SERVER_MARKER, s.prefect_port, "serve.prefect_port"),
        Service("prefect-worker", [str(bindir / "prefect"), "worker", "start", "--pool", s.work_pool,
                                   "--type", "process", "--name", f"influmix-{s.work_pool}"],
                {"PREFECT_HOME": str(home)}, lambda: pool_ready(settings),
                f"{prefect_url}/work-pools/work-pool/{s.work_pool}", folder / "prefect-worker.pid",
                "prefect worker start"),
        Service("mlflow-server", [str(bindir / "mlflow"), "server", "--host", s.host, "--port", str(s.mlflow_port),
                                  "--backend-store-uri", f"sqlite:///{run_dir / 'mlflow.db'}",
                                  "--artifacts-destination", str(run_dir / "mlartifacts"), "--workers", "1",
                                  "--app-name", "influmix"],  # influmix/mlflow_app.py
                {}, lambda: http_ok(f"{mlflow_url(settings)}/health"), mlflow_url(settings),
                folder / "mlflow-server.pid", "mlflow server", s.mlflow_port, "serve.mlflow_port"),
    ]


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_healthy(service: Service, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.healthy():
            return
        if process.poll() is not None:
            raise ServiceError(f"{service.name} exited while starting; see {log}: {tail(log)}")
        time.sleep(0.5)
    raise ServiceError(f"{service.name} did not become healthy within {timeout:.0f} s; see {log}: {tail(log)}")


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def write_env_file(settings: Settings, folder: Path) -> Path:
    path = folder / "env"
    path.write_text("".join(f"export {k}={v}\n" for k, v in base_env(settings).items()))
    return path


def write_prefect_logging_config(path: Path) -> Path:
    """Prefect's default logging config plus `influmix.quiet.RetriedSQLiteLock` on its worker channel's logger.

    A config file is Prefect's way to add a logging filter (PREFECT_LOGGING_SETTINGS_PATH); it replaces the
    default instead of extending it, so the installed Prefect's default is copied, not a version of it kept here.
    """
    default = Path(importlib.util.find_spec("prefect").submodule_search_locations[0]) / "logging" / "logging.yml"
    config = yaml.safe_load(default.read_text())
    config.setdefault("filters", {})["retried_sqlite_lock"] = {"()": "influmix.quiet.RetriedSQLiteLock"}
    config["loggers"][WORKER_CHANNEL_LOGGER] = {"filters": ["retried_sqlite_lock"]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(service: Service, settings: Settings, folder: Path) -> subprocess.Popen:
    """Start one service in a session of its own, its output appended to its log, and wait until healthy."""
    if service.port and not port_free(settings.serve.host, service.port):
        raise ServiceError(f"port {service.port} on {settings.serve.host} is taken by another program: "
                           f"stop it or choose another port with `{service.port_setting}`")
    log = service.log_file(folder)
    env = {**os.environ, **base_env(settings), **service.env}
    if "PREFECT_LOGGING_SETTINGS_PATH" in service.env:
        write_prefect_logging_config(Path(service.env["PREFECT_LOGGING_SETTINGS_PATH"]))
    with log.open("ab") as out:
        process = subprocess.Popen(service.command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=Path.cwd())
    write_pid_file(service.pid_file, process.pid)
    wait_healthy(service, process, log, settings.serve.startup_timeout)
    return process


def serve(settings: Settings, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Start whatever of the stack is not already running; returns name -> URL."""
    folder = services_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    if settings.serve.host not in LOOPBACK:
        echo(f"warning: serving on {settings.serve.host}, reachable from other machines (serve.host)")
    urls = {}
    for service in plan(settings):
        running = service.running()
        if running and service.healthy():
            echo(f"{service.name} already running (pid {running.pid}) at {service.url}")
        else:
            if running:  # ours, but it does not answer: replace it rather than report its port as taken
                echo(f"{service.name} (pid {running.pid}) does not answer its health check: restarting it")
                stop_all(tree(running), grace=15.0)
            process = start(service, settings, folder)
            echo(f"{service.name} up (pid {process.pid}) at {service.url}  log: {service.log_file(folder)}")
        urls[service.name] = service.url
    write_env_file(settings, folder)
    return urls


def stop(settings: Settings, echo: Callable[[str], None] = print, grace: float = 15.0) -> list[str]:
    """Stop the processes we started (worker first), with everything they started."""
    stopped = []
    for service in reversed(plan(settings)):
        running = service.running()
        if running:
            stop_all(tree(running), grace)
            stopped.append(service.name)
            echo(f"stopped {service.name} (pid {running.pid})")
        elif service.pid_file.exists():
            echo(f"{service.name} was not running (stale pid file removed)")
        service.pid_file.unlink(missing_ok=True)
    return stopped


def status(settings: Settings) -> list[tuple[str, int | None, bool, str]]:
    """(name, pid, healthy, url) for each service."""
    rows = []
    for service in plan(settings):
        running = service.running()
        rows.append((service.name, running.pid if running else None, bool(running) and service.healthy(),
                     service.url))
    return rows


def served_env(settings: Settings) -> dict[str, str]:
    """The stack's client settings if it is up, else {}: lets `influmix run` report into the served UIs."""
    if not (services_dir(settings) / "env").exists():
        return {}
    up = {name for name, _, healthy, _ in status(settings) if healthy}
    env = {}
    if "prefect-server" in up:
        env["PREFECT_API_URL"] = prefect_api_url(settings)
    if "mlflow-server" in up:
        env["MLFLOW_TRACKING_URI"] = mlflow_url(settings)
    return env


def server_of_home(home: Path) -> psutil.Process | None:
    """A Prefect server running on this home's database, ours or one from `prefect server start --background`."""
    return from_pid_file(home / "server.pid", "server")


def next_scheduled_runs(settings: Settings) -> list[tuple[str, str]]:
    """(deployment, when its next scheduled run is due) from the served API: what an operator checks first
    (`curate-nightly` with no upcoming run means the scheduler is failing: see prefect-server.log)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    scheduled = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
    rows = []
    with temporary_settings({PREFECT_API_URL: prefect_api_url(settings)}), get_client(sync_client=True) as client:
        for deployment in sorted(client.read_deployments(), key=lambda d: d.name):
            name = deployment.name
            if deployment.paused or not any(s.active for s in deployment.schedules):
                rows.append((name, "paused" if deployment.paused else "no active schedule"))
                continue
            upcoming = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=scheduled, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
            rows.append((name, f"{upcoming[0].expected_start_time:%Y-%m-%d %H:%M %Z}" if upcoming
                         else "none scheduled: is the scheduler failing? (prefect-server.log)"))
    return rows
