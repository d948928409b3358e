"""What psutil does not decide for us: which process a pid file names, and that stopping reaches a whole tree.

Real processes (short Python sleepers), real signals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from influmix import reaper
from influmix.processes import alive, from_pid_file, stop_all, tree, write_pid_file
from tests.conftest import REPO

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
# A parent that starts a child in a session of its own, as Prefect's worker starts each flow run.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(120)
"""
# A run that starts the watchdog on itself, then a child it would stop in a `finally` a SIGKILL never reaches.
WATCHED_RUN = """
import subprocess, sys, time
from influmix import reaper
reaper.watch()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def gone_within(process: psutil.Process, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(process) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(process)


@pytest.fixture
def sleeper():
    process = subprocess.Popen(SLEEPER)
    yield process
    process.kill()
    process.wait()


def test_a_pid_file_names_only_the_process_it_was_written_for(tmp_path, sleeper):
    pid_file = tmp_path / "service.pid"
    write_pid_file(pid_file, sleeper.pid)
    assert pid_file.read_text() == f"{sleeper.pid}\n"  # Prefect's own format: the bare pid
    assert oct(pid_file.stat().st_mode & 0o777) == "0o600"
    assert from_pid_file(pid_file, "time.sleep").pid == sleeper.pid
    assert from_pid_file(pid_file, "prefect server start") is None  # the pid runs another command
    long_ago = time.time() - 3600
    os.utime(pid_file, (long_ago, long_ago))
    assert from_pid_file(pid_file, "time.sleep") is None  # started after the file was written: a reused pid
    pid_file.write_text("not a pid\n")
    assert from_pid_file(pid_file, "time.sleep") is None
    assert from_pid_file(tmp_path / "missing.pid", "time.sleep") is None


def test_stopping_reaches_children_in_their_own_session():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = psutil.Process(int(parent.stdout.readline()))
    assert os.getpgid(child.pid) != os.getpgid(parent.pid)  # out of reach of a killpg on the parent's group
    stop_all(tree(psutil.Process(parent.pid)), grace=10.0)
    assert not alive(child) and parent.poll() is not None  # the parent, our child, is collected: no zombie


def test_a_process_ignoring_sigterm_is_killed():
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline().strip() == "ready"
    process = psutil.Process(stubborn.pid)
    stop_all([process], grace=0.5)
    assert not alive(process)  # SIGTERM was ignored: only the SIGKILL after the grace period stops it


def test_the_watchdog_stops_what_a_killed_run_left_behind():
    run = subprocess.Popen([sys.executable, "-c", WATCHED_RUN], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    left_behind = psutil.Process(int(run.stdout.readline()))
    time.sleep(2 * reaper.POLL_S)  # the watchdog has seen the child
    run.kill()
    run.wait()
    assert gone_within(left_behind, 10 * reaper.POLL_S + reaper.GRACE_S)
