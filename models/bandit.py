"""The oracle bandit: it decides where a stage's oracle budget is spent, and learns which arms are good.

An option, not the default (`probe.sampling = "bandit"`): with the cascade on (tasks/rerank.py), a uniform
sample of the pool (one arm: this same code with every document in arm 0) tied it on both benchmark
targets at half the probe stage's time, so by the ablation's rule it left the defaults (README).

Why a bandit: the oracle (a real measurement of what documents do to the reference loss, see
tasks/probe.py) is the expensive part of a stage, and the pool is far larger than what it can measure.
The arms are k-means clusters of the pool; most of them hold nothing the target needs. A bandit spends the
budget where measurements have been good, so the influence model that learns from the measurements
(tasks/distill.py) sees most of the regions the selection will draw from, and the arms' own measured
rewards say which regions to draw from (tasks/select.py).

Algorithm (pure numpy; deterministic for `cfg.seed`; `measure` is the caller's oracle):
  1. Each arm's documents are put in a queue once: a seeded random order (`queue_keys`), so the documents a
     pull measures are an unbiased sample of the arm (they also train the influence model). Building the
     queues is one argsort: O(N log N) in the pool.
  2. Warm-up: every non-empty arm is pulled `warm_pulls` times, in a seeded order, so no arm's reward is
     unknown and the reward scale (below) is set by a sample of the whole pool.
  3. Then each pull goes to the arm with the largest upper confidence bound
        UCB_j = mean_j + ucb_alpha * sqrt(2 ln(N) / n_j)          (N pulls so far, n_j this arm's weight)
     among arms with documents left in their queue (exact ties: the lower arm id).
  4. A pull takes the next `pull_size` documents of the arm's queue (a pointer: no rescans of the arm) and
     calls `measure(arm, documents)`, which returns one oracle value per document and, optionally, a group
     reward for the pull (a rollout on the batch, minus a control). The pull's reward is the mean of the
     documents' values in units of the warm-up values' spread (median / MAD, robust to a few outliers), plus
     the group reward when there is one, in units of the warm-up group rewards' spread (median / MAD over
     the arms): what was measured, never what a model predicts. Both scales are set once the warm-up is
     over, so an arm's reward does not depend on how early in the warm-up it happened to be pulled (a
     running spread over the first two or three rollouts made an early arm's reward +-5 from noise).
  5. Reward sharing (Quad): arm i whose centroid is within cosine distance `share_distance` of the pulled arm
     j is updated with weight 1 - d(i, j) / share_distance (arm j itself with weight 1).
  6. Stop when `budget` documents were measured or every queue is empty.
Cost: O(N log N) for the queues, then O(pulls x k) for the UCB and sharing updates, independent of N.

`arm_scores` turns the trace into one number per arm for the selection: the posterior mean reward, shrunk
toward 0 by `prior_pulls` pseudo-pulls (an arm measured once is not trusted like one measured ten times);
arms never pulled get 0. After the influence model has ranked the pool with them, the same oracle measures
the head of that ranking once more (the cascade, models/cascade.py): the bandit decides where the oracle
learns, the cascade spends it where the budget will be filled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OracleBanditConfig:
    budget: int  # documents the oracle measures in this stage
    pull_size: int = 8
    ucb_alpha: float = 1.0
    warm_pulls: int = 1
    share_distance: float = 0.2
    seed: int = 0


@dataclass
class Measurement:
    """What the oracle returned for one pull: a value per document, and the batch's group reward if measured."""

    values: np.ndarray
    group: float | None = None


@dataclass
class Pull:
    pull: int
    arm: int
    ucb: float  # inf during the warm-up
    documents: np.ndarray  # indices into the pool
    values: np.ndarray
    reward: float
    group: float | None


@dataclass
class OracleTrace:
    """Every pull in order, and each arm's weighted pull count and reward sum after the last one."""

    pulls: list[Pull]
    weight: np.ndarray
    reward_sum: np.ndarray
    stop_reason: str  # "budget" | "exhausted"
    scale: tuple[float, float] = (0.0, 1.0)  # (centre, spread) the document values were put in units of
    group_scale: tuple[float, float] = (0.0, float("inf"))  # the same for the group rewards

    @property
    def measured(self) -> np.ndarray:
        """Indices of every measured document, in pull order."""
        return np.concatenate([p.documents for p in self.pulls]) if self.pulls else np.zeros(0, dtype=np.int64)

    @property
    def values(self) -> np.ndarray:
        return np.concatenate([p.values for p in self.pulls]) if self.pulls else np.zeros(0)


def queue_keys(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n)


def arm_queues(arm_of: np.ndarray, k: int, keys: np.ndarray) -> list[np.ndarray]:
    """Each arm's documents in `keys` order: one argsort of (arm, key) over the pool."""
    order = np.lexsort((keys, arm_of))
    bounds = np.searchsorted(arm_of[order], np.arange(k + 1))
    return [order[bounds[j]:bounds[j + 1]] for j in range(k)]


