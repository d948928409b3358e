"""The MLflow server `influmix serve` runs (influmix/mlflow_app.py): MLflow's app with the auth-plugin import
race removed. A real `mlflow server`, started from the served stack's own plan, takes the UI's opening burst
of requests without a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import free_port, service_log_problems

pytestmark = pytest.mark.services

# What the MLflow UI's runs page sends at once on load: searches (each retried the plugin's import) beside
# the assistant's and the gateway's reads of the half-imported module.
BURST = [("POST", "/ajax-api/2.0/mlflow/runs/search", {"experiment_ids": ["0"], "max_results": 10}),
         ("GET", "/ajax-api/3.0/mlflow/assistant/config", None),
         ("GET", "/ajax-api/3.0/mlflow/assistant/providers", None)]


def test_a_missing_auth_plugin_is_settled_as_absent_before_any_request():
    code = ("import sys, influmix.mlflow_app as served\n"
            "from mlflow.server.assistant.identity import auth_plugin_active\n"
            "try:\n    from mlflow.server import auth\n    imported = True\n"
            "except ImportError:\n    imported = False\n"
            "print(sys.modules[served.AUTH_PLUGIN] is None, imported, auth_plugin_active())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plugin_installed = proc.stdout.split()[1] == "True"
    # without Flask-WTF (as here): absent, every import fails at once, and the UI reads "no auth"
    assert proc.stdout.split() == (["False", "True", "False"] if plugin_installed else ["True", "False", "False"])


def request(base: str, method: str, path: str, body: dict | None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_served_mlflow_server_takes_a_burst_of_ui_requests_without_a_traceback(tmp_path):
    from core.config import load_settings
    from influmix.services import plan, wait_healthy

    settings = load_settings(None, [f'run_dir="{tmp_path / "runs"}"', f"serve.mlflow_port={free_port()}"])
    mlflow_server = next(s for s in plan(settings) if s.name == "mlflow-server")
    assert mlflow_server.command[-2:] == ["--app-name", "influmix"]
    settings.run_dir.mkdir(parents=True)
    log = tmp_path / "mlflow-server.log"
    with log.open("w") as out:
        process = subprocess.Popen(mlflow_server.command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(mlflow_server, process, log, timeout=300)
        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(lambda call: request(mlflow_server.url, *call), BURST * 80))
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert set(statuses) == {200}, sorted(set(statuses))
    assert not service_log_problems(tmp_path), service_log_problems(tmp_path)[0]
