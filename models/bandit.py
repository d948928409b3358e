"""Quad-style cluster bandit: pick a mixture under a token budget that balances quality and diversity.

Why a bandit: plain top-k on influence scores piles the whole budget into the one region of embedding
space the influence model likes best (DSIR took 99.7% news here). Treating each k-means cluster as an arm
keeps exploring other clusters while exploiting the good ones, and a cluster is only "opened" after a
small sample of it proved good.

Algorithm (pure numpy, deterministic for `cfg.seed`):
  1. z = influence scores standardised over the available documents (so `reward_threshold` and
     `temperature` mean the same thing whatever the probe's units).
  2. Arm j keeps a weighted pull count n_j and reward sum s_j; mean_j = s_j / n_j (0 while n_j = 0).
  3. Each round, over arms that still have unseen available documents, compute
        CS_j = mean_j + alpha * sqrt(2 ln(N + 1) / (n_j + 1))      (N = number of real pulls so far)
     and pull the `arms_per_round` best (exact ties broken by the seeded rng). Arms are processed in
     that order, one after another, so the budget seen by the second reflects the first's picks.
  4. A pull first drops the arm's unseen documents that can no longer fit in the remaining budget (the
     selected token count only grows, so they never will), then draws `sample_per_arm` unseen documents
     uniformly: reward = mean(z of the sample) - reward_threshold. Sampled documents become "seen".
     If reward > 0 the sample is selected plus up to `exploit_batch` further unseen documents of the arm
     chosen by Gumbel-top-k on z / temperature (MATES-style soft top-k; temperature 0 = plain top-k).
     If reward <= 0 nothing of that arm is selected this round.
  5. Reward sharing: arm j is updated with weight 1 and every arm i whose centroid cosine distance
     d(i, j) < share_distance with weight 1 - d / share_distance (s_i += w * reward, n_i += w), so a
     near-duplicate cluster inherits its twin's evidence without being sampled.
  6. A document is selected only if it fits (tokens_total + tokens <= token_budget), so the budget is
     never exceeded; a document that does not fit is marked seen. No document is selected twice.
  7. Stop when the remaining budget is smaller than the smallest unseen document ("budget"), when every
     available document has been seen ("exhausted": the budget is NOT topped up with documents the
     bandit rejected; the caller sees `exhausted=True`), or after `max_rounds`. Every pull sees at least
     one document or empties its arm, so the loop terminates even if all rewards stay negative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class BanditConfig:
    """Knobs of `select_with_bandit`; mirrors `core.config.SelectSettings`."""

    token_budget: int
    ucb_alpha: float = 1.0
    arms_per_round: int = 2
    sample_per_arm: int = 4
    exploit_batch: int = 16
    reward_threshold: float = 0.0
    share_distance: float = 0.2
    temperature: float = 0.5
    max_rounds: int = 100_000
    seed: int = 0


@dataclass
class SelectionResult:
    """The chosen mixture plus enough of the bandit's trace to explain why."""

    selected: np.ndarray  # doc indices, in selection order
    selected_round: np.ndarray  # round in which each selected doc was taken
    rounds: list[dict[str, Any]]  # one entry per pull, in pull order (`pull` counts them)
    tokens_total: int
    arm_means: np.ndarray  # final mean reward per arm (0 for never-updated arms)
    exhausted: bool  # every available doc was seen before the budget was filled
    arm_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # weighted n_j (incl. shared)
    arm_pulls: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # real pulls
    n_seen: int = 0  # docs looked at (sampled, exploited or skipped): the scoring cost
    stop_reason: str = ""  # "budget" | "exhausted" | "max_rounds"


# ------------------------------------------------------------------------------------------- helpers


