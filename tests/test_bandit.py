"""Tests of the Quad-style cluster bandit and the random / top-k baselines (pure numpy, fast)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.bandit import BanditConfig, SelectionResult, cosine_distance_matrix, select_with_bandit
from models.baselines import select_random, select_topk


def _pool(seed: int = 0, k: int = 6, per: int = 200, good_shift: float = 2.0, dim: int = 16):
    """k clusters with orthogonal-ish random centroids; cluster 0 has much higher scores."""
    rng = np.random.default_rng(seed)
    cluster_ids = np.repeat(np.arange(k), per)
    scores = rng.normal(size=k * per) + np.where(cluster_ids == 0, good_shift, 0.0)
    tokens = rng.integers(5, 15, size=k * per)
    centroids = rng.normal(size=(k, dim))
    return cluster_ids, scores, tokens, centroids


def _run(cluster_ids, scores, tokens, centroids, available=None, **kw) -> SelectionResult:
    return select_with_bandit(
        cluster_ids, scores, tokens, centroids, BanditConfig(**kw), available, progress=False
    )


def _check_invariants(res: SelectionResult, tokens: np.ndarray, budget: int) -> None:
    assert len(np.unique(res.selected)) == len(res.selected), "a document was selected twice"
    assert res.tokens_total == int(tokens[res.selected].sum()) <= budget
    assert len(res.selected_round) == len(res.selected)
    assert np.all(np.diff(res.selected_round) >= 0)


def test_budget_never_exceeded_and_no_duplicates():
    cl, sc, tok, cent = _pool()
    for budget in (0, 7, 100, 1_000, 5_000, 10**9):
        res = _run(cl, sc, tok, cent, token_budget=budget)
        _check_invariants(res, tok, budget)
        if res.stop_reason == "budget":
            assert not res.exhausted


def test_budget_filled_tightly_when_pool_is_large():
    cl, sc, tok, cent = _pool()
    res = _run(cl, sc, tok, cent, token_budget=2_000)
    assert res.stop_reason == "budget"
    assert 2_000 - res.tokens_total < tok.min() + 15  # remaining < smallest doc that was still unseen
    assert res.rounds[-1]["tokens_total"] == res.tokens_total


def test_deterministic_for_seed_and_seed_matters():
    cl, sc, tok, cent = _pool()
    a = _run(cl, sc, tok, cent, token_budget=3_000, seed=3)
    b = _run(cl, sc, tok, cent, token_budget=3_000, seed=3)
    c = _run(cl, sc, tok, cent, token_budget=3_000, seed=4)
    np.testing.assert_array_equal(a.selected, b.selected)
    assert a.rounds == b.rounds
    assert not np.array_equal(a.selected, c.selected)


def test_available_mask_honoured():
    cl, sc, tok, cent = _pool()
    available = np.random.default_rng(1).random(len(cl)) < 0.5
    available[cl == 0] = False  # the best cluster is entirely taken already
    res = _run(cl, sc, tok, cent, available=available, token_budget=3_000)
    assert len(res.selected) > 0
    assert available[res.selected].all()
    assert res.n_seen <= available.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quality_and_diversity(seed):
    """Cluster 0 is excellent, 1-3 decent, 4-5 poor; the budget (~250 docs) is below cluster 0's 300."""
    rng = np.random.default_rng(seed)
    cl = np.repeat(np.arange(6), 300)
    sc = rng.normal(size=len(cl)) + np.array([2.0, 0.8, 0.8, 0.8, 0.0, 0.0])[cl]
    tok = rng.integers(5, 15, size=len(cl))
    cent = rng.normal(size=(6, 16))
    res = _run(cl, sc, tok, cent, token_budget=2_500, seed=seed)
    counts = np.bincount(cl[res.selected], minlength=6)
    assert counts[0] == counts.max() and counts[0] / counts.sum() > 0.4, counts  # quality
    assert (counts > 0).sum() >= 3, counts  # diversity: other clusters still get a share
    assert counts[4:].sum() < counts[1:4].sum(), counts  # poor clusters get less than decent ones
    assert res.arm_means[0] == res.arm_means.max()
    rand = select_random(tok, 2_500, seed=seed)
    assert sc[res.selected].mean() > sc[rand].mean() + 0.5


def test_all_rewards_negative_terminates_without_filling():
    """Every arm looks bad: the loop must see everything, stop, and not pad the budget with rejects."""
    cl, sc, tok, cent = _pool(k=4, per=50)
    res = _run(cl, sc, tok, cent, token_budget=10**9, reward_threshold=100.0)
    assert res.exhausted and res.stop_reason == "exhausted"
    assert len(res.selected) == 0 and res.tokens_total == 0
    assert res.n_seen == len(cl)
    assert all(r["reward"] <= 0 for r in res.rounds)


