"""One `influmix run` of the scale benchmark, watched from outside: per-stage seconds, peak memory and counts.

The run is the product itself (`python -m influmix.cli run --config ...` in a child process, the local
Prefect server and MLflow store included), so what is timed is what a curator waits on. Nothing is
instrumented inside it; three things are read from outside:

* **time per stage**: the task runs' start and end times in the run's own Prefect database
  (`<run_dir>/prefect/prefect.db`, read-only). Shard tasks run inside their stage's task and are not
  counted twice.
* **memory**: a sampler thread reads `VmRSS` of the run's process and of every descendant (the temporary
  Prefect server, ...) from `/proc` every `SAMPLE_SECONDS`; a stage's peak is the largest sample inside its
  window. The run process's exact peak comes from `os.wait4` (`ru_maxrss`).
* **counts**: the final value of each metric of the run's MLflow run (`<run_dir>/mlflow.db`, read-only).

Why not psutil or a memory profiler: neither is installed with influmix, and the samples needed (RSS of a
process tree) are one file read per process.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SAMPLE_SECONDS = 0.5
# the stages whose work grows with the pool (docs/s is reported for these); the rest have a fixed budget
POOL_STAGES = ("ingest", "filter", "embed", "cluster", "tokenizer", "distill", "select", "write-mixture")
_TASK_NAME = re.compile(r"^(?P<stage>[a-z-]+?)(?:-[0-9a-f]{3})?(?:\[stage=(?P<n>\d+)\])?$")


@dataclass
class MemorySampler:
    """Samples (time, run-process RSS, process-tree RSS) in MiB until stopped."""

    root: int
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> MemorySampler:
        threading.Thread(target=self._loop, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            tree = [self.root, *descendants(self.root)]
            rss = [rss_mib(pid) for pid in tree]
            if rss[0] > 0:
                self.samples.append((time.time(), rss[0], sum(rss)))
            self._stop.wait(SAMPLE_SECONDS)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> tuple[float, float]:
        """(run-process, tree) peak RSS in MiB among the samples in [start, end], widened by one sampling
        interval each side so that a stage shorter than the interval still gets its neighbours' samples."""
        start, end = start - SAMPLE_SECONDS, end + SAMPLE_SECONDS
        inside = [(own, tree) for t, own, tree in self.samples if start <= t <= end]
        return (max(s[0] for s in inside), max(s[1] for s in inside)) if inside else (0.0, 0.0)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children of each of its threads, recursively); vanished ones are skipped."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                todo.append(child)
    return found


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_environment(run_dir: Path) -> dict[str, str]:
    """This process's environment, with the run's Prefect home its own (`<run_dir>/prefect`) and no served
    stack: a PREFECT_HOME, PREFECT_API_URL or MLFLOW_TRACKING_URI left by the caller would send the run's task
    runs or metrics elsewhere, where `stage_windows` and `final_metrics` do not read."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    return {**env, "PREFECT_HOME": str(run_dir / "prefect")}


def run_influmix(config: Path | None, overrides: list[str], log: Path) -> dict[str, Any]:
    """`influmix run [--config config] --set ...` in a child process (its log and run directory beside
    each other): its wall time, CPU time and memory."""
    command = [sys.executable, "-m", "influmix.cli", "run", *(["--config", str(config)] if config else [])]
    for override in overrides:
        command += ["--set", override]
    load = os.getloadavg()[0]  # other work on the machine slows a run down: recorded, not corrected for
    started_at, started = time.time(), time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=run_environment(log.parent))
        sampler = MemorySampler(proc.pid).start()
        _, status, usage = os.wait4(proc.pid, 0)
    sampler.stop()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"influmix run exited with {code}; log {log}:\n{log.read_text()[-3000:]}")
    # The kernel's ru_maxrss (the largest single process of the tree, exact) bounds the tree's peak from
    # below: samples 0.5 s apart can miss a short spike, so the tree peak is never reported under it.
    own_peak = usage.ru_maxrss / 1024
    tree_peak = max(sampler.peak()[1], own_peak)
    return {"end_to_end_seconds": round(time.perf_counter() - started, 1), "started_at": started_at,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mib": round(own_peak, 1),
            "peak_tree_rss_mib": round(tree_peak, 1), "loadavg_1m_before": round(load, 2), "sampler": sampler}


def _utc(stamp: str) -> float:
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()


def stage_windows(prefect_db: Path, since: float) -> list[tuple[str, int | None, float, float]]:
    """(stage, model-aware stage number or None, start, end) of every top-level task run that started after
    `since` (an earlier run on the same run directory is not this one), in start order."""
    with sqlite3.connect(f"file:{prefect_db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT name, start_time, end_time FROM task_run WHERE state_type = 'COMPLETED' "
                           "ORDER BY start_time").fetchall()
    windows = []
    for name, start, end in rows:
        match = _TASK_NAME.match(name)
        if match is None or match["stage"].startswith("shard-") or end is None or _utc(start) < since:
            continue
        windows.append((match["stage"], int(match["n"]) if match["n"] else None, _utc(start), _utc(end)))
    return windows


def final_metrics(mlflow_db: Path, run_id: str) -> dict[str, float]:
    """The last value of every metric of the MLflow run of influmix run `run_id`."""
    with sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT m.key, m.value FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
                           "WHERE t.key = 'influmix.run_id' AND t.value = ? ORDER BY m.key, m.step, m.timestamp",
                           (run_id,)).fetchall()
    return {key: value for key, value in rows}


def stage_figures(run: dict[str, Any], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per stage name (model-aware stages summed over their stage numbers): seconds and peak RSS."""
    sampler: MemorySampler = run["sampler"]
    figures: dict[str, dict[str, Any]] = {}
    for stage, number, start, end in stage_windows(run_dir / "prefect" / "prefect.db", run["started_at"]):
        own, tree = sampler.peak(start, end)
        row = figures.setdefault(stage, {"wall_s": 0.0, "peak_rss_mib": 0.0, "peak_tree_rss_mib": 0.0, "runs": 0})
        row["wall_s"] += end - start
        row["peak_rss_mib"] = max(row["peak_rss_mib"], own)
        row["peak_tree_rss_mib"] = max(row["peak_tree_rss_mib"], tree)
        row["runs"] += 1
        if number is not None:
            row.setdefault("per_stage_s", []).append(round(end - start, 2))
    for row in figures.values():
        row.update(wall_s=round(row["wall_s"], 2), peak_rss_mib=round(row["peak_rss_mib"], 1),
                   peak_tree_rss_mib=round(row["peak_tree_rss_mib"], 1))
    return figures


def with_throughput(figures: dict[str, dict[str, Any]], metrics: dict[str, float]) -> dict[str, dict[str, Any]]:
    """docs/s for the stages whose work grows with the pool: records for ingest, ingested documents for the
    filters, the filtered pool after that."""
    pool = metrics.get("filter.kept", metrics.get("documents", 0.0))
    inputs = {"ingest": metrics.get("records_read", 0.0), "filter": metrics.get("documents", 0.0)}
    for stage, row in figures.items():
        docs = inputs.get(stage, pool) if stage in POOL_STAGES else None
        row["input_documents"] = int(docs) if docs is not None else None
        row["docs_per_s"] = round(docs / max(row["wall_s"], 1e-9), 1) if docs is not None else None
    return figures
