"""Rerank stage: the cascade's second look at the head of the selection ranking (models/cascade.py).

The influence model scores every candidate cheaply; the stage's oracle (the one the probe stage spent:
by default CoLoR's conditional loss reduction, with the probe stage's own fine-tuned model, so nothing is
fine-tuned twice) then measures the head of the ranking the select stage will cut, `select.rerank_factor`
times the token budget, and the select stage fills the budget from that head in measured order. The
measurements go to `reranked_documents` beside the influence model's scores, so the student's agreement
with the oracle where it matters (the head, not the whole pool) is on record for every stage.

`select.rerank_estimate = "shrunk"` orders the head by Fay-Herriot estimates instead of the raw values
(models/cascade.py: each value shrunk toward a regression on the student's score by its sampling variance,
the head's pooled per-token spread over its token count), against the winner's curse of a wide head; the
variance is recorded either way.

Cost: two forward passes of the proxy per measured document (about 2 x 128 tokens), no gradients.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from prefect import task

from core import db, store
from core.artifacts import Checkpoint, Influence, Probes, Reranked, Tokenized
from core.config import Settings
from models.cascade import pooled_variance, ranking_head, shrunk_values
from models.proxy_lm import probe_inputs
from models.ranking import spearman
from models.tokenizer import load_tokenizer
from runtime.oracles import spent_oracle
from runtime.policies import STAGE_CACHE
from runtime.rankings import ranking_order

logger = logging.getLogger(__name__)

MEASURE_CHUNK = 1024
"""Documents measured per oracle call: bounds the token ids held at once on a large head."""


def rerank_rows(run_id: str, stage: int, head: MeasuredHead, estimates: np.ndarray,
                variance: np.ndarray | None) -> pa.Table:
    n = len(head.doc_ids)
    return pa.table({"run_id": [run_id] * n, "stage": pa.array([stage] * n, pa.int32()), "doc_id": head.doc_ids,
                     "ranked": pa.array(np.arange(n), pa.int32()), "score": head.scores.astype(np.float64),
                     "measured": head.measured.astype(np.float64), "oracle": [head.oracle] * n,
                     "variance": pa.array(variance, pa.float64()) if variance is not None else pa.nulls(n, pa.float64()),
                     "estimate": estimates.astype(np.float64)})


@dataclass
class MeasuredHead:
    """The head of the select stage's ranking (ranking order) and what the oracle measured on it."""

    doc_ids: list[str]
    scores: np.ndarray  # the influence model's
    measured: np.ndarray
    tokens: np.ndarray  # the pool's token counts (what the budget is filled with)
    oracle: str
    spread: np.ndarray | None = None  # per-token drop variance and predicted tokens, where the oracle has them
    predicted: np.ndarray | None = None

    @classmethod
    def nothing(cls, oracle: str) -> MeasuredHead:
        """No head: the cascade is off, or the stage has no candidates."""
        return cls([], np.zeros(0), np.zeros(0), np.zeros(0, np.int64), oracle)


def measure_head(settings: Settings, checkpoint: Checkpoint, tokenized: Tokenized, influence: Influence,
                 probes: Probes) -> MeasuredHead:
    """Cut the select stage's own ranking at `rerank_factor` x the budget and measure that head."""
    run_id, stage, cfg = influence.run_id, influence.stage, settings.select
    with db.connect(settings.database, read_only=True) as con:
        pool = store.candidates(con, run_id, stage, settings.seed, cfg.exclude_previous)
        head = ranking_head(ranking_order(settings, pool, probes, stage), pool.n_tokens,
                            cfg.rerank_factor * cfg.token_budget)
        doc_ids = [pool.doc_ids[i] for i in head]
        texts = store.texts_of(con, run_id, doc_ids)
    if not len(head):
        return MeasuredHead.nothing(probes.oracle)
    oracle = spent_oracle(settings, checkpoint, tokenized, probes)
    tokenizer = load_tokenizer(tokenized.tokenizer_path)
    parts = [oracle.measure(probe_inputs(tokenizer, [texts[d] for d in doc_ids[i:i + MEASURE_CHUNK]],
                                         settings.proxy.seq_len)) for i in range(0, len(doc_ids), MEASURE_CHUNK)]
    has_spread = all(p.spread is not None and p.tokens is not None for p in parts)
    return MeasuredHead(doc_ids, pool.scores[head], np.concatenate([p.values for p in parts]), pool.n_tokens[head],
                        oracle.name, np.concatenate([p.spread for p in parts]) if has_spread else None,
                        np.concatenate([p.tokens for p in parts]) if has_spread else None)


def head_estimates(settings: Settings, head: MeasuredHead) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(what the head is ordered by, each value's sampling variance, the weight kept on the measurements).

    No variance where the oracle reports no per-token spread (one-step probes) or no measured document has
    two predicted tokens to have one: the head is then ordered as measured."""
    if not head.doc_ids:
        return head.measured, None, None
    if head.spread is None or not np.isfinite(head.spread).any():
        if settings.select.rerank_estimate == "shrunk":
            logger.warning("select.rerank_estimate = 'shrunk': the %s oracle's head has no sampling variance; "
                           "it is ordered as measured", head.oracle)
        return head.measured, None, None
    variance = pooled_variance(head.spread, head.predicted, settings.probe.shrink_tokens)
    if settings.select.rerank_estimate == "measured":
        return head.measured, variance, None
    estimates, weight = shrunk_values(head.measured, variance, head.scores)
    return estimates, variance, weight


def rerank_stage(settings: Settings, checkpoint: Checkpoint, tokenized: Tokenized, influence: Influence,
                 probes: Probes, progress: bool = True) -> Reranked:
    """Measure the ranking's head with the stage's oracle; write `reranked_documents` (none when off).

    With `rerank_factor = 0` the cascade is off: the stage only clears the stage's rows, without loading or
    ranking the candidates.
    """
    started = time.perf_counter()
    run_id, stage = influence.run_id, influence.stage
    head = (measure_head(settings, checkpoint, tokenized, influence, probes) if settings.select.rerank_factor > 0
            else MeasuredHead.nothing(probes.oracle))
    estimates, variance, weight = head_estimates(settings, head)
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_reranked_documents", {"run_id": run_id, "stage": stage})
        if head.doc_ids:
            db.insert_arrow(con, "insert_reranked_documents", rerank_rows(run_id, stage, head, estimates, variance))
    return Reranked(run_id=run_id, stage=stage, measured=len(head.doc_ids), tokens=int(head.tokens.sum()),
                    agreement=spearman(head.scores, head.measured) if len(head.doc_ids) > 2 else None,
                    seconds=time.perf_counter() - started, weight=weight)


rerank_task = task(rerank_stage, name="rerank", task_run_name="rerank[stage={influence.stage}]",
                   cache_policy=STAGE_CACHE, persist_result=True)
