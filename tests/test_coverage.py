"""Arm floors (models/coverage.py, `select.coverage_share`): every arm gets its share of what uniform data
would give it, the ranking gets the rest, and the budget is never exceeded."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.baselines import greedy_fill
from models.coverage import arm_floors, coverage_fill


def _pool(n: int = 4000, k: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens, arms = rng.integers(10, 300, n), rng.integers(0, k, n)
    order = np.argsort(-((arms == 0) * 5.0 + rng.normal(size=n)), kind="stable")  # the ranking wants arm 0 only
    return order, tokens, arms


def test_every_arm_reaches_its_floor_and_the_ranking_keeps_the_rest():
    order, tokens, arms = _pool()
    budget, share = 20_000, 0.35
    plain = greedy_fill(order, tokens, budget)
    assert set(arms[plain]) == {0}  # unguarded, the other seven arms get nothing
    chosen = coverage_fill(order, tokens, arms, budget, share, np.random.default_rng(1))
    have = np.bincount(arms[chosen], weights=tokens[chosen], minlength=8)
    floors = arm_floors(tokens, arms, budget, share)
    assert np.all(have >= floors - tokens.max())  # within one document of the floor
    assert len(set(chosen.tolist())) == len(chosen) and tokens[chosen].sum() <= budget
    assert tokens[chosen].sum() > budget - tokens.max()  # and the budget is spent
    # the reserve is only what the other arms lack (arm 0 is over its floor from the ranking alone): the
    # ranking keeps more than the (1 - share) of the budget that a uniform share would leave it, from its top
    kept = order[: int(np.searchsorted(np.cumsum(tokens[order]), (1 - share) * budget, side="right"))]
    assert set(kept.tolist()) <= set(chosen.tolist()) and have[0] > (1 - share) * budget


def test_no_share_is_the_plain_greedy_fill_and_top_ups_are_seeded():
    order, tokens, arms = _pool(seed=3)
    assert coverage_fill(order, tokens, arms, 9_000, 0.0, np.random.default_rng(0)).tolist() == \
        greedy_fill(order, tokens, 9_000).tolist()
    first, again, other = (coverage_fill(order, tokens, arms, 9_000, 0.3, np.random.default_rng(s)) for s in (5, 5, 6))
    assert first.tolist() == again.tolist() and first.tolist() != other.tolist()


def test_ranked_top_ups_take_each_short_arms_best_documents():
    order, tokens, arms = _pool(seed=2)
    budget, share = 60_000, 0.35
    ranked = [coverage_fill(order, tokens, arms, budget, share, np.random.default_rng(s), ranked_top_ups=True)
              for s in (0, 1)]
    assert ranked[0].tolist() == ranked[1].tolist()  # no randomness: the ranking decides inside the arm
    chosen = ranked[0]
    have = np.bincount(arms[chosen], weights=tokens[chosen], minlength=8)
    floors = arm_floors(tokens, arms, budget, share)
    assert np.all(have >= floors - tokens.max())
    for arm in range(1, 8):  # the short arms: their top-up is the head of their own ranking
        ranking = order[arms[order] == arm]
        head = ranking[: int(np.searchsorted(np.cumsum(tokens[ranking]), floors[arm] - tokens.max()))]
        assert len(head) > 10 and set(head.tolist()) <= set(chosen.tolist())
    uniform = coverage_fill(order, tokens, arms, budget, share, np.random.default_rng(0))
    assert set(uniform.tolist()) != set(chosen.tolist())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 4)), min_size=1, max_size=80),
       st.integers(0, 900), st.floats(0.0, 0.95), st.booleans())
def test_property_never_over_budget_never_twice(docs, budget, share, ranked):
    tokens = np.array([t for t, _ in docs], dtype=np.int64)
    arms = np.array([a for _, a in docs], dtype=np.int64)
    chosen = coverage_fill(np.arange(len(docs))[::-1], tokens, arms, budget, share, np.random.default_rng(0),
                           ranked_top_ups=ranked)
    assert tokens[chosen].sum() <= budget
    assert len(set(chosen.tolist())) == len(chosen)
