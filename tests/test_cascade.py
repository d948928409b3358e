"""The selection cascade (models/cascade.py, `select.rerank_factor`): the oracle re-ranks the head of the
influence model's ranking, exactly the prefix holding the requested tokens, and nothing outside it moves."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.cascade import ranking_head, rerank_head


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
