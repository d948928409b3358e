"""What a run's MLflow metrics are, as (key, value, step) points, and sending those MLflow lacks.

Corpus-level metrics (ingest, filter, embed, cluster, tokenizer) are logged once at step 0. A model-aware
stage's metrics are logged at step = stage, so each is a curve over the stages in the MLflow UI; the proxy's
`train_loss` is one curve over every training step, and the bandit's reward and measured budget are curves
over its pulls (`bandit_reward_stage<s>`, `bandit_measured_stage<s>`, in pull order). Sending is
idempotent: a stage whose sentinel metric MLflow already has is skipped, so live logging, a resumed run and
the track stage can all call it without logging a point twice.
"""

from __future__ import annotations

import numpy as np

from core import db, store
from core.artifacts import Corpus, Run, StageResult
from core.tracking import log_metric_points, logged_steps

Point = tuple[str, float, int]
STAGE_SENTINEL = "reference_loss"  # every stage's checkpoint logs it: its steps say which stages MLflow has
CORPUS_SENTINEL = "records_read"


def corpus_points(corpus: Corpus) -> list[Point]:
    points: dict[str, float] = {}
    for part in corpus.parts():
        points.update(part.as_metrics())
    return [(key, value, 0) for key, value in points.items()]


def stage_points(database: str, result: StageResult) -> list[Point]:
    """A stage's metrics at step = stage, its training losses at their global steps, its bandit curves."""
    stage = result.checkpoint.stage
    points = [(key, value, stage) for part in result.parts() for key, value in part.as_metrics().items()]
    losses = result.checkpoint.losses
    points += [("train_loss", loss, stage * len(losses) + step) for step, loss in enumerate(losses)]
    with db.connect(database, read_only=True) as con:
        pulls = store.oracle_pulls(con, result.checkpoint.run_id, stage)
    measured = np.cumsum([p.n_measured for p in pulls])
    for step, (pull, total) in enumerate(zip(pulls, measured, strict=True)):
        points += [(f"bandit_reward_stage{stage}", pull.reward, step), (f"bandit_measured_stage{stage}", total, step)]
    return points


def log_missing_points(client, run: Run, corpus: Corpus, stages: list[StageResult]) -> int:
    """Send the corpus's and each finished stage's points unless MLflow has them; returns the points sent."""
    points: list[Point] = []
    if CORPUS_SENTINEL not in client.get_run(run.mlflow_run_id).data.metrics:
        points += corpus_points(corpus)
    have = logged_steps(client, run.mlflow_run_id, STAGE_SENTINEL)
    for result in stages:
        if result.checkpoint.stage not in have:
            points += stage_points(run.database, result)
    # the sentinel goes last: a batch cut short by an outage is sent again whole
    points.sort(key=lambda p: p[0] in (STAGE_SENTINEL, CORPUS_SENTINEL))
    log_metric_points(client, run.mlflow_run_id, points)
    return len(points)
