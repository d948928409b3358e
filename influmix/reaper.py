"""Stop what a run started when the run itself is killed (`kill -9`, the OOM killer).

Without a Prefect server, `influmix run` starts Prefect's temporary server as a child process (and a local
Ray runner starts more); they are stopped in a `finally` that a SIGKILL never reaches, so every crashed run
would leave a server spinning. `watch(pid)` starts a tiny watchdog process that remembers the run's
descendants every second and, once the run is gone, terminates those still alive (matching their start
times, so a recycled pid is never hit). Linux only (it reads /proc); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")
POLL_S = 1.0
GRACE_S = 5.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of `pid`, or None if it is gone or a zombie.

    A killed process stays a zombie until its parent waits for it, and a parent reading the run's output
    waits only after the pipes close -- which the run's leftover children keep open: so a zombie is dead.
    """
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., starttime
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every process below `root`."""
    parent_of: dict[int, tuple[int, int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None:
            parent_of[int(entry.name)] = info
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in parent_of.items():
            if ppid == parent and pid not in found and pid != os.getpid():
                found[pid] = started
                frontier.append(pid)
    return found


def _still(pid: int, started: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] == started


def reap(known: dict[int, int]) -> None:
    """SIGTERM the remembered processes still alive, then SIGKILL those that ignore it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = {pid: s for pid, s in known.items() if _still(pid, s)}
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + GRACE_S
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = {pid: s for pid, s in alive.items() if _still(pid, s)}
        if not alive:
            return


def _watch_loop(root: int, root_started: int) -> None:
    known: dict[int, int] = {}
    while _still(root, root_started):
        known.update(descendants(root))
        known = {pid: s for pid, s in known.items() if _still(pid, s)}
        time.sleep(POLL_S)
    reap(known)


def watch(pid: int | None = None) -> subprocess.Popen | None:
    """Start the watchdog for `pid` (default: this process); None where /proc is missing."""
    pid = pid or os.getpid()
    info = _stat(pid)
    if info is None:
        return None
    return subprocess.Popen([sys.executable, "-m", "influmix.reaper", str(pid), str(info[1])],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


if __name__ == "__main__":
    _watch_loop(int(sys.argv[1]), int(sys.argv[2]))
