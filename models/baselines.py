"""Budget-respecting baseline selectors the bandit is compared against.

* `select_random`: uniform random mixture; the floor every selector must beat.
* `select_topk`: MATES-style Gumbel-top-k on influence scores (temperature 0 = plain top-k); the
  quality-only end of the quality/diversity trade-off.

Both fill the budget greedily in their ranking order and skip documents that do not fit, so they never
exceed `budget` and return doc indices in selection order (int64), like `SelectionResult.selected`.
"""

from __future__ import annotations

import numpy as np

from .bandit import gumbel_keys, standardise_scores


def _mask(n: int, available: np.ndarray | None) -> np.ndarray:
    mask = np.ones(n, dtype=bool) if available is None else np.asarray(available, dtype=bool).reshape(-1)
    if len(mask) != n:
        raise ValueError("available must have one entry per doc")
    return mask


def greedy_fill(order: np.ndarray, tokens: np.ndarray, budget: int) -> np.ndarray:
    """Walk `order`, taking each doc that still fits; stop early once nothing left can fit."""
    if len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    tok = tokens[order]
    # suffix minimum of token counts: once the remaining budget is below it, nothing further fits
    suffix_min = np.minimum.accumulate(tok[::-1])[::-1]
    taken: list[int] = []
    total = 0
    for i, (doc, t) in enumerate(zip(order.tolist(), tok.tolist())):
        if budget - total < suffix_min[i]:
            break
        if total + t <= budget:
            total += t
            taken.append(doc)
    return np.asarray(taken, dtype=np.int64)


def select_random(
    tokens: np.ndarray, budget: int, seed: int = 0, available: np.ndarray | None = None
) -> np.ndarray:
    """Uniformly random documents until the token budget is filled."""
    tokens = np.asarray(tokens).astype(np.int64).reshape(-1)
    candidates = np.flatnonzero(_mask(len(tokens), available))
    order = np.random.default_rng(seed).permutation(candidates)
    return greedy_fill(order, tokens, int(budget))


def select_topk(
    scores: np.ndarray,
    tokens: np.ndarray,
    budget: int,
    temperature: float = 0.5,
    seed: int = 0,
    available: np.ndarray | None = None,
) -> np.ndarray:
    """Gumbel-top-k on standardised scores (z over the available docs), then greedy budget fill.

    Standardising first makes `temperature` unit-free: probe scores are ~1e-3 loss differences, which
    divided by T = 0.5 would be swamped by the Gumbel noise and the baseline would degrade to random.
    """
    tokens = np.asarray(tokens).astype(np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(tokens):
        raise ValueError("scores and tokens must have one entry per doc")
    mask = _mask(len(tokens), available)
    candidates = np.flatnonzero(mask)
    z = standardise_scores(scores, mask)[candidates]
    keys = gumbel_keys(z, temperature, np.random.default_rng(seed))
    order = candidates[np.argsort(-keys, kind="stable")]
    return greedy_fill(order, tokens, int(budget))
