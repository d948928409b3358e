"""The signal study's selectors and mixture facts on a synthetic pool (no models, milliseconds).

What must hold: every selector stays within the budget, never picks a document twice across stages, keeps
to its allowed documents; the arm selector spends the budget on the best-rewarded arms first; the quality
flags and shares count what they say.
"""

from __future__ import annotations

import numpy as np

from benchmarks.signal_data import Pool, mixture_facts, quality_flags, stopword_share
from benchmarks.signal_methods import Knobs, rank_mean, select_by_arms, static_stages, stratified


def synthetic_pool(n: int = 400, arms: int = 4) -> Pool:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = [f"wikivital-fr:{i}" if i % 50 == 0 else f"doc:{i}" for i in range(n)]
    texts = ["the cat and the dog " * 10 if i % 2 else "x" * 50 for i in range(n)]
    topics = np.array(["spam" if i % 7 == 0 else "ham" for i in range(n)])
    return Pool(ids, texts, np.array(["wiki", "news", "email", "tweets"] * (n // 4)), topics,
                rng.integers(1, 100, size=offsets[-1]).astype(np.int32), offsets,
                quality_flags(texts, ids, topics), np.arange(n, dtype=np.int32) % arms)


def test_static_stages_respect_budget_allowed_and_never_repeat():
    pool = synthetic_pool()
    knobs = Knobs(stages=3, budget=2000)
    allowed = pool.domains != "email"
    for scores, raw in ((None, False), (np.arange(len(pool.ids), dtype=float), False),
                        (np.arange(len(pool.ids), dtype=float), True)):
        stages = static_stages(pool, knobs, 0, "m", scores, allowed=allowed, gumbel_on_raw=raw)
        flat = [d for s in stages for d in s]
        assert len(flat) == len(set(flat))
        assert all(pool.tokens[s].sum() <= knobs.budget for s in stages)
        assert all(pool.tokens[s].sum() > knobs.budget - 200 for s in stages)
        assert allowed[flat].all()
    top = static_stages(pool, knobs, 0, "m", np.arange(len(pool.ids), dtype=float), temperature=0.0)
    assert set(range(390, 400)) <= set(top[0]) and np.mean(top[0]) > np.mean(top[1])  # plain top-k: best first


def test_select_by_arms_fills_the_best_arms_first():
    pool = synthetic_pool()
    knobs = Knobs(budget=3000, top_arms=2)
    rewards = np.array([0.1, 0.5, np.nan, 0.3])
    picked = select_by_arms(pool, rewards, None, np.ones(len(pool.ids), dtype=bool), knobs, seed=0)
    assert len(set(picked.tolist())) == len(picked)
    assert pool.tokens[picked].sum() <= knobs.budget
    assert set(pool.arms[picked].tolist()) <= {1, 3}
    by_arm = {a: pool.tokens[picked][pool.arms[picked] == a].sum() for a in (1, 3)}
    assert abs(by_arm[1] - by_arm[3]) < 400  # split evenly between the two best
    small = Knobs(budget=12_000, top_arms=1)  # more than arm 1 holds: the rest spills to the next arm
    spilled = select_by_arms(pool, rewards, None, np.ones(len(pool.ids), dtype=bool), small, seed=0)
    assert (pool.arms[spilled] == 1).sum() == (pool.arms == 1).sum()
    assert (pool.arms[spilled] == 3).any()


def test_stratified_covers_every_arm_and_rank_mean():
    pool = synthetic_pool()
    picked = stratified(pool, pool.domains != "wiki", 8, np.random.default_rng(0))
    assert sorted(pool.arms[picked].tolist()) == [1, 1, 1, 2, 2, 2, 3, 3]  # round-robin over the arms
    assert (pool.domains[picked] != "wiki").all()
    np.testing.assert_allclose(rank_mean(np.array([1.0, 2, 3]), np.array([30.0, 20, 10])), [2 / 3] * 3)


def test_quality_flags_and_mixture_facts():
    assert stopword_share("the cat and a dog") == (5, 0.6)
    pool = synthetic_pool()
    facts = mixture_facts(pool, [[0, 1], [2, 3]])
    assert facts["documents"] == 4 and facts["tokens"] == int(pool.tokens[:4].sum())
    assert facts["short_records"] == 0.5 and facts["non_english_records"] == 0.25
    assert abs(sum(facts["domain_token_shares"].values()) - 1) < 1e-12
    assert pool.flags["low_stopword"].sum() == 0 and pool.flags["spam"][0]
