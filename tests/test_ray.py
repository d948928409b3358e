"""Ray scale-out: a real local Ray head on 127.0.0.1 runs the sharded stages and gives the default runner's mixture."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from core.config import ConfigError
from runtime.shards import connect_ray, disconnect_ray, shard_bounds, split_table, tag_pages
from tests.conftest import BANDIT_PATH, free_port, tiny_overrides

pytestmark = pytest.mark.services
RAY = Path(sys.executable).with_name("ray")


@pytest.mark.parametrize("n_items", [0, 1, 7, 8, 9, 64, 237])
@pytest.mark.parametrize("shards", [1, 3, 4, 100])
@pytest.mark.parametrize("align", [1, 4, 128])
def test_shards_cover_every_item_once_in_order_on_batch_boundaries(n_items, shards, align):
    bounds = shard_bounds(n_items, shards, align)
    covered = [i for start, end in bounds for i in range(start, end)]
    assert covered == list(range(n_items))
    assert len(bounds) <= shards and all(end > start for start, end in bounds)
    assert all(start % align == 0 for start, _ in bounds)
    assert len(bounds) == min(shards, -(-n_items // align))  # as many shards as there are batches to fill


def test_split_table_and_page_tags_agree_with_the_bounds():
    table = pa.table({"doc_id": [f"d{i:03d}" for i in range(10)]})
    parts = list(split_table(table, 3, 4))
    assert [k for k, _ in parts] == [0, 1, 2] and [p.num_rows for _, p in parts] == [4, 4, 2]
    pages = [table.slice(s, 2) for s in range(0, 10, 2)]
    assert [k for k, _ in tag_pages(pages, len(pages), 2)] == [0, 0, 0, 1, 1]


def test_unreachable_or_malformed_ray_address_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"runner\.ray_address.*no Ray head answers"):
        connect_ray(f"127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match=r"runner\.ray_address.*HOST:PORT"):
        connect_ray("not-an-address")


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 in its own process group; stopped by that group's id only."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir,
         "--object-store-memory", str(200 * 1024**2)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status = [str(RAY), "status", "--address", address]
        while subprocess.run(status, env=env, capture_output=True, check=False).returncode:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start (exit code {head.poll()})")
            time.sleep(1)
        yield address
    finally:
        disconnect_ray()
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _snapshot(database: str, run_id: str) -> dict[str, object]:
    """What the runner must not change: one run's per-stage mixtures, embeddings, probes, influence scores.

    Filtered by run id: other tests add runs (e.g. `second_run`) to the shared e2e database."""
    con = duckdb.connect(database, read_only=True)
    try:
        mixtures = con.execute("SELECT stage, list(doc_id ORDER BY doc_id) FROM mixture_members WHERE run_id = $run "
                               "GROUP BY stage ORDER BY stage", {"run": run_id}).fetchall()
        embeddings = con.execute("SELECT doc_id, embedding FROM embeddings WHERE run_id = $run ORDER BY doc_id",
                                 {"run": run_id}).fetchall()
        probes = con.execute("SELECT stage, doc_id, exact_score, fast_score, loss_before, loss_after, split, label "
                             "FROM probes WHERE run_id = $run ORDER BY stage, doc_id", {"run": run_id}).fetchall()
        scores = con.execute("SELECT stage, doc_id, score FROM influence_scores WHERE run_id = $run ORDER BY stage, doc_id",
                             {"run": run_id}).fetchall()
    finally:
        con.close()
    return {"mixtures": mixtures, "embeddings": embeddings, "probes": probes, "scores": scores}


def test_ray_runner_gives_the_default_runners_mixture(e2e_run, ray_head, tmp_path):
    """Same seed, Ray with 3 shards vs the default runner with 4: bit-identical data at every sharded stage.

    Exact equality holds because shard boundaries fall on the stages' batch boundaries, so each document is
    computed in the same batch on either runner, and workers use the driver's torch thread count (with
    Ray's default of one thread the fast probes differed in the 11th digit).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.curate import curate

    settings, default = e2e_run
    started = time.perf_counter()
    result = curate(None, [*tiny_overrides(tmp_path / "runs"), *BANDIT_PATH, 'runner.kind="ray"',
                           f'runner.ray_address="{ray_head}"', "runner.shards=3"])
    print(f"Ray run: {time.perf_counter() - started:.1f} s")
    on_ray, by_default = _snapshot(result.database, result.run_id), _snapshot(default.database, default.run_id)
    assert len(on_ray["mixtures"]) == settings.stages and all(ids for _, ids in on_ray["mixtures"])
    assert on_ray["mixtures"] == by_default["mixtures"]
    assert on_ray["embeddings"] == by_default["embeddings"]
    assert on_ray["probes"] == by_default["probes"]
    assert on_ray["scores"] == by_default["scores"]
    assert np.isfinite([p[7] for p in on_ray["probes"]]).all()  # every probe has an oracle label

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result.prefect_flow_run_id])))
    shard_runs = [r for r in runs if r.name.startswith("shard-")]
    assert sum(r.name.startswith("shard-embed") for r in shard_runs) >= 2  # the corpus really was split
    assert all(r.state.is_completed() for r in shard_runs)
    shard_root = tmp_path / "runs" / result.run_id / "shards"
    assert not shard_root.exists() or not any(shard_root.iterdir())  # loaded shard files are cleaned up
