"""The selection benchmark's model-aware methods: the pipeline's own stages, timed, with settings per method.

A trajectory is `flows/stages.py`'s `model_aware_stages` over the very stage functions the flow's tasks
wrap, so a method here is a set of ordinary settings (benchmarks/selection_methods.py `VARIANTS`) and what
the benchmark measures is what `influmix run` does with them. Stage 0's pretrain, probe and distil do not
depend on the selection rule: methods whose stage 0 is the same share it (`Clock`), each charged in full.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from core import db, store
from core.artifacts import Corpus, StageResult
from core.config import Settings, apply_overrides
from flows.stages import StageSteps, model_aware_stages
from models.baselines import greedy_fill
from tasks.distill import distill_stage
from tasks.mixture import write_mixture
from tasks.pretrain import pretrain_stage
from tasks.probe import probe_stage
from tasks.rerank import rerank_stage
from tasks.select import SELECTORS, select_stage


@dataclass
class Cost:
    """Seconds and model FLOPs a method spent on selection, by part (embed, probe, distill_score, ...)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    flops: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, part: str, seconds: float, flops: float = 0.0) -> None:
        self.seconds[part] += seconds
        self.flops[part] += flops

    def plus(self, *others: Cost) -> Cost:
        total = Cost()
        for cost in (self, *others):
            for part, value in cost.seconds.items():
                total.add(part, value, cost.flops.get(part, 0.0))
        return total

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"seconds": dict(self.seconds), "flops": dict(self.flops)}


def with_overrides(settings: Settings, overrides: list[str]) -> Settings:
    """`settings` with `section.key=value` overrides applied (validated like any settings)."""
    return Settings.model_validate(apply_overrides(settings.model_dump(mode="json"), overrides))


def stage_flops(settings: Settings, result: StageResult) -> dict[str, float]:
    """Model FLOPs of one stage's selection work, from its artifacts (models.flops: 6N + attention per
    trained token, 2N per forward token): proxy training; the oracle: conditional = each fold's fine-tune
    (all its steps x batch x seq) plus one forward pass per measured document for the prior and one per
    fold, one-step = one training step per document (plus a reference forward for the exact slice); group
    rollouts = their training steps and a reference forward each; the cascade = the oracle's forward passes
    per document of the ranking's head it measured; the student: the token model's two ridge solves and one
    add per scored token."""
    ckpt, probes, distilled = result.checkpoint, result.probes, result.influence
    fpt, seq, p = ckpt.flops_per_token, settings.proxy.seq_len, settings.probe
    ref_tokens = p.reference_sequences * seq
    flops = {"proxy_train": fpt * ckpt.train_tokens}
    forwards = 1 + p.conditional_folds if probes.oracle == "conditional" else 2  # the prior and each fold
    oracle = forwards * (fpt / 3) * seq * probes.measured
    if probes.oracle == "conditional":  # every fold's fine-tune runs all its steps, whichever it keeps
        oracle += p.conditional_folds * fpt * p.finetune_steps * settings.proxy.batch_size * seq
    else:
        oracle = fpt * seq * probes.measured + p.exact_fraction * probes.measured * (fpt / 3) * ref_tokens
    rollout_tokens = p.rollout_steps * p.rollout_rows_per_step * seq
    flops["probe"] = oracle + (probes.group_rewards + p.control_batches) * (fpt * rollout_tokens + fpt / 3 * ref_tokens)
    if result.reranked is not None:
        flops["rerank"] = forwards * (fpt / 3) * seq * result.reranked.measured
    if distilled.student == "tokens":
        n = distilled.train_probes
        flops["distill_score"] = 2 * (2 * n * n * settings.proxy.vocab_size + 10 * n ** 3) + 2 * seq * distilled.scored_documents
    else:
        head = 384 * settings.distill.hidden_dim + 2 * settings.distill.hidden_dim
        flops["distill_score"] = 6 * head * distilled.train_probes * settings.distill.epochs + 2 * head * distilled.scored_documents
    return flops


