"""The MLflow server `influmix serve` runs (influmix/mlflow_app.py): MLflow's app with the auth-plugin import
race removed. The served stack's burst of UI requests is in tests/test_services.py; here, in a fresh
interpreter, what the app settles before it takes a request.
"""

from __future__ import annotations

import subprocess
import sys


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
