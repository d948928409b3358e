"""Select a stage's mixture from the influence scores with the configured selector (`select.method`).

* `bandit` (default): the Quad-style cluster bandit (models/bandit.py): clusters are arms; pulling one
  samples a few of its documents and rewards it with their influence; rewards spill over to clusters with
  nearby centroids; it stops at the token budget.
* `topk`: MATES's Gumbel-top-k on the scores (temperature `select.temperature`), no clusters.

Selectors are registered by name in `SELECTORS`; the benchmark and the flow use the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import task

from core import db, store
from core.artifacts import Clustered, Influence, Selection
from core.config import Settings
from core.faults import failpoint
from core.seeds import int_seed
from models.bandit import select_with_bandit
from models.baselines import select_topk
from runtime.configs import bandit_config
from runtime.policies import STAGE_CACHE


@dataclass
class Picked:
    """What a selector chose: indices into the candidates in selection order, and its trace."""

    indices: np.ndarray
    rounds_of: np.ndarray  # the round each pick was taken in
    rounds: list[dict[str, Any]]  # one row per bandit pull (empty for selectors without rounds)
    exhausted: bool


def bandit_selector(settings: Settings, stage: int, pool: store.Candidates, scores: np.ndarray,
                    centroids: np.ndarray, progress: bool) -> Picked:
    result = select_with_bandit(pool.cluster_ids, scores, pool.n_tokens, centroids, bandit_config(settings, stage),
                                progress=progress)
    return Picked(result.selected, result.selected_round, result.rounds, bool(result.exhausted))


def topk_selector(settings: Settings, stage: int, pool: store.Candidates, scores: np.ndarray,
                  centroids: np.ndarray, progress: bool) -> Picked:
    picked = select_topk(scores, pool.n_tokens, settings.select.token_budget, settings.select.temperature,
                         seed=int_seed(settings.seed, "select", stage))
    return Picked(picked, np.zeros(len(picked), dtype=np.int64), [], False)


Selector = Callable[[Settings, int, store.Candidates, np.ndarray, np.ndarray, bool], Picked]
SELECTORS: dict[str, Selector] = {"bandit": bandit_selector, "topk": topk_selector}


def select_stage(settings: Settings, influence: Influence, clustered: Clustered, progress: bool = True) -> Selection:
    """Choose the stage's mixture from `influence`'s scores over the documents still available."""
    run_id, stage, method = influence.run_id, influence.stage, settings.select.method
    with db.connect(settings.database) as con:
        pool = store.candidates(con, run_id, stage, settings.seed, settings.select.exclude_previous)
        score_of = store.stage_scores(con, run_id, stage)
        centroids = store.load_centroids(con, clustered.run_id)
    scores = np.array([score_of[d] for d in pool.doc_ids], dtype=np.float64)
    picked = SELECTORS[method](settings, stage, pool, scores, centroids, progress)
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_bandit_rounds", {"run_id": run_id, "stage": stage})
        if picked.rounds:
            columns = {key: [r[key] for r in picked.rounds] for key in picked.rounds[0]}
            db.insert_arrow(con, "insert_bandit_rounds", pa.table(
                {"run_id": [run_id] * len(picked.rounds), "stage": [stage] * len(picked.rounds), **columns}))
        failpoint("select.rounds")
    chosen = [int(i) for i in picked.indices]
    return Selection(
        run_id=run_id, stage=stage, token_budget=settings.select.token_budget,
        doc_ids=[pool.doc_ids[i] for i in chosen], cluster_ids=[int(pool.cluster_ids[i]) for i in chosen],
        scores=[float(scores[i]) for i in chosen], rounds=[int(r) for r in picked.rounds_of],
        tokens=int(pool.n_tokens[chosen].sum()) if chosen else 0,
        n_rounds=len({r["round"] for r in picked.rounds}), exhausted=picked.exhausted, selector=method,
    )


select_task = task(select_stage, name="select", task_run_name="select[stage={influence.stage}]",
                   cache_policy=STAGE_CACHE, persist_result=True)
