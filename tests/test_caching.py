"""Stage reuse: a re-run of the same run id skips finished stages, and only what a change touches is redone."""

from __future__ import annotations

import os
import re
import shutil
from types import SimpleNamespace

import pytest

from core import db
from runtime.policies import STAGE_CACHE
from tests.conftest import BANDIT_PATH, SAMPLE, tiny_overrides

CACHED_STAGES = {"ingest", "reference", "embed", "cluster", "tokenizer", "pretrain", "probe", "distill", "rerank",
                 "select", "write-mixture", "track"}


def stage_of(task_run_name: str) -> str:
    """`ingest-3fa` -> `ingest`, `probe[stage=1]` -> `probe`."""
    return re.sub(r"(\[stage=\d+\]|-[0-9a-f]{3})$", "", task_run_name)


def stage_key(name: str, settings, run_id: str = "run-x") -> str | None:
    return STAGE_CACHE.compute_key(SimpleNamespace(task=SimpleNamespace(name=name)),
                                   {"settings": settings, "run_id": run_id}, {})


def mixture_rows(settings, run_id: str) -> list[tuple]:
    with db.connect(settings.database, read_only=True) as con:
        return con.execute("SELECT stage, doc_id FROM mixture_members WHERE run_id = ? ORDER BY ALL", [run_id]).fetchall()


ROW_COUNTS = """
SELECT (SELECT count(*) FROM documents WHERE run_id = $r), (SELECT count(*) FROM embeddings WHERE run_id = $r),
       (SELECT count(*) FROM cluster_assignments WHERE run_id = $r), (SELECT count(*) FROM probes WHERE run_id = $r),
       (SELECT count(*) FROM influence_scores WHERE run_id = $r), (SELECT count(*) FROM mixture_members WHERE run_id = $r)
"""


def table_counts(settings, run_id: str) -> tuple[int, ...]:
    """Rows per stage table for one run: a re-run that wrote anything twice would change them."""
    with db.connect(settings.database, read_only=True) as con:
        return con.execute(ROW_COUNTS, {"r": run_id}).fetchone()


@pytest.mark.e2e
def test_rerun_of_a_finished_run_reuses_every_stage(e2e_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.curate import curate

    settings, first = e2e_run
    before, counts = mixture_rows(settings, first.run_id), table_counts(settings, first.run_id)
    state = curate(None, [*tiny_overrides(settings.run_dir), *BANDIT_PATH, f'run_id="{first.run_id}"'],
                   return_state=True)
    assert state.is_completed()
    again = state.result()
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[again.prefect_flow_run_id])),
                                          sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
    states = {t.name: t.state_name for t in task_runs}
    stage_runs = {name: s for name, s in states.items() if stage_of(name) in CACHED_STAGES}
    assert {stage_of(name) for name in stage_runs} == CACHED_STAGES
    assert set(stage_runs.values()) == {"Cached"}, stage_runs
    assert not [name for name in states if "shard" in name]  # a cached stage starts no shard work either
    assert mixture_rows(settings, first.run_id) == before
    assert table_counts(settings, first.run_id) == counts  # nothing written twice
    assert again.tracked.mlflow_run_id == first.tracked.mlflow_run_id  # no second MLflow run for the same result


def test_stage_keys_follow_what_each_stage_reads(tmp_path):
    from core.config import load_settings

    corpus = tmp_path / "corpus.jsonl.gz"
    shutil.copy(SAMPLE / "corpus.jsonl.gz", corpus)
    overrides = [f'run_dir="{tmp_path}/runs"', f'ingest.sources=[{{path="{corpus}"}}]',
                 f'reference.sources=[{{path="{SAMPLE / "reference.jsonl.gz"}"}}]']
    base = load_settings(None, overrides)
    with db.connect(base.database):
        pass  # the database (and its instance id) exists once a run has started
    bandit = load_settings(None, [*overrides, "select.arm_weight=0.3"])
    embedder = load_settings(None, [*overrides, "embed.max_seq_length=64"])

    assert stage_key("embed", base) == stage_key("embed", bandit)  # a bandit change keeps the embeddings
    assert stage_key("select", base) != stage_key("select", bandit)
    assert stage_key("embed", base) != stage_key("embed", embedder)
    assert stage_key("ingest", base) == stage_key("ingest", embedder)
    assert stage_key("ingest", base) != stage_key("ingest", base, run_id="run-y")  # tables are versioned by run

    original = stage_key("ingest", base)
    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the corpus changed on disk
    assert stage_key("ingest", base) != original
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert stage_key("ingest", base) == original

    base.database.unlink()
    with db.connect(base.database):
        pass
    assert stage_key("ingest", base) != original  # a recreated database never reuses the old one's stages
    assert stage_key("ingest", load_settings(None, [*overrides, "reuse_stages=false"])) is None
