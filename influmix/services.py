"""The served stack: a Prefect server (UI + API), a Prefect worker on a process pool, an MLflow server.

`influmix serve` starts the three as background processes bound to `serve.host` (127.0.0.1 unless
configured), each with a log and a pid file under `<run_dir>/services/`, and waits until each is healthy:
the API answers, the work pool says READY (a worker is polling it), MLflow answers `/health`. `influmix
stop` stops exactly the processes those pid files name, after checking that the pid still runs the
command we started (a pid can be reused). An `env` file there tells clients (`prefect deploy`, the CLI,
a shell) where the services are.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServiceError(RuntimeError):
    """A service could not start or be reached; the message says which, why, and which log to read."""


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    healthy: Callable[[], bool]
    url: str
    port: int | None = None
    marker: str = field(default="")  # a word of the command line that identifies our process

    def pid_file(self, folder: Path) -> Path:
        return folder / f"{self.name}.pid"

    def log_file(self, folder: Path) -> Path:
        return folder / f"{self.name}.log"


def services_dir(settings: Settings) -> Path:
    return (settings.serve.dir or settings.run_dir / "services").resolve()


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
    s, bindir = settings.serve, Path(sys.executable).parent
    run_dir = settings.run_dir.resolve()
    prefect_home = run_dir / "prefect"
    prefect_env = {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_API_HOST": s.host,
        "PREFECT_SERVER_API_PORT": str(s.prefect_port),
        "PREFECT_UI_API_URL": prefect_api_url(settings),
    }
    return [
        Service("prefect-server", [str(bindir / "prefect"), "server", "start", "--host", s.host,
                                   "--port", str(s.prefect_port)],
                prefect_env, lambda: http_ok(f"{prefect_api_url(settings)}/health"),
                prefect_api_url(settings)[:-4], s.prefect_port, marker="server"),
        Service("prefect-worker", [str(bindir / "prefect"), "worker", "start", "--pool", s.work_pool,
                                   "--type", "process", "--name", f"influmix-{s.work_pool}"],
                {"PREFECT_HOME": str(prefect_home)}, lambda: pool_ready(settings),
                f"{prefect_api_url(settings)[:-4]}/work-pools/work-pool/{s.work_pool}", marker="worker"),
        Service("mlflow-server", [str(bindir / "mlflow"), "server", "--host", s.host, "--port", str(s.mlflow_port),
                                  "--backend-store-uri", f"sqlite:///{run_dir / 'mlflow.db'}",
                                  "--artifacts-destination", str(run_dir / "mlartifacts"), "--workers", "1"],
                {}, lambda: http_ok(f"{mlflow_url(settings)}/health"), mlflow_url(settings), s.mlflow_port,
                marker="mlflow"),
    ]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_ours(pid: int | None, marker: str) -> bool:
    """The pid is alive and still runs our command (pids are reused after a process exits)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid file
    return marker in cmdline


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


def serve(settings: Settings, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Start whatever of the stack is not already running; returns name -> URL."""
    folder = services_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    if settings.serve.host not in LOOPBACK:
        echo(f"warning: serving on {settings.serve.host}, reachable from other machines (serve.host)")
    env = {**os.environ, **base_env(settings)}
    urls = {}
    for service in plan(settings):
        pid = read_pid(service.pid_file(folder))
        if is_ours(pid, service.marker) and service.healthy():
            echo(f"{service.name} already running (pid {pid}) at {service.url}")
            urls[service.name] = service.url
            continue
        if service.port and not port_free(settings.serve.host, service.port):
            setting = "serve.prefect_port" if service.name.startswith("prefect") else "serve.mlflow_port"
            raise ServiceError(f"port {service.port} on {settings.serve.host} is taken by another program: "
                               f"stop it or choose another port with `{setting}`")
        log = service.log_file(folder)
        with log.open("ab") as out:
            process = subprocess.Popen(service.command, env={**env, **service.env}, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=Path.cwd())
        service.pid_file(folder).write_text(f"{process.pid}\n")
        wait_healthy(service, process, log, settings.serve.startup_timeout)
        echo(f"{service.name} up (pid {process.pid}) at {service.url}  log: {log}")
        urls[service.name] = service.url
    write_env_file(settings, folder)
    return urls


def stop(settings: Settings, echo: Callable[[str], None] = print, grace: float = 15.0) -> list[str]:
    """Stop the processes our pid files name (worker first), their children included."""
    folder = services_dir(settings)
    stopped = []
    for service in reversed(plan(settings)):
        pid_file = service.pid_file(folder)
        pid = read_pid(pid_file)
        if is_ours(pid, service.marker):
            terminate_group(pid, grace)
            stopped.append(service.name)
            echo(f"stopped {service.name} (pid {pid})")
        elif pid:
            echo(f"{service.name} was not running (stale pid file removed)")
        pid_file.unlink(missing_ok=True)
    return stopped


def terminate_group(pid: int, grace: float) -> None:
    """SIGTERM the process group we started, SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            reap(pid)
            time.sleep(0.2)


def reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie (tests start services in-process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def status(settings: Settings) -> list[tuple[str, int | None, bool, str]]:
    """(name, pid, healthy, url) for each service."""
    folder = services_dir(settings)
    rows = []
    for service in plan(settings):
        pid = read_pid(service.pid_file(folder))
        rows.append((service.name, pid, is_ours(pid, service.marker) and service.healthy(), service.url))
    return rows


def served_env(settings: Settings) -> dict[str, str]:
    """The stack's client settings if it is up, else {}: lets `influmix run` report into the served UIs."""
    folder = services_dir(settings)
    if not (folder / "env").exists():
        return {}
    up = {name for name, _, healthy, _ in status(settings) if healthy}
    env = {}
    if "prefect-server" in up:
        env["PREFECT_API_URL"] = prefect_api_url(settings)
    if "mlflow-server" in up:
        env["MLFLOW_TRACKING_URI"] = mlflow_url(settings)
    return env