def share_weights(centroids: np.ndarray, share_distance: float) -> np.ndarray:
    """[k, k]: how much a pull of arm j (column) counts for arm i (row)."""
    unit = np.asarray(centroids, dtype=np.float64)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    distance = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    weights = np.zeros_like(distance)
    if share_distance > 0:
        near = distance < share_distance
        weights[near] = 1.0 - distance[near] / share_distance
    np.fill_diagonal(weights, 1.0)
    return weights


def robust_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 x MAD) of `values`, falling back to the std, then 1, for a degenerate sample."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return 0.0, 1.0
    centre = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - centre)))
    if spread <= 1e-12:
        spread = float(values.std()) or 1.0
    return centre, spread


def group_scale(groups: list[float | None]) -> tuple[float, float]:
    """(centre, spread) of the finite group rewards: median / MAD like the documents' values; a spread of
    inf (the group reward then counts 0) when fewer than two arms had one."""
    finite = np.array([g for g in groups if g is not None and np.isfinite(g)], dtype=np.float64)
    if len(finite) < 2:
        return 0.0, float("inf")
    return robust_scale(finite)


def spend_oracle(arm_of: np.ndarray, centroids: np.ndarray, measure: Callable[[int, np.ndarray], Measurement],
                 cfg: OracleBanditConfig) -> OracleTrace:
    """Spend `cfg.budget` oracle measurements over the arms (see the module docstring)."""
    arm_of = np.asarray(arm_of, dtype=np.int64)
    k = len(centroids)
    if len(arm_of) and (arm_of.min() < 0 or arm_of.max() >= k):
        raise ValueError(f"arm ids must lie in [0, {k}) (one centroid per arm)")
    rng = np.random.default_rng(cfg.seed)
    queues = arm_queues(arm_of, k, queue_keys(len(arm_of), rng))
    head = np.zeros(k, dtype=np.int64)
    sharing = share_weights(centroids, cfg.share_distance)
    weight, reward_sum = np.zeros(k), np.zeros(k)
    pulls: list[Pull] = []
    spent, scale, groups = 0, None, (0.0, float("inf"))
    warm_order = [int(a) for a in rng.permutation(k) if len(queues[a])] * cfg.warm_pulls
    pending_warm: list[tuple[int, np.ndarray, Measurement]] = []

    def left(arm: int) -> int:
        return len(queues[arm]) - int(head[arm])

    def take(arm: int) -> np.ndarray:
        n = min(cfg.pull_size, left(arm), cfg.budget - spent)
        docs = queues[arm][head[arm]:head[arm] + n]
        head[arm] += n
        return docs

    def record(arm: int, ucb: float, docs: np.ndarray, measured: Measurement) -> None:
        centre, spread = scale
        values = np.asarray(measured.values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        reward = (float(finite.mean()) - centre) / spread if len(finite) else 0.0
        if measured.group is not None and np.isfinite(measured.group):
            reward += (measured.group - groups[0]) / groups[1]
        weight[:] += sharing[:, arm]
        reward_sum[:] += sharing[:, arm] * reward
        pulls.append(Pull(len(pulls), arm, ucb, docs, values, reward, measured.group))

    for arm in warm_order:  # measured first, rewarded once the warm-up values set the scale
        if spent >= cfg.budget or left(arm) == 0:
            continue
        docs = take(arm)
        spent += len(docs)
        pending_warm.append((arm, docs, measure(arm, docs)))
    scale = robust_scale(np.concatenate([m.values for _, _, m in pending_warm])) if pending_warm else (0.0, 1.0)
    groups = group_scale([m.group for _, _, m in pending_warm])
    for arm, docs, measured in pending_warm:
        record(arm, float("inf"), docs, measured)

    stop_reason = "budget"
    while spent < cfg.budget:
        live = np.array([left(a) > 0 for a in range(k)])
        if not live.any():
            stop_reason = "exhausted"
            break
        n_total = max(len(pulls), 1)
        mean = np.divide(reward_sum, weight, out=np.zeros(k), where=weight > 0)
        ucb = mean + cfg.ucb_alpha * np.sqrt(2.0 * np.log(n_total + 1.0) / np.maximum(weight, 1e-9))
        ucb[~live] = -np.inf
        arm = int(np.argmax(ucb))
        docs = take(arm)
        spent += len(docs)
        record(arm, float(ucb[arm]), docs, measure(arm, docs))
    return OracleTrace(pulls, weight, reward_sum, stop_reason, scale, groups)


def arm_scores(trace: OracleTrace, prior_pulls: float = 2.0) -> np.ndarray:
    """Each arm's posterior mean reward, shrunk toward 0 by `prior_pulls` pseudo-pulls (0 if never pulled)."""
    return trace.reward_sum / (trace.weight + prior_pulls)
