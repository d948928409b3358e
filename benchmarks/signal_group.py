"""Parts b and c of the signal study: do one-step probes predict group rollouts, and why do stages drift?

At each checkpoint of the probe trajectory (stage s trained on the probe method's stage s-1 mixture), for
every arm: two disjoint random batches b1 and b2 of its documents and b1 again in another order, each
rolled out `rollout_steps` steps; a one-step "group probe" (all of b1's rows in one step); and a shared
control of `group_controls` random pool batches. Rewards = effect - control mean, on half B of the visible
reference (CoLoR's fold A fine-tunes on half A: cross-fit).

Predictors of an arm's reward, each judged by Spearman over arms against the HELD-OUT batch b2's reward
(and against b1's, the batch they were computed on): per-document one-step probes on up to
`group_probe_docs` of b1's documents, token-weighted, from the checkpoint's Adam state and from altered
states (models/probe_variants.py: fresh, mean_v, zero_m, stage 0's v), gradient dot/cosine, TracIn (the
lr-weighted gradient dot summed over the checkpoints so far), the exact probe on a few documents, the
group one-step probe, and document scores (the stage's distilled token model, CoLoR fold A, DSIR) averaged
over b2's documents or over the whole arm. Test-retest: b1 vs b2, b1 vs b1 reordered, and b1 against a
per-arm control instead of the shared one.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.signal_methods import Knobs, arm_batch, stage_seed
from models.oracles import exact_probes, reference_loss
from models.probe_variants import probe_variants, state_variant
from models.rollout import RolloutConfig, rollout_effect
from models.trainer import lr_at

GROUP_CONTROLS = 8
PROBE_DOCS = 16
EXACT_DOCS = 4


def _rho(a, b) -> float | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic) if ok.sum() > 3 else None


def _weighted(values: np.ndarray, weights: np.ndarray) -> float:
    return float(np.sum(values * weights) / np.sum(weights))


def _rollouts(model, optimizer, pool, knobs: Knobs, cfg: RolloutConfig, ref, loss_before, rng, eos):
    """Per arm: effects of b1, b2, b1 reordered and the one-step group probe; the docs of b1 and b2."""
    arms: dict[str, Any] = {k: np.full(knobs.arms, np.nan) for k in ("b1", "b2", "b1_reordered", "group_one_step")}
    docs_b1, docs_b2 = {}, {}
    one_step = RolloutConfig(1, cfg.rows, lr=cfg.lr)
    for arm in range(knobs.arms):
        members = np.flatnonzero(pool.arms == arm)
        rows1, used1 = arm_batch(pool, members, cfg, knobs, rng, eos)
        rows2, used2 = arm_batch(pool, np.setdiff1d(members, used1), cfg, knobs, rng, eos)
        if rows1 is None or rows2 is None:
            continue
        rows1r, _ = arm_batch(pool, used1, cfg, knobs, rng, eos)
        docs_b1[arm], docs_b2[arm] = used1, used2
        for key, rows, c in (("b1", rows1, cfg), ("b2", rows2, cfg), ("b1_reordered", rows1r, cfg),
                             ("group_one_step", rows1, one_step)):
            if rows is not None:
                arms[key][arm] = rollout_effect(model, optimizer, rows, ref, c, loss_before).per_token
    return arms, docs_b1, docs_b2


def group_stage(run, stage: int) -> dict[str, Any]:
    """Part b and c figures at the probe trajectory's stage-`stage` checkpoint."""
    knobs, pool, eos = run.knobs, run.pool, run.eos
    started = time.perf_counter()
    model, optimizer = run.checkpoint("probes", stage)
    state = copy.deepcopy(optimizer.state_dict())
    ref = run.group_ref
    step = knobs.prior_steps + stage * knobs.stage_steps
    cfg = knobs.rollout_config(step, run.seed)
    rng = np.random.default_rng(stage_seed(run.seed, "group", stage))
    loss_before = reference_loss(model, ref)
    everything = np.arange(len(pool.ids))
    controls = np.array([rollout_effect(model, optimizer, arm_batch(pool, everything, cfg, knobs, rng, eos)[0], ref,
                                        cfg, loss_before).per_token for _ in range(GROUP_CONTROLS)])
    effects, docs_b1, docs_b2 = _rollouts(model, optimizer, pool, knobs, cfg, ref, loss_before, rng, eos)
    rollout_s = time.perf_counter() - started
    rewards = {k: v - controls.mean() for k, v in effects.items()}

    # per-document probes on up to PROBE_DOCS of each arm's b1 documents
    arms = sorted(docs_b1)
    probed = {a: rng.permutation(docs_b1[a])[:PROBE_DOCS] for a in arms}
    flat = np.concatenate([probed[a] for a in arms])
    tensors = [torch.tensor(pool.probe_view(int(i), knobs.seq_len, eos)[None], dtype=torch.long) for i in flat]
    weights = np.array([t.shape[1] for t in tensors], dtype=np.float64)
    stage0_state = run.checkpoint("probes", 0)[1].state_dict()
    states = {"checkpoint": state, "fresh": None, "mean_v": state_variant(state, "mean_v"),
              "zero_m": state_variant(state, "zero_m"), "stage0_v": state_variant(state, "other_v", other=stage0_state)}
    pcfg = knobs.probe_config()
    started = time.perf_counter()
    per_doc = probe_variants(model, states, tensors, ref, pcfg)
    tracin = np.zeros(len(flat))
    for c in range(stage + 1):  # TracIn: lr-weighted gradient dot summed over the checkpoints so far
        model_c = run.checkpoint("probes", c)[0] if c != stage else model
        lr_c = lr_at(knobs.prior_steps + c * knobs.stage_steps, knobs.train_config(run.seed, 1))
        tracin += lr_c * probe_variants(model_c, {}, tensors, ref, pcfg)["gradient_dot"]
    per_doc["tracin"] = tracin
    exact_idx = np.concatenate([np.arange(len(probed[a]))[:EXACT_DOCS] + sum(len(probed[b]) for b in arms[:k])
                                for k, a in enumerate(arms)])
    exact = exact_probes(model, state, [tensors[i] for i in exact_idx], ref, pcfg, progress=False).scores
    probe_s = time.perf_counter() - started

    predictors: dict[str, np.ndarray] = {}
    bounds = np.cumsum([0] + [len(probed[a]) for a in arms])
    for name, values in per_doc.items():
        predictors[f"probe_{name}"] = np.full(knobs.arms, np.nan)
        for k, a in enumerate(arms):
            sl = slice(bounds[k], bounds[k + 1])
            predictors[f"probe_{name}"][a] = _weighted(values[sl], weights[sl])
    predictors["probe_exact"] = np.full(knobs.arms, np.nan)
    for k, a in enumerate(arms):
        mine = (exact_idx >= bounds[k]) & (exact_idx < bounds[k + 1])
        predictors["probe_exact"][a] = _weighted(exact[mine], weights[exact_idx[mine]])
    predictors["group_one_step_b1"] = rewards["group_one_step"]
    predictors["rollout_b1"] = rewards["b1"]
    view_len = np.minimum(pool.tokens, knobs.seq_len).astype(np.float64) + 1
    for name, scores in run.document_scores(stage).items():
        for where, docs in (("b2", docs_b2), ("arm", None)):
            key = f"{name}_{where}_mean"
            predictors[key] = np.full(knobs.arms, np.nan)
            for a in arms:
                d = docs[a] if docs is not None else np.flatnonzero(pool.arms == a)
                predictors[key][a] = _weighted(scores[d], view_len[d])
    reference_share = np.array([np.isin(pool.domains[pool.arms == a], ["wiki", "news"]).mean()
                                for a in range(knobs.arms)])
    per_arm_control = rewards["b1"] + controls.mean() - controls[rng.integers(len(controls), size=knobs.arms)]
    per_arm_control2 = rewards["b1"] + controls.mean() - controls[rng.integers(len(controls), size=knobs.arms)]
    return {
        "stage": stage, "lr": cfg.lr, "loss_before": loss_before, "arms_measured": len(arms),
        "seconds": {"rollouts": rollout_s, "probes": probe_s},
        "control": {"effects": controls.tolist(), "mean": float(controls.mean()), "std": float(controls.std(ddof=1))},
        "reward_std_b1": float(np.nanstd(rewards["b1"])),
        "test_retest": {"b1_vs_b2": _rho(rewards["b1"], rewards["b2"]),
                        "b1_vs_b1_reordered": _rho(rewards["b1"], rewards["b1_reordered"]),
                        "per_arm_controls": _rho(per_arm_control, per_arm_control2),
                        "group_one_step_vs_b1": _rho(rewards["group_one_step"], rewards["b1"])},
        "spearman_vs_heldout_b2": {k: _rho(v, rewards["b2"]) for k, v in predictors.items()},
        "spearman_vs_b1": {k: _rho(v, rewards["b1"]) for k, v in predictors.items()},
        "spearman_with_reference_share": {**{k: _rho(v, reference_share) for k, v in predictors.items()},
                                          "reward_b2": _rho(rewards["b2"], reference_share)},
        "rewards": {k: v.tolist() for k, v in rewards.items()},
        "predictors": {k: v.tolist() for k, v in predictors.items()},
        "arm_reference_share": reference_share.tolist(),
    }
