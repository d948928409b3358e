"""The selection cascade (models/cascade.py, `select.rerank_factor`): the oracle re-ranks the head of the
influence model's ranking, exactly the prefix holding the requested tokens, and nothing outside it moves."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.cascade import pooled_variance, ranking_head, rerank_head, shrunk_values


def test_the_head_is_the_shortest_prefix_holding_the_tokens():
    order, tokens = np.array([3, 0, 2, 1]), np.array([10, 20, 30, 40])  # in order: 40, 10, 30, 20 tokens
    assert ranking_head(order, tokens, 40).tolist() == [3]
    assert ranking_head(order, tokens, 41).tolist() == [3, 0]
    assert ranking_head(order, tokens, 80).tolist() == [3, 0, 2]
    assert ranking_head(order, tokens, 1e9).tolist() == [3, 0, 2, 1]  # fewer tokens than asked: all of it
    assert ranking_head(order, tokens, 0).tolist() == [] and ranking_head(order[:0], tokens, 50).tolist() == []


def test_the_head_is_sorted_by_its_measurements_and_the_tail_keeps_its_place():
    order = np.array([4, 2, 0, 1, 3])
    assert rerank_head(order, [0.1, 0.9, 0.5]).tolist() == [2, 0, 4, 1, 3]
    assert rerank_head(order, [1.0, 1.0]).tolist() == order.tolist()  # ties keep the ranking's order
    assert rerank_head(order, []).tolist() == order.tolist()


def test_bad_measurements_are_refused():
    with pytest.raises(ValueError, match="finite"):
        rerank_head(np.arange(3), [0.1, np.nan])
    with pytest.raises(ValueError, match="4 measured values for a ranking of 3"):
        rerank_head(np.arange(3), np.zeros(4))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.floats(0, 5e4), st.integers(0, 2**31 - 1))
def test_reranking_is_a_permutation_that_moves_only_the_head(n, head_tokens, seed):
    rng = np.random.default_rng(seed)
    order, tokens = rng.permutation(n), rng.integers(1, 500, n)
    head = ranking_head(order, tokens, head_tokens)
    assert head.tolist() == order[:len(head)].tolist()
    if 0 < len(head) < n:  # the shortest prefix: without its last document it holds too few tokens
        assert tokens[head].sum() >= head_tokens > tokens[head[:-1]].sum()
    values = rng.normal(size=len(head))
    reranked = rerank_head(order, values)
    assert sorted(reranked.tolist()) == list(range(n)) and reranked[len(head):].tolist() == order[len(head):].tolist()
    assert np.all(np.diff(values[np.argsort(-values, kind="stable")]) <= 0)
    assert set(reranked[:len(head)].tolist()) == set(head.tolist())


def test_pooled_variance_is_the_heads_per_token_spread_over_each_documents_tokens():
    spread, tokens = np.array([1.0, 3.0, np.nan]), np.array([3, 5, 1])  # pooled: (2 x 1 + 4 x 3) / 6 = 7/3
    np.testing.assert_allclose(pooled_variance(spread, tokens), [7 / 9, 7 / 15, 7 / 3])
    np.testing.assert_allclose(pooled_variance(spread, tokens, shrink_tokens=2), [7 / 3 * 3 / 25, 7 / 3 * 5 / 49,
                                                                                  7 / 3 / 9])
    with pytest.raises(ValueError, match="two predicted tokens"):
        pooled_variance([np.nan], [1])


def test_shrunk_values_keep_precise_measurements_and_pull_noisy_ones_toward_the_students_prediction():
    rng = np.random.default_rng(0)
    n = 4000
    scores = rng.normal(size=n)
    truth = 0.5 * scores + rng.normal(scale=0.5, size=n)  # tau^2 = 0.25 around the regression
    variance = np.where(np.arange(n) % 2 == 0, 0.01, 4.0)  # long documents, then short noisy ones
    measured = truth + rng.normal(size=n) * np.sqrt(variance)
    estimates, weight = shrunk_values(measured, variance, scores)
    precise, noisy = np.arange(n) % 2 == 0, np.arange(n) % 2 == 1
    assert np.abs(estimates[precise] - measured[precise]).mean() < 0.05  # kept (weight 0.25 / 0.26)
    expected = 0.5 * scores[noisy] + (measured[noisy] - 0.5 * scores[noisy]) * 0.25 / 4.25  # tau^2 / (tau^2 + 4)
    assert np.abs(estimates[noisy] - expected).mean() < 0.03  # almost the student's prediction
    assert 0.45 < weight < 0.55  # half the documents near 1, half near 0.06
    # the estimate is closer to the truth than the measurement, and its top holds fewer noisy documents
    assert ((estimates - truth) ** 2).mean() < 0.5 * ((measured - truth) ** 2).mean()
    top = np.argsort(-estimates)[:400]
    assert noisy[top].mean() < noisy[np.argsort(-measured)[:400]].mean()


def test_shrunk_values_edge_cases():
    np.testing.assert_array_equal(shrunk_values([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [0, 1, 2])[0], [1.0, 2.0, 3.0])
    same = shrunk_values([1.0, 2.0, 3.0, 6.0], [0.0] * 4, [0.5] * 4)  # no sampling noise, constant scores
    np.testing.assert_allclose(same[0], [1.0, 2.0, 3.0, 6.0])
    assert same[1] == 1.0
    flat, weight = shrunk_values([1.0, 1.1, 0.9, 1.0, 1.05], [9.0] * 5, [0, 1, 2, 3, 4])  # all noise: tau^2 = 0
    assert weight == 0.0 and np.ptp(flat - np.polyval(np.polyfit(np.arange(5), [1.0, 1.1, 0.9, 1.0, 1.05], 1),
                                                      np.arange(5))) < 1e-12
    with pytest.raises(ValueError, match="non-negative"):
        shrunk_values([1.0, 2.0], [-1.0, 1.0], [0, 1])
    with pytest.raises(ValueError, match="one entry per"):
        shrunk_values([1.0, 2.0], [1.0], [0, 1])


def test_a_head_without_sampling_variance_is_ordered_as_measured():
    """An oracle with no per-token spread (one-step probes), or a head of 2-token documents (one predicted
    token each, so no spread), orders the head as measured in either mode: the variance is only recorded."""
    from core.config import Settings
    from tasks.rerank import MeasuredHead, head_estimates

    settings = Settings()
    measured = np.array([0.3, 0.1, 0.2, 0.5])
    common = ([f"d{i}" for i in range(4)], np.array([1.0, 0.0, 0.5, 2.0]), measured, np.array([2, 2, 2, 2]), "x")
    no_spread = MeasuredHead(*common, spread=np.full(4, np.nan), predicted=np.ones(4, np.int64))
    one_step = MeasuredHead(*common)
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("tasks.rerank").addHandler(handler)
    for head in (no_spread, one_step):
        for estimate in ("measured", "shrunk"):
            settings.select.rerank_estimate = estimate
            values, variance, weight = head_estimates(settings, head)
            np.testing.assert_array_equal(values, measured)
            assert variance is None and weight is None
    logging.getLogger("tasks.rerank").removeHandler(handler)
    assert len(warnings) == 2 and all("ordered as measured" in w for w in warnings)  # once per head, when shrunk
    assert head_estimates(settings, MeasuredHead.nothing("x"))[0].size == 0
