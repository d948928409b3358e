"""Rerank stage: the cascade's second look at the head of the selection ranking (models/cascade.py).

The influence model scores every candidate cheaply; the stage's oracle (the one the probe stage spent:
by default CoLoR's conditional loss reduction, with the probe stage's own fine-tuned model, so nothing is
fine-tuned twice) then measures the head of the ranking the select stage will cut, `select.rerank_factor`
times the token budget, and the select stage fills the budget from that head in measured order. The
measurements go to `reranked_documents` beside the influence model's scores, so the student's agreement
with the oracle where it matters (the head, not the whole pool) is on record for every stage.

Cost: two forward passes of the proxy per measured document (about 2 x 128 tokens), no gradients.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from prefect import task

from core import db, store
from core.artifacts import Checkpoint, Influence, Probes, Reranked, Tokenized
from core.config import Settings
from models.cascade import ranking_head
from models.proxy_lm import probe_inputs
from models.ranking import spearman
from models.tokenizer import load_tokenizer
from runtime.oracles import spent_oracle
from runtime.policies import STAGE_CACHE
from runtime.rankings import ranking_order

MEASURE_CHUNK = 1024
"""Documents measured per oracle call: bounds the token ids held at once on a large head."""


def rerank_rows(run_id: str, stage: int, doc_ids: list[str], scores: np.ndarray, measured: np.ndarray,
                oracle: str) -> pa.Table:
    n = len(doc_ids)
    return pa.table({"run_id": [run_id] * n, "stage": pa.array([stage] * n, pa.int32()), "doc_id": doc_ids,
                     "ranked": pa.array(np.arange(n), pa.int32()), "score": scores.astype(np.float64),
                     "measured": measured.astype(np.float64), "oracle": [oracle] * n})


def measure_head(settings: Settings, checkpoint: Checkpoint, tokenized: Tokenized, influence: Influence,
                 probes: Probes) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, str]:
    """The head of the select stage's own ranking and what the oracle measures on it.

    Returns (doc ids in ranking order, the student's scores, the oracle's values, token counts, oracle name).
    """
    run_id, stage, cfg = influence.run_id, influence.stage, settings.select
    with db.connect(settings.database, read_only=True) as con:
        pool = store.candidates(con, run_id, stage, settings.seed, cfg.exclude_previous)
        head = ranking_head(ranking_order(settings, pool, probes, stage), pool.n_tokens,
                            cfg.rerank_factor * cfg.token_budget)
        doc_ids = [pool.doc_ids[i] for i in head]
        texts = store.texts_of(con, run_id, doc_ids)
    if not len(head):
        return doc_ids, pool.scores[head], np.zeros(0), pool.n_tokens[head], probes.oracle
    oracle = spent_oracle(settings, checkpoint, tokenized, probes)
    tokenizer = load_tokenizer(tokenized.tokenizer_path)
    chunks = [doc_ids[i:i + MEASURE_CHUNK] for i in range(0, len(doc_ids), MEASURE_CHUNK)]
    measured = np.concatenate([oracle.measure(probe_inputs(tokenizer, [texts[d] for d in chunk],
                                                           settings.proxy.seq_len)).values for chunk in chunks])
    return doc_ids, pool.scores[head], measured, pool.n_tokens[head], oracle.name


def rerank_stage(settings: Settings, checkpoint: Checkpoint, tokenized: Tokenized, influence: Influence,
                 probes: Probes, progress: bool = True) -> Reranked:
    """Measure the ranking's head with the stage's oracle; write `reranked_documents` (none when off).

    With `rerank_factor = 0` the cascade is off: the stage only clears the stage's rows, without loading or
    ranking the candidates.
    """
    started = time.perf_counter()
    run_id, stage = influence.run_id, influence.stage
    doc_ids, scores, measured, tokens = [], np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    oracle_name = probes.oracle
    if settings.select.rerank_factor > 0:
        doc_ids, scores, measured, tokens, oracle_name = measure_head(settings, checkpoint, tokenized,
                                                                      influence, probes)
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_reranked_documents", {"run_id": run_id, "stage": stage})
        if doc_ids:
            db.insert_arrow(con, "insert_reranked_documents",
                            rerank_rows(run_id, stage, doc_ids, scores, measured, oracle_name))
    return Reranked(run_id=run_id, stage=stage, measured=len(doc_ids), tokens=int(tokens.sum()),
                    agreement=spearman(scores, measured) if len(doc_ids) > 2 else None,
                    seconds=time.perf_counter() - started)


rerank_task = task(rerank_stage, name="rerank", task_run_name="rerank[stage={influence.stage}]",
                   cache_policy=STAGE_CACHE, persist_result=True)
