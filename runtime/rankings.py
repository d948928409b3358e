"""The selection rankings, by name (`select.method`): the select stage cuts the budget from one, and the
rerank stage (the cascade) measures the head of the very same one, so both must order candidates alike.

* `topk` (default): the influence scores alone (MATES). The cascade (tasks/rerank.py) then measures the
  head of this ranking again with the oracle.
* `bandit`: the influence z-score (over the candidates) plus `select.arm_weight` times the arm's posterior
  reward from the oracle bandit (`probe.sampling = "bandit"`): the influence model ranks documents, the
  measured arm rewards say which regions of the pool to trust it in. Measured at the cascade defaults
  (README, the ablation), it tied `topk` with uniform probes, at twice the probe stage's time.
* `arms`: the arm rewards alone, documents inside an arm in seeded random order (no influence model).

Gumbel-top-k at `select.temperature` (0 = plain top-k), seeded per stage.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core import store
from core.artifacts import Probes
from core.config import Settings
from core.seeds import rng
from models.baselines import gumbel_keys, standardise_scores


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


def ranking_order(settings: Settings, pool: store.Candidates, probes: Probes, stage: int) -> np.ndarray:
    """Candidate indices, best first, by the configured selector (seeded: the cascade cuts the same head)."""
    scores = pool.scores
    if np.isnan(scores).any():
        missing = pool.doc_ids[int(np.flatnonzero(np.isnan(scores))[0])]
        raise ValueError(f"stage {stage}: {int(np.isnan(scores).sum())} candidates have no influence score "
                         f"(first: {missing}); the distill stage scores every candidate")
    keys = gumbel_keys(SELECTORS[settings.select.method](settings, pool, scores, probes), settings.select.temperature,
                       rng(settings.seed, "select", stage))
    return np.argsort(-keys, kind="stable")
