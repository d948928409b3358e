"""The whole flow under a real Prefect server, against a real DuckDB file and a real MLflow sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from core import db

pytestmark = pytest.mark.e2e


def query(settings, sql: str, params=None):
    con = duckdb.connect(str(settings.database), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_every_stage_wrote_its_table(e2e_run):
    settings, result = e2e_run
    run = result.run_id
    for table in ("documents", "quarantine", "embeddings", "cluster_assignments", "probes", "influence_scores",
                  "oracle_pulls", "reranked_documents", "mixture_members"):
        (n,) = query(settings, f"SELECT count(*) FROM {table} WHERE run_id = ?", [run])[0]
        assert n > 0, table
    (status,) = query(settings, "SELECT status FROM runs WHERE run_id = ?", [run])[0]
    assert status == "completed"


def test_mixture_respects_budget_and_has_no_duplicates(e2e_run):
    settings, result = e2e_run
    rows = query(settings, """
        SELECT x.stage, x.token_budget, x.tokens, x.n_documents,
               count(m.doc_id), count(DISTINCT m.doc_id), sum(d.n_tokens)
        FROM mixtures x
        JOIN mixture_members m ON m.run_id = x.run_id AND m.stage = x.stage
        JOIN documents d ON d.run_id = m.run_id AND d.doc_id = m.doc_id
        WHERE x.run_id = ? GROUP BY ALL ORDER BY x.stage""", [result.run_id])
    assert [r[0] for r in rows] == list(range(settings.stages))
    for stage, budget, tokens, n_docs, members, distinct, member_tokens in rows:
        assert tokens <= budget
        assert tokens == member_tokens
        assert members == distinct == n_docs > 0


def test_members_are_clean_documents(e2e_run):
    settings, result = e2e_run
    (orphans,) = query(settings, """
        SELECT count(*) FROM mixture_members m
        LEFT JOIN documents d ON d.run_id = m.run_id AND d.doc_id = m.doc_id
        WHERE m.run_id = ? AND d.doc_id IS NULL""", [result.run_id])[0]
    assert orphans == 0
    (quarantined_members,) = query(settings, """
        SELECT count(*) FROM mixture_members m
        JOIN documents d ON d.run_id = m.run_id AND d.doc_id = m.doc_id
        JOIN quarantine q ON q.run_id = d.run_id AND q.source = d.source AND q.locator = d.locator
        WHERE m.run_id = ?""", [result.run_id])[0]
    assert quarantined_members == 0
    (reselected,) = query(settings, """
        SELECT count(*) FROM (SELECT doc_id FROM mixture_members WHERE run_id = ? GROUP BY doc_id HAVING count(*) > 1)""",
        [result.run_id])[0]
    assert reselected == 0  # exclude_previous: no document is picked in two stages


def test_bad_records_are_quarantined_with_reasons(e2e_run):
    settings, result = e2e_run
    reasons = {r[0] for r in query(settings, "SELECT DISTINCT reason FROM quarantine WHERE run_id = ?", [result.run_id])}
    assert {"invalid_json", "not_utf8", "empty_text", "missing_text", "too_long"} <= reasons
    kinds = {r[0] for r in query(settings, "SELECT DISTINCT kind FROM duplicates WHERE run_id = ?", [result.run_id])}
    assert {"exact", "near"} <= kinds


def test_the_oracle_spends_its_budget_once_per_document(e2e_run):
    settings, result = e2e_run
    for stage in range(settings.stages):
        n, distinct, labelled, heldout, oracles = query(settings, """
            SELECT count(*), count(DISTINCT doc_id), count(*) FILTER (WHERE isfinite(label)),
                   count(*) FILTER (WHERE split = 'heldout'), list(DISTINCT oracle)
            FROM probes WHERE run_id = ? AND stage = ?""", [result.run_id, stage])[0]
        assert n == distinct == labelled == settings.probe.budget and oracles == ["conditional"]
        assert 0 < heldout < n  # the influence model is judged on measured documents it never fitted
        measured, pulls = query(settings, "SELECT sum(n_measured), count(*) FROM oracle_pulls WHERE run_id = ? AND stage = ?",
                                [result.run_id, stage])[0]
        assert measured == n and pulls == result.stages[stage].probes.pulls


def test_every_document_scored_and_assigned(e2e_run):
    settings, result = e2e_run
    (docs,) = query(settings, "SELECT count(*) FROM pool_documents WHERE run_id = ?", [result.run_id])[0]
    for stage in range(settings.stages):
        (scored,) = query(settings, "SELECT count(*) FROM influence_scores WHERE run_id = ? AND stage = ?",
                          [result.run_id, stage])[0]
        assert scored == docs
    (assigned,) = query(settings, "SELECT count(*) FROM cluster_assignments WHERE run_id = ?", [result.run_id])[0]
    assert assigned == docs


def test_the_cascade_measured_each_stages_head_and_its_mixture_came_from_it(e2e_run):
    settings, result = e2e_run
    for stage in range(settings.stages):
        reranked = result.stages[stage].reranked
        rows = query(settings, "SELECT count(*), count(*) FILTER (WHERE m.doc_id IS NOT NULL) FROM reranked_documents r "
                               "LEFT JOIN mixture_members m USING (run_id, stage, doc_id) WHERE r.run_id = ? AND r.stage = ?",
                     [result.run_id, stage])
        (measured, selected), = rows
        assert measured == reranked.measured > 0 and reranked.agreement is not None
        assert selected == len(result.stages[stage].selection.doc_ids)  # every selected document was measured


def test_mlflow_run_has_metrics_plots_and_registered_model(e2e_run):
    import mlflow

    settings, result = e2e_run
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    run = client.get_run(result.tracked.mlflow_run_id)
    for key in ("documents", "quarantined", "clusters", "final_influence_heldout_spearman", "final_selected_tokens"):
        assert key in run.data.metrics, key
    assert run.data.params["select.token_budget"] == str(settings.select.token_budget)
    assert run.data.tags["influmix.run_id"] == result.run_id
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == settings.proxy.steps_per_stage * settings.stages
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/mixture_composition.png", "plots/bandit_rewards.png"} <= artifacts
    datasets = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {f"{result.run_id}-pool", *(f"{result.run_id}-mixture-stage{s}" for s in range(settings.stages))} <= datasets
    version = client.get_model_version_by_alias(settings.track.registered_model, settings.track.model_alias)
    assert version.run_id == run.info.run_id
    assert version.tags["influmix.run_id"] == result.run_id and version.tags["influmix.gate"] == "passed"
    assert float(version.tags["influmix.heldout_spearman"]) == pytest.approx(
        result.stages[-1].influence.heldout_spearman, abs=1e-4)
    assert "held-out Spearman" in version.description


def test_mlflow_run_is_the_whole_pipeline_with_resolved_params_and_config(e2e_run):
    """Opened at the start, closed FINISHED; params say what the run resolved (not `None`), the effective
    config is an artifact, and the metric names read as they are (no `final_final_*`, no bare `seconds`)."""
    import mlflow

    settings, result = e2e_run
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    run = client.get_run(result.tracked.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_id
    assert run.data.params["run_id"] == result.run_id
    assert run.data.params["db_path"] == str(settings.database.resolve())
    assert not [k for k in run.data.metrics if k.startswith("final_final") or k == "seconds"]
    assert {"ingest_seconds", "final_proxy_train_loss", "final_reference_loss"} <= set(run.data.metrics)
    local = client.download_artifacts(run.info.run_id, "config/settings.json")
    config = json.loads(Path(local).read_text())
    assert config["run_id"] == result.run_id and config["select"]["token_budget"] == settings.select.token_budget
    with db.connect(settings.database, read_only=True) as con:
        (mlflow_run_id,) = con.execute("SELECT mlflow_run_id FROM runs WHERE run_id = ?", [result.run_id]).fetchone()
    assert mlflow_run_id == run.info.run_id


def test_each_stage_is_logged_to_mlflow_as_it_finishes(e2e_run):
    """Stage s's metrics sit at step s, once each, and were sent before the next stage had trained."""
    import mlflow

    settings, result = e2e_run
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    mlflow_run_id = result.tracked.mlflow_run_id
    history = sorted(client.get_metric_history(mlflow_run_id, "reference_loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(settings.stages))
    assert [m.value for m in history] == pytest.approx([s.checkpoint.reference_loss for s in result.stages])
    start = client.get_run(mlflow_run_id).info.start_time / 1000
    assert start <= Path(result.stages[0].checkpoint.path).stat().st_mtime  # opened before the first stage
    for stage in range(settings.stages - 1):  # logged before the next stage's checkpoint was written
        assert history[stage].timestamp / 1000 <= Path(result.stages[stage + 1].checkpoint.path).stat().st_mtime


def test_oracle_pulls_load_in_pull_order(e2e_run):
    """The measured budget only grows along the pulls: rows and MLflow's `bandit_measured_stage*` curves never
    go back; every arm is pulled once (the warm-up) before the bandit chooses."""
    import mlflow

    from core import db, store

    settings, result = e2e_run
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    with db.connect(settings.database, read_only=True) as con:
        for stage in range(settings.stages):
            pulls = store.oracle_pulls(con, result.run_id, stage)
            assert [p.pull for p in pulls] == list(range(len(pulls))) and len(pulls) > settings.cluster.k
            assert sorted(p.cluster_id for p in pulls[:settings.cluster.k]) == list(range(settings.cluster.k))
            assert all(p.ucb is None for p in pulls[:settings.cluster.k]) and all(p.ucb is not None
                                                                                   for p in pulls[settings.cluster.k:])
            spent = np.cumsum([p.n_measured for p in pulls]).tolist()
            curve = client.get_metric_history(result.tracked.mlflow_run_id, f"bandit_measured_stage{stage}")
            assert [m.value for m in sorted(curve, key=lambda m: m.step)] == spent


def test_each_arm_gets_one_group_reward_in_the_warm_up(e2e_run):
    """The probe stage's group path, end to end: every arm's warm-up pull carries its rollout reward (the tiny
    config's arms hold far more than a rollout's tokens), no later pull measures a group again, and the stage's
    summary counts them."""
    from core import db, store

    settings, result = e2e_run
    with db.connect(settings.database, read_only=True) as con:
        for stage in range(settings.stages):
            pulls = store.oracle_pulls(con, result.run_id, stage)
            warm_up, later = pulls[:settings.cluster.k], pulls[settings.cluster.k:]
            assert all(p.group_reward is not None and np.isfinite(p.group_reward) for p in warm_up), warm_up
            assert len({p.group_reward for p in warm_up}) > 1  # measured per arm, not one constant
            assert all(p.group_reward is None for p in later)
            assert result.stages[stage].probes.group_rewards == settings.cluster.k


def test_registered_model_scores_documents_as_the_run_did(e2e_run):
    import mlflow

    from core import db, store
    from core.tracking import tracking_scope

    settings, result = e2e_run
    assert result.stages[-1].influence.student == "head"  # the CPU default reads the run's embeddings
    with db.connect(settings.database, read_only=True) as con:
        ids, vectors = store.load_embeddings(con, result.run_id)
        expected = store.stage_scores(con, result.run_id, settings.stages - 1)
    with tracking_scope(settings.mlflow_uri):
        model = mlflow.pyfunc.load_model(f"models:/{settings.track.registered_model}@{settings.track.model_alias}")
        scores = model.predict(vectors[:12])
    np.testing.assert_allclose(scores, [expected[d] for d in ids[:12]], rtol=1e-5)


def test_prefect_flow_run_completed_with_every_stage(e2e_run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    settings, result = e2e_run

    async def read():
        async with get_client() as client:
            flow_run = await client.read_flow_run(result.prefect_flow_run_id)
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
            return flow_run, tasks

    flow_run, task_runs = asyncio.run(read())
    assert flow_run.state.is_completed()
    assert all(t.state.is_completed() for t in task_runs)
    names = [t.name for t in task_runs]
    for stage in ("ingest", "reference", "embed", "cluster", "tokenizer", "track"):
        assert sum(n.startswith(f"{stage}-") for n in names) == 1, (stage, names)
    for stage in ("pretrain", "probe", "distill", "rerank", "select", "write-mixture"):
        for s in range(settings.stages):
            assert f"{stage}[stage={s}]" in names, (stage, s, names)


def test_a_failed_flow_marks_its_run_failed_and_raises_the_user_error(tmp_path, prefect_harness):
    import mlflow

    from core.config import ConfigError, load_settings
    from flows.curate import curate
    from tests.conftest import tiny_overrides

    overrides = [*tiny_overrides(tmp_path / "runs", corpus_records=30), "cluster.k=100", "run_id=doomed"]
    with pytest.raises(ConfigError, match="cluster.k"):
        curate(None, overrides)
    settings = load_settings(None, overrides)
    assert query(settings, "SELECT status FROM runs WHERE run_id = 'doomed'") == [("failed",)]
    (mlflow_run_id,) = query(settings, "SELECT mlflow_run_id FROM runs WHERE run_id = 'doomed'")[0]
    run = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri).get_run(mlflow_run_id)
    assert run.info.status == "FAILED" and "cluster.k" in run.data.tags["influmix.failure"]


def test_the_defaults_measure_a_uniform_sample_and_cascade_the_top_k(e2e_run, second_run):
    """The product's own path (the shared run takes the bandit's): the probe stage measures its budget as one
    arm, the pool, with no group rollouts; the mixture is the influence model's top-k, cascaded."""
    from core import db, store

    settings, _ = e2e_run
    with db.connect(settings.database, read_only=True) as con:
        for stage in range(settings.stages):
            probes, selection = second_run.stages[stage].probes, second_run.stages[stage].selection
            pulls = store.oracle_pulls(con, second_run.run_id, stage)
            assert {p.cluster_id for p in pulls} == {0} and all(p.group_reward is None for p in pulls)
            assert sum(p.n_measured for p in pulls) == probes.measured == settings.probe.budget
            assert probes.arms_pulled == 0 and probes.group_rewards == 0 and not any(probes.arm_scores)
            (clusters,) = query(settings, "SELECT count(DISTINCT a.cluster_id) FROM probes p JOIN cluster_assignments a "
                                "ON a.run_id = p.run_id AND a.doc_id = p.doc_id WHERE p.run_id = ? AND p.stage = ?",
                                [second_run.run_id, stage])[0]
            assert clusters > 1  # a sample of the whole pool, not of one arm
            assert selection.selector == "topk" and second_run.stages[stage].reranked.measured > 0
