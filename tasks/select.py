"""Select a stage's mixture with the Quad-style cluster bandit over the influence scores.

Clusters are arms; pulling one samples a few of its documents and rewards it with their influence;
rewards spill over to clusters with nearby centroids. The bandit stops at the token budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from prefect import task

from core import db
from core.config import Settings
from core.faults import failpoint
from models.bandit import BanditConfig, select_with_bandit
from runtime.policies import STAGE_CACHE
from tasks.cluster import load_centroids
from tasks.probe import available_documents


@dataclass
class Selection:
    stage: int
    token_budget: int
    doc_ids: list[str]
    cluster_ids: list[int]
    scores: list[float]
    rounds: list[int]
    tokens: int
    n_rounds: int
    exhausted: bool

    def as_metrics(self) -> dict[str, float]:
        return {"selected_documents": len(self.doc_ids), "selected_tokens": self.tokens,
                "token_budget": self.token_budget, "budget_fill": self.tokens / self.token_budget,
                "bandit_rounds": self.n_rounds, "bandit_pool_exhausted": float(self.exhausted)}


def bandit_config(settings: Settings, stage: int) -> BanditConfig:
    s = settings.select
    return BanditConfig(token_budget=s.token_budget, ucb_alpha=s.ucb_alpha, arms_per_round=s.arms_per_round,
                        sample_per_arm=s.sample_per_arm, exploit_batch=s.exploit_batch,
                        reward_threshold=s.reward_threshold, share_distance=s.share_distance,
                        temperature=s.temperature, seed=settings.seed + 7919 * stage)


def select_stage(settings: Settings, run_id: str, stage: int, progress: bool = True) -> Selection:
    with db.connect(settings.database) as con:
        candidates = available_documents(con, settings, run_id, stage)
        score_of = dict(db.rows(con, "stage_scores", {"run_id": run_id, "stage": stage}))
        centroids = load_centroids(con, run_id)
    doc_ids = [c[0] for c in candidates]
    cluster_ids = np.array([c[1] for c in candidates], dtype=np.int64)
    tokens = np.array([c[2] for c in candidates], dtype=np.int64)
    scores = np.array([score_of[d] for d in doc_ids], dtype=np.float64)
    result = select_with_bandit(cluster_ids, scores, tokens, centroids, bandit_config(settings, stage),
                                progress=progress)
    rounds = result.rounds
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_bandit_rounds", {"run_id": run_id, "stage": stage})
        if rounds:
            columns = {key: [r[key] for r in rounds] for key in rounds[0]}
            db.insert_arrow(con, "insert_bandit_rounds", pa.table(
                {"run_id": [run_id] * len(rounds), "stage": [stage] * len(rounds), **columns}))
        failpoint("select.rounds")
    picked = [int(i) for i in result.selected]
    return Selection(
        stage=stage, token_budget=settings.select.token_budget,
        doc_ids=[doc_ids[i] for i in picked], cluster_ids=[int(cluster_ids[i]) for i in picked],
        scores=[float(scores[i]) for i in picked], rounds=[int(r) for r in result.selected_round],
        tokens=int(result.tokens_total), n_rounds=len({r["round"] for r in rounds}), exhausted=bool(result.exhausted)
    )


select_task = task(select_stage, name="select", task_run_name="select[stage={stage}]", cache_policy=STAGE_CACHE, persist_result=True)