def test_reward_sharing_reaches_near_duplicate_centroid():
    cl, sc, tok, cent = _pool(k=4, per=100)
    cent[1] = cent[0] + 1e-3 * np.random.default_rng(5).normal(size=cent.shape[1])  # near-duplicate of arm 0
    d = cosine_distance_matrix(cent)
    assert d[0, 1] < 0.01 and np.allclose(d, d.T) and np.allclose(np.diag(d), 0)

    shared = _run(cl, sc, tok, cent, token_budget=800, share_distance=0.2)
    alone = _run(cl, sc, tok, cent, token_budget=800, share_distance=0.0)
    # without sharing the weighted count equals the real number of pulls; with sharing arm 1 also
    # accumulates (almost full) weight from every pull of arm 0 and inherits its high mean
    np.testing.assert_allclose(alone.arm_weights, alone.arm_pulls)
    assert shared.arm_weights[1] > shared.arm_pulls[1] + 0.9 * shared.arm_pulls[0]
    assert shared.arm_weights[1] > alone.arm_weights[1]
    far = [j for j in range(4) if d[0, j] >= 0.2 and d[1, j] >= 0.2]
    for j in far:  # arms far from everything pulled only get their own pulls
        assert shared.arm_weights[j] == pytest.approx(shared.arm_pulls[j])


def test_round_log_fields():
    cl, sc, tok, cent = _pool()
    res = _run(cl, sc, tok, cent, token_budget=1_000)
    keys = {
        "round",
        "cluster_id",
        "ucb",
        "n_sampled",
        "reward",
        "n_selected",
        "tokens_selected",
        "tokens_total",
    }
    assert res.rounds and all(keys <= set(r) for r in res.rounds)
    assert sum(r["n_selected"] for r in res.rounds) == len(res.selected)
    assert sum(r["tokens_selected"] for r in res.rounds) == res.tokens_total


def test_bad_inputs_rejected():
    cl, sc, tok, cent = _pool(k=3, per=5)
    with pytest.raises(ValueError):
        _run(cl, sc[:-1], tok, cent, token_budget=10)
    with pytest.raises(ValueError):
        _run(cl, sc, tok, cent[:2], token_budget=10)  # cluster id 2 has no centroid


def test_baselines_respect_budget_and_mask():
    cl, sc, tok, _ = _pool()
    available = np.arange(len(cl)) % 3 != 0
    for sel in (
        select_random(tok, 2_000, seed=1, available=available),
        select_topk(sc, tok, 2_000, temperature=0.5, seed=1, available=available),
        select_topk(sc, tok, 2_000, temperature=0.0, seed=1, available=available),
    ):
        assert len(np.unique(sel)) == len(sel)
        assert tok[sel].sum() <= 2_000
        assert available[sel].all()
    np.testing.assert_array_equal(select_random(tok, 500, seed=2), select_random(tok, 500, seed=2))
    plain = select_topk(sc, np.ones_like(tok), 10, temperature=0.0)
    np.testing.assert_array_equal(np.sort(plain), np.sort(np.argsort(-sc)[:10]))


# ------------------------------------------------------------------------------------- property tests


@st.composite
def _random_problem(draw):
    n = draw(st.integers(0, 60))
    k = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    cluster_ids = rng.integers(0, k, size=n)
    scores = rng.normal(size=n) * draw(st.sampled_from([0.0, 1e-3, 1.0, 100.0]))
    tokens = rng.integers(0, draw(st.integers(1, 50)) + 1, size=n)
    centroids = rng.normal(size=(k, 3))
    if draw(st.booleans()):
        centroids[-1] = centroids[0]  # exact duplicate centroid
    available = rng.random(n) < draw(st.sampled_from([0.3, 1.0]))
    cfg = BanditConfig(
        token_budget=draw(st.integers(0, 400)),
        arms_per_round=draw(st.integers(1, 3)),
        sample_per_arm=draw(st.integers(1, 5)),
        exploit_batch=draw(st.integers(0, 8)),
        reward_threshold=draw(st.sampled_from([-1.0, 0.0, 0.5])),
        temperature=draw(st.sampled_from([0.0, 0.5, 2.0])),
        seed=seed,
    )
    return cluster_ids, scores, tokens, centroids, available, cfg


@settings(max_examples=50, deadline=None)
@given(_random_problem())
def test_property_budget_duplicates_determinism(problem):
    cluster_ids, scores, tokens, centroids, available, cfg = problem
    a = select_with_bandit(cluster_ids, scores, tokens, centroids, cfg, available, progress=False)
    b = select_with_bandit(cluster_ids, scores, tokens, centroids, cfg, available, progress=False)
    _check_invariants(a, tokens, cfg.token_budget)
    assert available[a.selected].all()
    np.testing.assert_array_equal(a.selected, b.selected)
    assert a.stop_reason in {"budget", "exhausted"}
    assert np.isfinite(a.arm_means).all()


@settings(max_examples=50, deadline=None)
@given(_random_problem())
def test_property_baselines(problem):
    _, scores, tokens, _, available, cfg = problem
    for sel in (
        select_random(tokens, cfg.token_budget, cfg.seed, available),
        select_topk(scores, tokens, cfg.token_budget, cfg.temperature, cfg.seed, available),
    ):
        assert len(np.unique(sel)) == len(sel)
        assert tokens[sel].sum() <= cfg.token_budget
        assert available[sel].all()
