"""The signal study's selectors: static document scores (DSIR, CoLoR, combinations), the model-aware probe
trajectory (MATES probes distilled by the token model) and the model-aware rollout-arm trajectory.

Every selector fills `budget` tokens per stage from documents it has not picked before. Static scores use
Gumbel-top-k on z-scores at `temperature` (the pipeline's `select_topk`; DSIR its own resampling, Gumbel
on the log importance weights); model-aware ones train the proxy `stage_steps` steps on their own previous
stage's mixture, as the pipeline does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

from benchmarks.signal_data import Pool
from models.baselines import select_random, select_topk
from models.oracles import ProbeConfig, exact_probes, fast_probes
from models.rollout import RolloutConfig, group_rewards, rollout_rows
from models.token_influence import fit_token_influence, log_frequency_ratio
from models.trainer import TrainConfig, lr_at, train


@dataclass
class Knobs:
    """Sizes of the study (the CLI's --set keys)."""

    stages: int = 4
    budget: int = 65_536
    arms: int = 32
    temperature: float = 0.5
    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    prior_steps: int = 256
    stage_steps: int = 32
    n_probes: int = 96
    fast_multiplier: int = 4
    probe_ref_rows: int = 32
    history_stages: int = 3
    prior_weight: float = 3.0
    rollout_steps: int = 8
    rollout_rows_per_step: int = 8
    rollout_ref_rows: int = 64
    controls: int = 4
    top_arms: int = 8
    color_folds: int = 2
    color_shrink: float = 32.0
    finetune_steps: int = 256

    def train_config(self, seed: int, steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
                           weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, device="cpu", bf16=False,
                           seed=seed, total_steps=self.prior_steps + (self.stages - 1) * self.stage_steps)

    def probe_config(self) -> ProbeConfig:
        return ProbeConfig(lr=self.lr, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0)

    def rollout_config(self, step: int, seed: int) -> RolloutConfig:
        """Rollouts train at the schedule's lr of the next real step (what the next stage will do)."""
        return RolloutConfig(self.rollout_steps, self.rollout_rows_per_step,
                             lr=lr_at(step, self.train_config(seed, 1)))


def stage_seed(seed: int, method: str, stage: int) -> int:
    return seed * 1_000_003 + 7919 * stage + sum(map(ord, method)) * 101


def topk(scores: np.ndarray, pool: Pool, available: np.ndarray, knobs: Knobs, seed: int,
         budget: int | None = None, temperature: float | None = None) -> np.ndarray:
    return select_topk(scores, pool.tokens, budget or knobs.budget,
                       knobs.temperature if temperature is None else temperature, seed=seed, available=available)


def static_stages(pool: Pool, knobs: Knobs, seed: int, method: str, scores: np.ndarray | None,
                  allowed: np.ndarray | None = None, temperature: float | None = None,
                  gumbel_on_raw: bool = False) -> list[list[int]]:
    """Per stage: Gumbel-top-k on `scores` (random if None) over allowed documents not picked before.

    `gumbel_on_raw`: DSIR's resampling, Gumbel noise added to the raw log weights, then plain top-k.
    """
    taken = np.zeros(len(pool.ids), dtype=bool)
    allowed = np.ones(len(pool.ids), dtype=bool) if allowed is None else allowed
    stages = []
    for stage in range(knobs.stages):
        s = stage_seed(seed, method, stage)
        available = allowed & ~taken
        if scores is None:
            picked = select_random(pool.tokens, knobs.budget, seed=s, available=available)
        elif gumbel_on_raw:
            keys = scores + np.random.default_rng(s).gumbel(size=len(scores))
            picked = topk(keys, pool, available, knobs, s, temperature=0.0)
        else:
            picked = topk(scores, pool, available, knobs, s, temperature=temperature)
        taken[picked] = True
        stages.append(picked.tolist())
    return stages


def rank_mean(*scores: np.ndarray) -> np.ndarray:
    """Mean of percentile ranks: combines scores on different scales without a hand-set weight."""
    return np.mean([rankdata(s) / len(s) for s in scores], axis=0)


@dataclass
class Trajectory:
    """A model-aware method's mixtures, per-stage facts, and where its time went."""

    stages: list[list[int]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, part: str, started: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - started


def stratified(pool: Pool, available: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` available documents, round-robin over arms (each arm in random order): every arm is probed."""
    per_arm = [rng.permutation(np.flatnonzero(available & (pool.arms == a))) for a in range(pool.arms.max() + 1)]
    out, depth = [], 0
    while len(out) < n and any(depth < len(p) for p in per_arm):
        out.extend(int(p[depth]) for p in per_arm if depth < len(p))
        depth += 1
    return np.array(out[:n], dtype=np.int64)


def _z(y: np.ndarray) -> np.ndarray:
    return (y - y.mean()) / (y.std() or 1.0)


def probe_scores(model, optimizer_state, pool: Pool, views, available: np.ndarray, probe_ref: torch.Tensor,
                 knobs: Knobs, seed: int, stage: int, history: list, prior: np.ndarray | None,
                 prior_weight: float, eos: int) -> tuple[np.ndarray, dict[str, Any], tuple]:
    """MATES probes at one checkpoint distilled by the token model, as the pipeline's stage does.

    Exact probes on `n_probes` stratified documents (a quarter held out to judge the model), fast
    ("shifted") probes on `fast_multiplier` times as many for training labels, earlier stages' labels
    z-scored and pooled (`history`). Returns scores for every pool document, facts, and this stage's labels.
    """
    rng = np.random.default_rng(stage_seed(seed, "probes", stage))
    cand = stratified(pool, available, knobs.n_probes * knobs.fast_multiplier, rng)
    docs = [torch.tensor(pool.probe_view(int(i), knobs.seq_len, eos)[None], dtype=torch.long) for i in cand]
    cfg = knobs.probe_config()
    started = time.perf_counter()
    n_exact = min(knobs.n_probes, len(cand))
    exact = exact_probes(model, optimizer_state, docs[:n_exact], probe_ref, cfg, progress=False).scores
    exact_s = time.perf_counter() - started
    fast = fast_probes(model, optimizer_state, docs, probe_ref, cfg, progress=False, method="shifted")
    fast_s = time.perf_counter() - started - exact_s
    held = np.zeros(len(cand), dtype=bool)
    held[:n_exact] = rng.random(n_exact) < 0.25
    train_idx = rng.permutation(np.flatnonzero(~held))
    n_val = max(1, round(0.2 * len(train_idx)))
    val_idx, fit_idx = train_idx[:n_val], train_idx[n_val:]
    view = [docs[i][0].tolist() for i in range(len(cand))]
    z = _z(fast[train_idx])
    z_of = dict(zip(train_idx.tolist(), z))
    fit_docs = [view[i] for i in fit_idx] + [d for docs_h, _ in history for d in docs_h]
    fit_y = np.concatenate([[z_of[i] for i in fit_idx]] + [y for _, y in history])
    token_model, fit = fit_token_influence(fit_docs, fit_y, [view[i] for i in val_idx],
                                           np.array([z_of[i] for i in val_idx]), knobs.vocab_size, knobs.seq_len,
                                           prior=prior, prior_weight=prior_weight)
    with torch.no_grad():
        scores = (token_model.bag(torch.from_numpy(views[0]).long(), torch.from_numpy(views[1][:-1]).long())
                  .squeeze(-1) + token_model.bias).double().numpy()
    held_rho = float(spearmanr(scores[cand[held]], exact[held[:n_exact]]).statistic) if held.sum() > 2 else None
    facts = {"exact_seconds_per_probe": exact_s / max(n_exact, 1), "fast_seconds_per_probe": fast_s / len(cand),
             "fast_vs_exact_spearman": float(spearmanr(fast[:n_exact], exact).statistic),
             "heldout_exact_spearman": held_rho, "val_spearman": fit.val_spearman, "alpha": fit.alpha}
    return scores, facts, ([view[i] for i in train_idx], z)


def continue_training(model, optimizer, pool: Pool, docs: list[int], knobs: Knobs, seed: int, stage: int, eos: int):
    """The proxy's stage `stage` (>= 1): `stage_steps` steps on the previous stage's mixture."""
    rows = pool.rows(np.array(docs), knobs.seq_len, eos)
    cfg = knobs.train_config(seed, knobs.stage_steps)
    train(model, optimizer, rows, cfg, step_offset=knobs.prior_steps + (stage - 1) * knobs.stage_steps,
          progress=False)


def arm_batch(pool: Pool, candidates: np.ndarray, cfg: RolloutConfig, knobs: Knobs, rng: np.random.Generator,
              eos: int) -> tuple[torch.Tensor | None, np.ndarray]:
    """Random documents of `candidates` until they pack into a rollout's rows; (rows or None, docs used)."""
    order = rng.permutation(candidates)
    need = cfg.rows * knobs.seq_len
    cum = np.cumsum(pool.tokens[order] + 1)
    used = order[: int(np.searchsorted(cum, need)) + 1]
    rows = rollout_rows([pool.doc(int(i)) for i in used], cfg, knobs.seq_len, eos)
    return rows, used


def rollout_arm_rewards(model, optimizer, pool: Pool, available: np.ndarray, ref: torch.Tensor, knobs: Knobs,
                        seed: int, stage: int, eos: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Reward of every arm at this checkpoint: one rollout on a random batch of it minus the shared control."""
    rng = np.random.default_rng(stage_seed(seed, "rollout", stage))
    step = knobs.prior_steps + stage * knobs.stage_steps
    cfg = knobs.rollout_config(step, seed)
    controls = [b for b, _ in (arm_batch(pool, np.flatnonzero(available), cfg, knobs, rng, eos)
                               for _ in range(knobs.controls)) if b is not None]
    batches, arm_ids = [], []
    for arm in range(knobs.arms):
        rows, _ = arm_batch(pool, np.flatnonzero(available & (pool.arms == arm)), cfg, knobs, rng, eos)
        if rows is not None:
            batches.append(rows)
            arm_ids.append(arm)
    out = group_rewards(model, optimizer, batches, ref, cfg, control_batches=controls)
    rewards = np.full(knobs.arms, np.nan)
    rewards[arm_ids] = out.rewards
    return rewards, {"control_mean": out.control.mean, "control_se": out.control.standard_error,
                     "reward_std": float(np.nanstd(rewards)), "lr": cfg.lr, "rewards": rewards.tolist()}


def select_by_arms(pool: Pool, rewards: np.ndarray, within: np.ndarray | None, available: np.ndarray,
                   knobs: Knobs, seed: int) -> np.ndarray:
    """The budget split over the `top_arms` best arms; inside an arm Gumbel-top-k on `within` (random if
    None). Budget an arm cannot use passes to the next arms in reward order."""
    order = [int(a) for a in np.argsort(-np.nan_to_num(rewards, nan=-np.inf), kind="stable")]
    remaining, picked = knobs.budget, []
    for rank, arm in enumerate(order):
        share = remaining // max(knobs.top_arms - rank, 1)
        mask = available & (pool.arms == arm)
        if not mask.any() or share <= 0:
            continue
        s = seed + rank
        chosen = (select_random(pool.tokens, share, seed=s, available=mask) if within is None
                  else topk(within, pool, mask, knobs, s, budget=share))
        picked.extend(chosen.tolist())
        remaining -= int(pool.tokens[chosen].sum())
        if remaining < pool.tokens[available].min():
            break
    return np.array(picked, dtype=np.int64)


def token_prior(pool: Pool, ref_rows: torch.Tensor, knobs: Knobs, seed: int, eos: int) -> np.ndarray:
    """DSIR-style per-token log-ratio, reference rows against 20k random pool documents' probe views."""
    sample = np.random.default_rng(seed).choice(len(pool.ids), size=min(20_000, len(pool.ids)), replace=False)
    return log_frequency_ratio([r.tolist() for r in ref_rows], [pool.probe_view(int(i), knobs.seq_len, eos).tolist()
                                                                for i in sample], knobs.vocab_size)