class Clock:
    """Times the stage steps by part, and runs stage 0's pretrain / probe / distil once for every method
    sharing this clock (their rows stay in the run's tables until another stage 0 replaces them)."""

    def __init__(self) -> None:
        self.stage0, self.done = Cost(), {}

    def steps(self, own: Cost, select: Callable[..., Any] | None = None) -> StageSteps:
        return StageSteps(
            pretrain=self._step(own, "proxy_train", partial(pretrain_stage, progress=False)),
            probe=self._step(own, "probe", partial(probe_stage, progress=False)),
            distill=self._step(own, "distill_score", distill_stage),
            select=timed(own, "select", select or partial(select_stage, progress=False)),
            write=write_mixture, rerank=timed(own, "rerank", partial(rerank_stage, progress=False)))

    def _step(self, own: Cost, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def step(settings: Settings, *args):
            stage = next(a if isinstance(a, int) else a.stage for a in args if isinstance(a, int) or hasattr(a, "stage"))
            if stage == 0 and part in self.done:
                return self.done[part]
            started = time.perf_counter()
            result = fn(settings, *args)
            (self.stage0 if stage == 0 else own).add(part, time.perf_counter() - started)
            if stage == 0:
                self.done[part] = result
            return result
        return step


def timed(cost: Cost, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` that adds its wall time to `cost[part]` on every call."""
    def run(*args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        cost.add(part, time.perf_counter() - started)
        return result
    return run


def _facts(results: list[StageResult]) -> list[dict[str, Any]]:
    return [{"proxy_reference_loss": r.checkpoint.reference_loss, "oracle": r.probes.oracle,
             "oracle_measured": r.probes.measured, "arms_pulled": r.probes.arms_pulled,
             "group_rewards": r.probes.group_rewards, "finetune_step": r.probes.finetune_step,
             "probe_fast_spearman": r.probes.exact_agreement,
             "influence_heldout_spearman": r.influence.heldout_spearman,
             **({"rerank_measured": r.reranked.measured, "rerank_agreement": r.reranked.agreement,
                 "rerank_weight": r.reranked.weight}
                if r.reranked is not None and r.reranked.measured else {})} for r in results]


def _cost(settings: Settings, clock: Clock, own: Cost, results: list[StageResult]) -> Cost:
    cost = clock.stage0.plus(own)
    for result in results:
        for part, flops in stage_flops(settings, result).items():
            cost.flops[part] += flops
    return cost


def trajectory(settings: Settings, corpus: Corpus, clock: Clock) -> tuple[list[list[str]], list[dict], Cost]:
    """Every stage model-aware with `settings`; the mixtures, per-stage facts and the cost (stage 0 included)."""
    own = Cost()
    results = model_aware_stages(settings, corpus, clock.steps(own))
    return [r.selection.doc_ids for r in results], _facts(results), _cost(settings, clock, own, results)


def static_trajectory(settings: Settings, corpus: Corpus, clock: Clock) -> tuple[list[list[str]], list[dict], Cost]:
    """Without model-aware stages: stage 0's measurements and influence model select every stage's mixture
    (the same ranking, minus what earlier stages took)."""
    own = Cost()
    (stage0,) = model_aware_stages(settings, corpus, clock.steps(own), stages=range(1))
    started = time.perf_counter()
    run_id = corpus.ingested.run_id
    with db.connect(settings.database, read_only=True) as con:
        order = store.candidates(con, run_id, 0, settings.seed, exclude_previous=False)
        score_of = store.stage_scores(con, run_id, 0)
    scores = np.array([score_of[d] for d in order.doc_ids])
    ranking = np.argsort(-SELECTORS[settings.select.method](settings, order, scores, stage0.probes), kind="stable")
    taken = np.zeros(len(order), dtype=bool)
    mixtures = []
    for _ in range(settings.stages):
        free = ranking[~taken[ranking]]
        picked = greedy_fill(free, order.n_tokens, settings.select.token_budget)
        taken[picked] = True
        mixtures.append([order.doc_ids[i] for i in picked])
    own.add("select", time.perf_counter() - started)
    return mixtures, _facts([stage0]), _cost(settings, clock, own, [stage0])
