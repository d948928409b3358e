"""The selection cascade: a cheap model ranks the whole pool, the oracle re-ranks the head of that ranking.

Retrieve-then-rerank, as in search: the influence model (models/influence.py) is fast enough to score every
candidate but only approximates the oracle (its held-out Spearman is 0.6-0.8 across the pool, and the head
of a ranking is where an approximation's errors pile up: the documents it over-rates most sit there). The
oracle is exact but costs two forward passes per document. So the oracle measures only the head, a few
times the token budget (`select.rerank_factor`), and the budget is then filled from the head in measured
order. With a factor of 1 the cascade changes only the order of the selection; as the factor grows it tends
to a top-k on the oracle itself (CoLoR-Filter's selection).

Pure numpy: the measurement itself is the stage's oracle (models/stage_oracles.py), run by tasks/rerank.py.
"""

from __future__ import annotations

import numpy as np


def ranking_head(order: np.ndarray, tokens: np.ndarray, head_tokens: float) -> np.ndarray:
    """The shortest prefix of `order` (candidate indices, best first) holding at least `head_tokens` tokens
    (all of `order` when the candidates hold fewer; none for a non-positive `head_tokens`)."""
    order = np.asarray(order, dtype=np.int64)
    if head_tokens <= 0 or len(order) == 0:
        return order[:0]
    cumulative = np.cumsum(np.asarray(tokens, dtype=np.int64)[order])
    return order[:int(np.searchsorted(cumulative, head_tokens, side="left")) + 1]


def rerank_head(order: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """`order` with its first `len(measured)` entries sorted by `measured` (best first; ties keep the
    ranking's order), the rest as it was. O(N) plus the head's sort."""
    order = np.asarray(order, dtype=np.int64)
    measured = np.asarray(measured, dtype=np.float64)
    if len(measured) > len(order):
        raise ValueError(f"{len(measured)} measured values for a ranking of {len(order)} candidates")
    if not np.isfinite(measured).all():
        raise ValueError("every measured value of the head must be finite")
    head = order[:len(measured)][np.argsort(-measured, kind="stable")]
    return np.concatenate([head, order[len(measured):]])
