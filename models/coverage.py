"""Arm floors: a stage's mixture that serves the target without starving any region of the pool.

A selector that serves one target takes almost nothing from the pool's other regions, and the model then
loses 1-2 nats on them against random data (issue 17's per-domain guard allows 0.5). The usual remedy
keeps a share of every stage for the pool as it is (DoReMi smooths its weights toward uniform; continual
pretraining keeps replay data), but a uniform share also goes to the regions the ranking already covers
well, so it costs the target more than it needs to.

`coverage_fill` gives every arm (cluster) a floor instead: `share` x the budget x the arm's share of the
candidates' tokens, i.e. `share` of what uniform data would give it. The ranking fills the budget less a
reserve; the reserve is what the ranked part leaves the arms short of their floors, found by a fixed point
(a longer ranked prefix only covers more, so the reserve shrinks monotonically); each short arm is then
topped up with its own candidates (as near its floor as whole documents allow). By default they come in
seeded random order, a uniform sample of the arm, since the guard is about the arm's loss as a whole. With
`ranked_top_ups` they come in the ranking's order, the arm's best documents for the target; measured, those
do not stand for the arm and the per-domain guard fails (README, selection benchmark), so uniform is the
default. What the top-ups leave is filled by the ranking again. The budget is never exceeded. O(N log N): one
permutation and one sort.

No library serves this: sklearn's stratified samplers draw fixed counts, not token floors under a budget
shared with a ranking.
"""

from __future__ import annotations

import numpy as np

from models.baselines import greedy_fill

FIXED_POINT_ROUNDS = 16
"""Reserve updates; each only shrinks it, and it settles in a few on real pools."""


def arm_floors(tokens: np.ndarray, arms: np.ndarray, budget: int, share: float) -> np.ndarray:
    """Each arm's floor in tokens: `share` of the budget, split as the candidates' tokens are."""
    pool = np.bincount(arms, weights=tokens, minlength=int(arms.max()) + 1 if len(arms) else 0)
    return share * budget * pool / max(pool.sum(), 1.0)


def _reserve_and_prefix(order: np.ndarray, tokens: np.ndarray, arms: np.ndarray, floors: np.ndarray,
                        budget: int) -> tuple[int, np.ndarray]:
    """How many ranked documents to take, and each arm's shortfall after them (a fixed point)."""
    cumulative = np.cumsum(tokens[order])
    reserve = float(floors.sum())
    for _ in range(FIXED_POINT_ROUNDS):
        n = int(np.searchsorted(cumulative, budget - reserve, side="right"))
        have = np.bincount(arms[order[:n]], weights=tokens[order[:n]], minlength=len(floors))
        short = np.maximum(floors - have, 0.0)
        if short.sum() >= reserve - 0.5:  # settled (to half a token)
            break
        reserve = float(short.sum())
    return n, short


def _nearest_count(tokens: np.ndarray, target: float) -> int:
    """How many of `tokens`, in order, sum closest to `target`: the top-up neither always overshoots its floor
    (the overshoots would add up and squeeze the last arms out of the budget) nor always falls short."""
    cumulative = np.cumsum(tokens)
    under = int(np.searchsorted(cumulative, target, side="right"))  # these sum to at most the target
    if under < len(tokens) and cumulative[under] - target < target - (cumulative[under - 1] if under else 0):
        return under + 1
    return under


def coverage_fill(order: np.ndarray, tokens: np.ndarray, arms: np.ndarray, budget: int, share: float,
                  rng: np.random.Generator, ranked_top_ups: bool = False) -> np.ndarray:
    """Indices in selection order: the ranked head, each short arm's top-up, then the ranking again.

    `order` ranks candidate indices (best first), `tokens` and `arms` are per candidate. `share = 0` is the
    plain greedy fill of `order`. The top-ups are uniform samples of their arms, or with `ranked_top_ups`
    the arms' next documents in `order`.
    """
    order = np.asarray(order, dtype=np.int64)
    tokens = np.asarray(tokens, dtype=np.int64)
    arms = np.asarray(arms, dtype=np.int64)
    if share <= 0 or len(order) == 0:
        return greedy_fill(order, tokens, budget)
    floors = arm_floors(tokens[order], arms[order], budget, share)
    n, short = _reserve_and_prefix(order, tokens, arms, floors, budget)
    head = order[:n]
    taken = np.zeros(len(tokens), dtype=bool)
    taken[head] = True
    used = int(tokens[head].sum())
    within = order if ranked_top_ups else rng.permutation(order)
    grouped = within[np.argsort(arms[within], kind="stable")]  # by arm; ranked or random inside each
    starts = np.searchsorted(arms[grouped], np.arange(len(floors) + 1))
    top_ups = []
    for arm in np.flatnonzero(short > 0):
        members = grouped[starts[arm]:starts[arm + 1]]
        members = members[~taken[members]]
        picked = greedy_fill(members[:_nearest_count(tokens[members], short[arm])], tokens, budget - used)
        used += int(tokens[picked].sum())
        taken[picked] = True
        top_ups.append(picked)
    rest = greedy_fill(order[~taken[order]], tokens, budget - used)
    return np.concatenate([head, *top_ups, rest]).astype(np.int64)
