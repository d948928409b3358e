"""Failpoints: kill this process with SIGKILL at a named point, to prove that a crash anywhere is recoverable.

A curation run is long and unattended, so its guarantee is "kill -9 at any moment, then `influmix resume
RUN_ID`, and the result is the uninterrupted one". Failpoints (as in FoundationDB or TiKV) make that testable
at the worst moments -- inside a DuckDB transaction, between two embedding batches -- instead of whenever a
timer happens to fire. Arm one with the environment:

    INFLUMIX_FAILPOINT=embed.batch:2 influmix run ...    # SIGKILL on the 2nd embedding batch

The process dies exactly as under an external `kill -9`: no `finally`, no atexit, no flushing. Unarmed,
a failpoint costs one global lookup. The points, in pipeline order, are listed in `POINTS`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV = "INFLUMIX_FAILPOINT"

POINTS: dict[str, str] = {
    "ingest.record": "each corpus record read, inside the ingest transaction (mid-file)",
    "embed.batch": "each embedding page encoded by a shard worker (mid-batch loop)",
    "probe.pull": "each pull of the oracle bandit, before the oracle measures its documents",
    "probe.write": "after a stage's probes are written, before their oracle pulls and the commit",
    "distill.page": "each page the distilled influence model scores",
    "mixture.write": "after a mixture's header is written, before its members and the commit",
}


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: unknown failpoint {name!r} (known: {', '.join(POINTS)})")
    return name, int(count or 1)


_armed = _parse(os.environ.get(ENV))
_hits = 0
_lock = threading.Lock()


def failpoint(name: str) -> None:
    """SIGKILL this process on the configured hit of `name`; a no-op unless armed through `INFLUMIX_FAILPOINT`."""
    global _hits
    if _armed is None or _armed[0] != name:
        return
    with _lock:
        _hits += 1
        if _hits < _armed[1]:
            return
    sys.stderr.write(f"influmix: failpoint {name} hit {_hits}: SIGKILL\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
