"""Crash and outage recovery, end to end: real `influmix` processes, real SIGKILLs, real servers.

One run is killed with SIGKILL inside every stage in turn (failpoints, `influmix/faults.py`), resumed each
time with `influmix resume`, and must end with exactly the mixture of an uninterrupted run of the same
settings, the database consistent after every crash: nothing half-written visible, no document twice.
Its first attempt finds the Prefect API down (runs locally, warns); a tracking server down at start stops
a run before any work; one lost at the end leaves every stage's results in DuckDB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import db
from core.faults import POINTS
from core.tracking import mlflow_client
from tests.conftest import REPO, free_port, tiny_overrides

INFLUMIX = str(Path(sys.executable).parent / "influmix")
CRASHES = ["ingest.record:60", "embed.batch:1", "probe.pull:3", "probe.write:1", "distill.page:1", "mixture.write:1"]
ROWS_PER_DOCUMENT = """
SELECT 'documents', count(*), count(DISTINCT doc_id) FROM documents WHERE run_id = $1
UNION ALL SELECT 'embeddings', count(*), count(DISTINCT doc_id) FROM embeddings WHERE run_id = $1
UNION ALL SELECT 'cluster_assignments', count(*), count(DISTINCT doc_id) FROM cluster_assignments WHERE run_id = $1
UNION ALL SELECT 'influence_scores', count(*), count(DISTINCT (stage, doc_id)) FROM influence_scores WHERE run_id = $1
"""


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([INFLUMIX, *args], check=False, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture(scope="module")
def run_env(tmp_path_factory, prefect_harness) -> dict[str, str]:
    """Subprocess environment: the session's Prefect server, a private Prefect home for cached results."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path_factory.mktemp("prefect-home")
    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(home),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def assert_consistent(database: Path, run_id: str) -> dict[str, int]:
    """No row twice, every visible mixture whole; returns row counts per table for the run."""
    counts = {}
    with db.connect(database, read_only=True) as con:
        for table, n, distinct in con.execute(ROWS_PER_DOCUMENT, [run_id]).fetchall():
            assert n == distinct, f"{table}: a document appears twice"
            counts[table] = n
        for stage, n_docs, members, distinct in con.execute(
                "SELECT m.stage, m.n_documents, count(mm.doc_id), count(DISTINCT mm.doc_id) FROM mixtures m "
                "LEFT JOIN mixture_members mm USING (run_id, stage) WHERE m.run_id = ? "
                "GROUP BY m.stage, m.n_documents", [run_id]).fetchall():
            assert n_docs == members == distinct, f"stage {stage}: partial or duplicated mixture visible"
        counts["mixtures"] = con.execute("SELECT count(*) FROM mixtures WHERE run_id = ?", [run_id]).fetchone()[0]
    return counts


def mixture(database: Path, run_id: str) -> list[tuple]:
    with db.connect(database, read_only=True) as con:
        return con.execute("SELECT stage, doc_id, cluster_id, round FROM mixture_members WHERE run_id = ? "
                           "ORDER BY stage, doc_id", [run_id]).fetchall()


