"""The oracle bandit (models/bandit.py) and the budget-filling selectors (models/baselines.py), on synthetic arms.

The oracle here is a function of the documents with a known answer (some arms are better than others), so
the tests can check what the bandit spends, that every pull really calls the oracle and is recorded, and
that it learns where the good arms are.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.bandit import Measurement, OracleBanditConfig, arm_queues, arm_scores, spend_oracle
from models.baselines import greedy_fill, select_random, select_topk


def _arms(n: int = 600, k: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    arm_of = rng.integers(0, k, size=n)
    centroids = np.eye(k, 8)  # orthogonal: no reward sharing unless a test adds a twin
    quality = np.linspace(-1.0, 1.0, k)[arm_of] + rng.normal(0, 0.3, n)  # arm k-1 is the best
    return arm_of, centroids, quality


class Oracle:
    """A measuring oracle with a call log: what the bandit spent, exactly."""

    def __init__(self, quality: np.ndarray, group: dict[int, float] | None = None) -> None:
        self.quality, self.group, self.calls = quality, group or {}, []

    def __call__(self, arm: int, documents: np.ndarray) -> Measurement:
        self.calls.append((arm, documents.copy()))
        return Measurement(self.quality[documents], self.group.get(arm))


def test_spends_exactly_its_budget_without_measuring_a_document_twice():
    arm_of, centroids, quality = _arms()
    oracle = Oracle(quality)
    trace = spend_oracle(arm_of, centroids, oracle, OracleBanditConfig(budget=100, pull_size=8, seed=1))
    measured = trace.measured
    assert len(measured) == 100 == sum(len(d) for _, d in oracle.calls) and len(set(measured.tolist())) == 100
    assert trace.stop_reason == "budget"
    for pull, (arm, documents) in zip(trace.pulls, oracle.calls, strict=True):  # every pull was a real measurement
        assert pull.arm == arm and np.array_equal(pull.documents, documents)
        assert (arm_of[documents] == arm).all() and np.array_equal(pull.values, quality[documents])


def test_warm_up_pulls_every_arm_once_then_favours_the_best_arm():
    arm_of, centroids, quality = _arms()
    trace = spend_oracle(arm_of, centroids, Oracle(quality), OracleBanditConfig(budget=400, pull_size=8, ucb_alpha=0.3))
    warm = trace.pulls[:6]
    assert sorted(p.arm for p in warm) == list(range(6)) and all(p.ucb == np.inf for p in warm)
    later = [p.arm for p in trace.pulls[6:]]
    assert later.count(5) > later.count(0) and later.count(5) >= max(later.count(a) for a in range(5))
    scores = arm_scores(trace)
    assert np.argmax(scores) == 5 and np.argmin(scores) == 0


def test_same_seed_same_pulls_other_seed_other_documents():
    arm_of, centroids, quality = _arms()
    runs = [spend_oracle(arm_of, centroids, Oracle(quality), OracleBanditConfig(budget=120, seed=s)) for s in (3, 3, 4)]
    assert np.array_equal(runs[0].measured, runs[1].measured)
    assert not np.array_equal(runs[0].measured, runs[2].measured)


def test_an_exhausted_pool_stops_the_bandit():
    arm_of, centroids, quality = _arms(n=40)
    trace = spend_oracle(arm_of, centroids, Oracle(quality), OracleBanditConfig(budget=1000, pull_size=8))
    assert trace.stop_reason == "exhausted" and sorted(trace.measured.tolist()) == list(range(40))


def test_group_rewards_count_and_rewards_are_shared_with_a_twin_arm():
    arm_of, centroids, quality = _arms()
    centroids[4] = centroids[5] + 1e-3  # arm 4 is arm 5's near duplicate
    flat = np.zeros_like(quality)
    plain = spend_oracle(arm_of, centroids, Oracle(flat), OracleBanditConfig(budget=48, warm_pulls=1, share_distance=0))
    grouped = spend_oracle(arm_of, centroids, Oracle(flat, {2: 5.0, 1: -5.0}),
                           OracleBanditConfig(budget=48, warm_pulls=1, share_distance=0))
    assert np.allclose(arm_scores(plain), 0)
    assert np.argmax(arm_scores(grouped)) == 2 and np.argmin(arm_scores(grouped)) == 1
    shared = spend_oracle(arm_of, centroids, Oracle(quality), OracleBanditConfig(budget=48, share_distance=0.2))
    own = [sum(p.arm == a for p in shared.pulls) for a in range(6)]
    assert shared.weight[4] > own[4] and shared.weight[5] > own[5]  # the twins count each other's pulls
    assert np.allclose(shared.weight[:4], own[:4])  # the others only their own


def test_an_arms_group_reward_does_not_depend_on_when_the_warm_up_pulled_it():
    """Group rewards are scaled by the spread over every arm's rollout, set after the warm-up: the same
    rollouts give each arm the same group part of its reward whatever order the warm-up took (a running
    spread over the first few rollouts gave an early arm +-5 from noise)."""
    arm_of, centroids, _ = _arms()
    rollouts = {0: -3e-7, 1: -4e-7, 2: -2e-7, 3: 1e-7, 4: -7e-7, 5: 2e-7}
    first_rewards = []
    for seed in (0, 1, 2):
        trace = spend_oracle(arm_of, centroids, Oracle(np.zeros(len(arm_of)), rollouts),
                             OracleBanditConfig(budget=48, seed=seed, share_distance=0))
        assert [p.arm for p in trace.pulls[:6]] != list(range(6)) or seed == 0  # the warm-up order changes
        first_rewards.append({p.arm: p.reward for p in trace.pulls[:6]})
    assert all(np.allclose([r[a] for a in range(6)], [first_rewards[0][a] for a in range(6)]) for r in first_rewards)
    centre, spread = trace.group_scale
    assert centre == pytest.approx(np.median(list(rollouts.values()))) and 0 < spread < 1e-6
    assert max(abs(r) for r in first_rewards[0].values()) < 3  # none of them blown up by a tiny early spread


def test_arm_queues_hold_each_arm_once_in_key_order():
    arm_of = np.array([2, 0, 2, 1, 0, 2])
    queues = arm_queues(arm_of, 3, np.array([5, 4, 3, 2, 1, 0]))
    assert [q.tolist() for q in queues] == [[4, 1], [3], [5, 2, 0]]


def test_bad_arm_ids_are_refused():
    with pytest.raises(ValueError, match="arm ids"):
        spend_oracle(np.array([0, 3]), np.eye(2), Oracle(np.zeros(2)), OracleBanditConfig(budget=2))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 80), st.integers(1, 5), st.integers(1, 120), st.integers(1, 9), st.integers(0, 2**16))
def test_property_budget_no_repeats_determinism(n, k, budget, pull_size, seed):
    rng = np.random.default_rng(seed)
    arm_of, centroids, quality = rng.integers(0, k, n), rng.normal(size=(k, 3)), rng.normal(size=n)
    cfg = OracleBanditConfig(budget=budget, pull_size=pull_size, seed=seed)
    a, b = (spend_oracle(arm_of, centroids, Oracle(quality), cfg) for _ in range(2))
    assert len(a.measured) == min(budget, n) == len(set(a.measured.tolist()))
    assert np.array_equal(a.measured, b.measured) and np.isfinite(arm_scores(a)).all()


# -------------------------------------------------------------------------------------- budget filling


def test_baselines_respect_budget_and_mask():
    rng = np.random.default_rng(0)
    scores, tokens = rng.normal(size=300), rng.integers(1, 60, size=300)
    available = np.arange(300) % 3 != 0
    for sel in (select_random(tokens, 2_000, seed=1, available=available),
                select_topk(scores, tokens, 2_000, temperature=0.5, seed=1, available=available),
                select_topk(scores, tokens, 2_000, temperature=0.0, seed=1, available=available)):
        assert len(np.unique(sel)) == len(sel) and tokens[sel].sum() <= 2_000 and available[sel].all()
    np.testing.assert_array_equal(select_random(tokens, 500, seed=2), select_random(tokens, 500, seed=2))
    plain = select_topk(scores, np.ones_like(tokens), 10, temperature=0.0)
    np.testing.assert_array_equal(np.sort(plain), np.sort(np.argsort(-scores)[:10]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=60), st.integers(0, 400))
def test_property_greedy_fill_is_the_one_by_one_walk(tokens, budget):
    tokens = np.array(tokens, dtype=np.int64)
    order = np.arange(len(tokens))[::-1]
    expected, total = [], 0
    for doc in order:  # the reference: walk the ranking, take whatever still fits
        if total + tokens[doc] <= budget:
            expected.append(int(doc))
            total += int(tokens[doc])
    assert greedy_fill(order, tokens, budget).tolist() == expected