def standardise_scores(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """z-score with mean/std taken over `mask` only; a constant pool gets std 1 (all z = 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    z = np.zeros_like(scores)
    if mask.any():
        ref = scores[mask]
        if not np.isfinite(ref).all():
            raise ValueError("scores of available documents must be finite")
        std = float(ref.std())
        z[mask] = (ref - ref.mean()) / (std if std > 1e-12 else 1.0)
    return z


def gumbel_keys(z: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Sort keys for Gumbel-top-k: z / T + Gumbel(0, 1); T = 0 returns z itself (plain top-k).

    Taking the top-k keys samples k items without replacement with probability proportional to
    exp(z / T): a soft top-k that keeps some diversity inside a good pool.
    """
    if temperature <= 0:
        return np.asarray(z, dtype=np.float64)
    return np.asarray(z, dtype=np.float64) / temperature + rng.gumbel(size=len(z))


def cosine_distance_matrix(centroids: np.ndarray) -> np.ndarray:
    """[k, k] cosine distances 1 - cos, in [0, 2]; a zero centroid is at distance 1 from everything."""
    unit = _unit_rows(centroids)
    d = 1.0 - unit @ unit.T
    np.fill_diagonal(d, 0.0)
    return np.clip(d, 0.0, 2.0)


def _unit_rows(centroids: np.ndarray) -> np.ndarray:
    c = np.asarray(centroids, dtype=np.float64)
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return np.divide(c, norms, out=np.zeros_like(c), where=norms > 0)


def _validate(
    cluster_ids: np.ndarray, scores: np.ndarray, tokens: np.ndarray, k: int, available: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cluster_ids = np.asarray(cluster_ids).astype(np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    tokens = np.asarray(tokens).astype(np.int64).reshape(-1)
    n = len(cluster_ids)
    if len(scores) != n or len(tokens) != n:
        raise ValueError(
            f"cluster_ids, scores, tokens must have one entry per doc ({n}, {len(scores)}, {len(tokens)})"
        )
    if n and (cluster_ids.min() < 0 or cluster_ids.max() >= k):
        raise ValueError(f"cluster ids must lie in [0, {k}) (one centroid per cluster)")
    if n and tokens.min() < 0:
        raise ValueError("token counts must be >= 0")
    avail = np.ones(n, dtype=bool) if available is None else np.asarray(available, dtype=bool).reshape(-1)
    if len(avail) != n:
        raise ValueError("available must have one entry per doc")
    return cluster_ids, scores, tokens, avail


def _group_by_arm(cluster_ids: np.ndarray, avail: np.ndarray, k: int) -> list[np.ndarray]:
    """Available doc indices of each arm (one stable argsort instead of k boolean scans)."""
    idx = np.flatnonzero(avail)
    idx = idx[np.argsort(cluster_ids[idx], kind="stable")]
    bounds = np.searchsorted(cluster_ids[idx], np.arange(k + 1))
    return [idx[bounds[j] : bounds[j + 1]] for j in range(k)]


class _MinUnseenTokens:
    """Smallest token count among unseen docs, amortised O(n) overall (pointer over a sorted order)."""

    def __init__(self, tokens: np.ndarray, candidates: np.ndarray) -> None:
        self.tokens = tokens
        self.order = candidates[np.argsort(tokens[candidates], kind="stable")]
        self.pos = 0

    def __call__(self, seen: np.ndarray) -> int | None:
        while self.pos < len(self.order) and seen[self.order[self.pos]]:
            self.pos += 1
        return None if self.pos == len(self.order) else int(self.tokens[self.order[self.pos]])


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional for this module
        return None
    return tqdm(total=total, desc="bandit selection", unit="tok", leave=False, disable=None)


# -------------------------------------------------------------------------------------------- bandit


def select_with_bandit(
    cluster_ids: np.ndarray,
    scores: np.ndarray,
    tokens: np.ndarray,
    centroids: np.ndarray,
    cfg: BanditConfig,
    available: np.ndarray | None = None,
    progress: bool = True,
) -> SelectionResult:
    """Run the cluster bandit (see module docstring) and return the selected docs in order."""
    centroids = np.asarray(centroids, dtype=np.float64)
    k = len(centroids)
    cluster_ids, scores, tokens, avail = _validate(cluster_ids, scores, tokens, k, available)
    rng = np.random.default_rng(cfg.seed)
    z = standardise_scores(scores, avail)
    unit = _unit_rows(centroids)

    seen = ~avail  # unavailable docs count as already seen: never sampled, never selected
    # unseen available docs per arm; only a pulled arm's docs ever become seen, so only it is refreshed
    members = _group_by_arm(cluster_ids, avail, k)
    n_unseen = np.array([len(m) for m in members], dtype=np.int64)
    min_unseen = _MinUnseenTokens(tokens, np.flatnonzero(avail))
    weight = np.zeros(k)
    reward_sum = np.zeros(k)
    pulls = np.zeros(k, dtype=np.int64)
    selected: list[int] = []
    selected_round: list[int] = []
    rounds: list[dict[str, Any]] = []
    tokens_total = 0
    budget = int(cfg.token_budget)
    bar = _progress_bar(budget, progress)
    stop_reason = "max_rounds"

    for rnd in range(cfg.max_rounds):
        smallest = min_unseen(seen)
        if smallest is None:
            stop_reason = "exhausted" if tokens_total < budget else "budget"
            break
        if budget - tokens_total < smallest:
            stop_reason = "budget"
            break
        live = np.flatnonzero(n_unseen > 0)
        mean = np.divide(reward_sum, weight, out=np.zeros(k), where=weight > 0)
        ucb = mean + cfg.ucb_alpha * np.sqrt(2.0 * np.log(pulls.sum() + 1.0) / (weight + 1.0))
        order = live[np.lexsort((rng.random(len(live)), -ucb[live]))][: cfg.arms_per_round]

        for arm in order:
            arm = int(arm)
            pool = members[arm]
            remaining = budget - tokens_total
            too_big = pool[tokens[pool] > remaining]
            seen[too_big] = True
            pool = pool[tokens[pool] <= remaining]
            members[arm], n_unseen[arm] = pool, len(pool)
            if len(pool) == 0:
                continue
            sample = rng.choice(pool, size=min(cfg.sample_per_arm, len(pool)), replace=False)
            seen[sample] = True
            reward = float(z[sample].mean()) - cfg.reward_threshold
            picks = np.empty(0, dtype=np.int64)
            if reward > 0:
                rest = pool[~seen[pool]]
                if cfg.exploit_batch > 0 and len(rest):
                    keys = gumbel_keys(z[rest], cfg.temperature, rng)
                    top = rest[np.argsort(-keys, kind="stable")[: cfg.exploit_batch]]
                    seen[top] = True
                    picks = np.concatenate([sample, top])
                else:
                    picks = sample
            n_sel, tok_sel = 0, 0
            for doc in picks:
                t = int(tokens[doc])
                if tokens_total + t <= budget:
                    tokens_total += t
                    tok_sel += t
                    n_sel += 1
                    selected.append(int(doc))
                    selected_round.append(rnd)
            members[arm] = pool[~seen[pool]]
            n_unseen[arm] = len(members[arm])

            # reward sharing with near-duplicate clusters (weight 1 for the pulled arm itself)
            pulls[arm] += 1
            w = np.zeros(k)
            if cfg.share_distance > 0:
                d = np.clip(1.0 - unit @ unit[arm], 0.0, 2.0)
                near = d < cfg.share_distance
                w[near] = 1.0 - d[near] / cfg.share_distance
            w[arm] = 1.0
            weight += w
            reward_sum += w * reward
            rounds.append(
                {
                    "pull": len(rounds),
                    "round": rnd,
                    "cluster_id": arm,
                    "ucb": float(ucb[arm]),
                    "n_sampled": len(sample),
                    "reward": reward,
                    "n_selected": n_sel,
                    "tokens_selected": tok_sel,
                    "tokens_total": tokens_total,
                }
            )
            if bar is not None and tok_sel:
                bar.update(tok_sel)
    if bar is not None:
        bar.close()

    return SelectionResult(
        selected=np.asarray(selected, dtype=np.int64),
        selected_round=np.asarray(selected_round, dtype=np.int64),
        rounds=rounds,
        tokens_total=tokens_total,
        arm_means=np.divide(reward_sum, weight, out=np.zeros(k), where=weight > 0),
        exhausted=stop_reason == "exhausted",
        arm_weights=weight,
        arm_pulls=pulls,
        n_seen=int(seen[avail].sum()),
        stop_reason=stop_reason,
    )
