"""Which processes are ours, and stopping them with everything they started: psutil, not /proc by hand.

Two facts carry the rest. A `psutil.Process` remembers its start time, so `is_running()` is false once the pid
has been reused by another program. And a pid file names the process it was written for exactly when that
process started before the file was written: a pid reused later started after it. Stopping walks the whole
tree (`children(recursive=True)`), not just a process group: Prefect's worker starts every flow run in a
session of its own, which a `killpg` on the worker's group never reaches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

# psutil derives start times from the boot time, which Linux reports in whole seconds.
CLOCK_SLACK_S = 2.0


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie: a killed process stays a zombie until its parent collects it."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def from_pid_file(path: Path, marker: str) -> psutil.Process | None:
    """The live process `path` was written for, if its command line still contains `marker`; else None."""
    try:
        pid, written = int(path.read_text().strip()), path.stat().st_mtime
        process = psutil.Process(pid)
        if process.create_time() > written + CLOCK_SLACK_S or marker not in " ".join(process.cmdline()):
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    return process if alive(process) else None


def write_pid_file(path: Path, pid: int) -> None:
    """The bare pid, as Prefect writes its own `server.pid`, readable only by us."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{pid}\n")


def tree(process: psutil.Process) -> list[psutil.Process]:
    """The process and all its living descendants."""
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def stop_all(processes: Iterable[psutil.Process], grace: float) -> None:
    """SIGTERM each, SIGKILL those still alive after `grace` seconds."""
    left = [p for p in processes if alive(p)]
    for signal_them, wait in ((psutil.Process.terminate, grace), (psutil.Process.kill, 5.0)):
        for process in left:
            try:
                signal_them(process)
            except psutil.Error:
                pass
        left = _outlive(left, wait)
        if not left:
            return


def _outlive(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `processes` still alive after up to `timeout` seconds.

    Not `psutil.wait_procs`: it waits the whole timeout for a zombie whose parent never collects it (an orphan
    under a container's pid 1), while a zombie has already stopped.
    """
    deadline = time.monotonic() + timeout
    while True:
        processes = [p for p in processes if not _gone(p)]
        if not processes or time.monotonic() > deadline:
            return processes
        time.sleep(0.1)


def _gone(process: psutil.Process) -> bool:
    try:
        process.wait(timeout=0)  # collects the exit status of our own children (no zombie left behind)
        return True
    except psutil.TimeoutExpired:
        return not alive(process)
    except psutil.Error:
        return True
