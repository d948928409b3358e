"""Select stage: fill the token budget with the documents the stage's measurements say help the target most.

* `bandit` (default): every available document is ranked by its influence score (z over the candidates)
  plus `select.arm_weight` times its arm's posterior reward from the oracle bandit (tasks/probe.py): the
  influence model ranks documents, the measured arm rewards say which regions of the pool to trust it in.
* `topk`: the influence scores alone (MATES).
* `arms`: the arm rewards alone, documents inside an arm in seeded random order (no influence model).

Both take the top of the ranking (Gumbel-top-k at `select.temperature`; 0 = plain top-k) until the budget
is full, never exceeding it: one sort, O(N log N) in the pool. With `select.coverage_share` > 0 every arm
first gets a floor, that share of what uniform data would give it (models/coverage.py: the ranking's head,
a top-up of the arms it leaves short, uniform or in rank order by `select.coverage_order`, then the ranking
again), so no region of the pool is starved. Selectors are registered by name in `SELECTORS`; the benchmark
and the flow use the same ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from prefect import task

from core import db, store
from core.artifacts import Clustered, Influence, Probes, Selection
from core.config import Settings
from core.seeds import rng
from models.baselines import gumbel_keys, standardise_scores
from models.coverage import coverage_fill
from runtime.policies import STAGE_CACHE


def bandit_ranking(settings: Settings, pool: store.Candidates, scores: np.ndarray, probes: Probes) -> np.ndarray:
    """Influence z-score plus the arm's measured reward (in the oracle's spread units), per candidate."""
    arm = np.asarray(probes.arm_scores, dtype=np.float64)
    z = standardise_scores(scores, np.ones(len(scores), dtype=bool))
    return z + settings.select.arm_weight * arm[pool.cluster_ids]


def topk_ranking(settings: Settings, pool: store.Candidates, scores: np.ndarray, probes: Probes) -> np.ndarray:
    return standardise_scores(scores, np.ones(len(scores), dtype=bool))


def arms_ranking(settings: Settings, pool: store.Candidates, scores: np.ndarray, probes: Probes) -> np.ndarray:
    """The measured arm rewards alone: the best arms first, inside an arm the candidates' seeded order (a
    stable sort keeps it), no influence model (the ablation "bandit on the measurements alone")."""
    return np.asarray(probes.arm_scores, dtype=np.float64)[pool.cluster_ids]


Ranking = Callable[[Settings, store.Candidates, np.ndarray, Probes], np.ndarray]
SELECTORS: dict[str, Ranking] = {"bandit": bandit_ranking, "topk": topk_ranking, "arms": arms_ranking}


def select_stage(settings: Settings, influence: Influence, clustered: Clustered, probes: Probes,
                 progress: bool = True) -> Selection:
    """Choose the stage's mixture from `influence`'s scores and `probes`' arm rewards."""
    run_id, stage, method = influence.run_id, influence.stage, settings.select.method
    with db.connect(settings.database, read_only=True) as con:
        pool = store.candidates(con, run_id, stage, settings.seed, settings.select.exclude_previous)
    if len(probes.arm_scores) != clustered.k:
        raise ValueError(f"stage {stage}: {len(probes.arm_scores)} arm rewards for {clustered.k} clusters")
    scores = pool.scores
    if np.isnan(scores).any():
        missing = pool.doc_ids[int(np.flatnonzero(np.isnan(scores))[0])]
        raise ValueError(f"stage {stage}: {int(np.isnan(scores).sum())} candidates have no influence score "
                         f"(first: {missing}); the distill stage scores every candidate")
    keys = gumbel_keys(SELECTORS[method](settings, pool, scores, probes), settings.select.temperature,
                       rng(settings.seed, "select", stage))
    chosen = coverage_fill(np.argsort(-keys, kind="stable"), pool.n_tokens, pool.cluster_ids,
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
