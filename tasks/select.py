"""Select stage: fill the token budget with the documents the stage's measurements say help the target most.

The candidates are ranked by `select.method` (runtime/rankings.py: by default the influence score plus
the arm's measured reward; `topk` the scores alone, `arms` the arm rewards alone), and the top of the
ranking fills the budget, never exceeding it: one sort, O(N log N) in the pool.

* With `select.rerank_factor` > 0 the head of the ranking comes in the order the stage's oracle measured
  it (the cascade: tasks/rerank.py, models/cascade.py).
* With `select.coverage_share` > 0 every arm first gets a floor, that share of what uniform data would give
  it (models/coverage.py: the ranking's head, a top-up of the arms it leaves short, uniform or in rank
  order by `select.coverage_order`, then the ranking again), so no region of the pool is starved.

The benchmark and the flow use the same rankings.
"""

from __future__ import annotations

import numpy as np
from prefect import task

from core import db, store
from core.artifacts import Clustered, Influence, Probes, Reranked, Selection
from core.config import Settings
from core.seeds import rng
from models.cascade import rerank_head
from models.coverage import coverage_fill
from runtime.policies import STAGE_CACHE
from runtime.rankings import SELECTORS, ranking_order

__all__ = ["SELECTORS", "measured_order", "select_stage", "select_task"]


def measured_order(order: np.ndarray, pool: store.Candidates, measured: dict[str, float], stage: int) -> np.ndarray:
    """`order` with its head in the cascade's measured order; the head must be what the cascade measured."""
    head = [pool.doc_ids[i] for i in order[:len(measured)]]
    if set(head) != measured.keys():
        raise ValueError(f"stage {stage}: the cascade measured another head of the ranking than the select stage "
                         f"cut ({len(measured.keys() - set(head))} documents differ); re-run the rerank stage")
    return rerank_head(order, np.array([measured[d] for d in head]))


def select_stage(settings: Settings, influence: Influence, clustered: Clustered, probes: Probes,
                 reranked: Reranked | None = None, progress: bool = True) -> Selection:
    """Choose the stage's mixture from `influence`'s scores and `probes`' arm rewards (the ranking's head
    in the oracle's measured order where the cascade, `reranked`, measured it)."""
    run_id, stage, method = influence.run_id, influence.stage, settings.select.method
    with db.connect(settings.database, read_only=True) as con:
        pool = store.candidates(con, run_id, stage, settings.seed, settings.select.exclude_previous)
        measured = store.reranked_values(con, run_id, stage) if reranked is not None and reranked.measured else {}
    if len(probes.arm_scores) != clustered.k:
        raise ValueError(f"stage {stage}: {len(probes.arm_scores)} arm rewards for {clustered.k} clusters")
    scores = pool.scores
    order = ranking_order(settings, pool, probes, stage)
    if measured:
        order = measured_order(order, pool, measured, stage)
    chosen = coverage_fill(order, pool.n_tokens, pool.cluster_ids,
                           settings.select.token_budget, settings.select.coverage_share,
                           rng(settings.seed, "coverage", stage),
                           ranked_top_ups=settings.select.coverage_order == "ranked").tolist()
    return Selection(
        run_id=run_id, stage=stage, token_budget=settings.select.token_budget,
        doc_ids=[pool.doc_ids[i] for i in chosen], cluster_ids=[int(pool.cluster_ids[i]) for i in chosen],
        scores=[float(scores[i]) for i in chosen], rounds=list(range(len(chosen))),
        tokens=int(pool.n_tokens[chosen].sum()) if chosen else 0, n_rounds=probes.pulls,
        exhausted=int(pool.n_tokens.sum()) < settings.select.token_budget, selector=method,
    )


select_task = task(select_stage, name="select", task_run_name="select[stage={influence.stage}]",
                   cache_policy=STAGE_CACHE, persist_result=True)