def temporary_servers_of(prefect_home: Path) -> list[int]:
    """Prefect temporary servers still running with this Prefect home."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"create_app" in (entry / "cmdline").read_bytes() and \
                    f"PREFECT_HOME={prefect_home}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_every_failpoint_is_exercised():
    assert sorted(p.split(":")[0] for p in CRASHES) == sorted(POINTS)


def fault_overrides(run_dir: Path, run_id: str) -> list[str]:
    """The tiny test run, smaller still: seven processes run it piece by piece."""
    return [*tiny_overrides(run_dir, corpus_records=120), f"run_id={run_id}", "cluster.k=3",
            "proxy.steps_per_stage=6", "probe.budget=32", "probe.reference_sequences=4", "distill.epochs=20",
            "select.token_budget=3000"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prefect_harness) -> tuple[Path, str]:
    from flows.curate import curate

    run_dir = tmp_path_factory.mktemp("uninterrupted") / "runs"
    curate(None, fault_overrides(run_dir, "calm"))
    return run_dir / "influmix.duckdb", "calm"


@pytest.mark.faults
@pytest.mark.services
def test_kill_at_every_stage_then_resume_gives_the_uninterrupted_mixture(tmp_path, run_env, uninterrupted):
    run_id = "crashy"
    database = tmp_path / "runs" / "influmix.duckdb"
    resume = ["resume", run_id, "--db", str(database)]

    # The first attempt also meets a dead Prefect API: it runs locally with a warning, then is killed; the
    # watchdog must stop the temporary Prefect server that the killed process leaves behind.
    dead_api = {**run_env, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
                "PREFECT_HOME": str(tmp_path / "local-prefect"), "INFLUMIX_FAILPOINT": CRASHES[0]}
    first = cli(["run", *set_args(fault_overrides(tmp_path / "runs", run_id))], dead_api)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert "unreachable" in first.stderr and "running the flow locally" in first.stderr
    assert assert_consistent(database, run_id)["documents"] == 0  # the ingest transaction never committed
    deadline = time.monotonic() + 20
    while temporary_servers_of(tmp_path / "local-prefect") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not temporary_servers_of(tmp_path / "local-prefect"), "a killed run left its Prefect server running"

    for point in CRASHES[1:]:
        crashed = cli(resume, {**run_env, "INFLUMIX_FAILPOINT": point})
        assert crashed.returncode == -signal.SIGKILL, (point, crashed.stderr[-3000:])
        assert f"failpoint {point.split(':')[0]}" in crashed.stderr
        counts = assert_consistent(database, run_id)
        assert counts["documents"] > 0
        if point.startswith("mixture.write"):
            assert counts["mixtures"] == 0  # killed inside the mixture's transaction: nothing visible

    done = cli(resume, run_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert mixture(database, run_id) == mixture(*uninterrupted)
    with db.connect(database, read_only=True) as con:
        status, mlflow_run_id = con.execute("SELECT status, mlflow_run_id FROM runs WHERE run_id = ?",
                                            [run_id]).fetchone()
    assert status == "completed" and mlflow_run_id
    # one MLflow run across the seven attempts, each stage's metrics once, closed with the run
    client = mlflow_client(f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}")
    (tracked,) = client.search_runs([client.get_experiment_by_name("influmix").experiment_id],
                                    filter_string=f"tags.`influmix.run_id` = '{run_id}'")
    assert tracked.info.run_id == mlflow_run_id and tracked.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(mlflow_run_id, "reference_loss")) == [0, 1]
    assert len(client.get_metric_history(mlflow_run_id, "train_loss")) == 2 * 6
    again = cli(resume, run_env)
    assert again.returncode == 2 and "already completed" in again.stderr


def test_tracking_server_down_at_start_fails_before_any_work(tmp_path, run_env):
    url = f"http://127.0.0.1:{free_port()}"
    down = cli(["run", *set_args(fault_overrides(tmp_path / "runs", "untracked")), f"--set=track.tracking_uri={url}"],
               run_env)
    assert down.returncode == 2, down.stderr[-3000:]
    assert "track.tracking_uri" in down.stderr and "unreachable" in down.stderr and "Traceback" not in down.stderr
    assert not (tmp_path / "runs" / "influmix.duckdb").exists()  # nothing started


def test_tracking_server_lost_mid_run_keeps_every_result(e2e_run, monkeypatch):
    from core.artifacts import Run
    from core.preflight import TrackingUnavailable
    from tasks.track import track_run

    settings, result = e2e_run
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    gone = settings.model_copy(update={"track": settings.track.model_copy(
        update={"tracking_uri": f"http://127.0.0.1:{free_port()}"})})
    before = mixture(settings.database, result.run_id)
    tracking_env = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.raises(TrackingUnavailable, match=f"influmix resume {result.run_id}"):
        track_run(gone, Run(result.run_id, str(settings.database), str(settings.run_dir)), result.corpus, result.stages)
    assert mixture(settings.database, result.run_id) == before
    # the dead server does not become the process's default store for the runs that follow
    assert os.environ.get("MLFLOW_TRACKING_URI") == tracking_env
