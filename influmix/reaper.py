"""Stop what a run started when the run itself is killed (`kill -9`, the OOM killer).

Without a Prefect server, `influmix run` starts Prefect's temporary server as a child process (and a local
Ray runner starts more); they are stopped in a `finally` that a SIGKILL never reaches, so every crashed run
would leave a server spinning. Neither Prefect nor the OS covers this: Prefect starts that server in the
run's own session without a parent-death signal, and an orphan is simply re-parented. `watch(pid)` starts a
tiny watchdog process that remembers the run's descendants every second and, once the run is gone, stops
those still alive (psutil: a remembered process whose pid was reused is never hit).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from influmix.processes import CLOCK_SLACK_S, alive, stop_all, tree

POLL_S = 1.0
GRACE_S = 5.0


def _watch_loop(root: psutil.Process) -> None:
    known: dict[int, psutil.Process] = {}
    while alive(root):
        for process in tree(root)[1:]:
            if process.pid == os.getpid():  # the watchdog is a child of the run too
                continue
            if process.pid not in known or not alive(known[process.pid]):
                known[process.pid] = process
        known = {pid: p for pid, p in known.items() if alive(p)}
        time.sleep(POLL_S)
    stop_all(known.values(), GRACE_S)


def watch(pid: int | None = None) -> subprocess.Popen | None:
    """Start the watchdog for `pid` (default: this process); None if that process is already gone."""
    try:
        root = psutil.Process(pid or os.getpid())
        started = root.create_time()
    except psutil.Error:
        return None
    return subprocess.Popen([sys.executable, "-m", "influmix.reaper", str(root.pid), repr(started)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _root(pid: int, started: float) -> psutil.Process | None:
    """The watched process, unless its pid already belongs to another one."""
    try:
        process = psutil.Process(pid)
        return process if abs(process.create_time() - started) < CLOCK_SLACK_S else None
    except psutil.Error:
        return None


if __name__ == "__main__":
    if (watched := _root(int(sys.argv[1]), float(sys.argv[2]))) is not None:
        _watch_loop(watched)
