"""Budget-respecting selection by score: what every selector ends in.

* `select_random`: uniform random mixture; the floor every selector must beat.
* `select_topk`: MATES-style Gumbel-top-k on scores (temperature 0 = plain top-k).

Both fill the budget greedily in their ranking order and skip documents that do not fit, so they never
exceed `budget`, and return document indices in selection order (int64). O(N log N): one sort.
"""

from __future__ import annotations

import numpy as np


def standardise_scores(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """z-score with mean/std taken over `mask` only; a constant pool gets std 1 (all z = 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    z = np.zeros_like(scores)
    if mask.any():
        ref = scores[mask]
        if not np.isfinite(ref).all():
            raise ValueError("scores of available documents must be finite")
        std = float(ref.std())
        z[mask] = (ref - ref.mean()) / (std if std > 1e-12 else 1.0)
    return z


def gumbel_keys(z: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Sort keys for Gumbel-top-k: z / T + Gumbel(0, 1); T = 0 returns z itself (plain top-k).

    Taking the top-k keys samples k items without replacement with probability proportional to
    exp(z / T): a soft top-k that keeps some diversity inside a good pool.
    """
    if temperature <= 0:
        return np.asarray(z, dtype=np.float64)
    return np.asarray(z, dtype=np.float64) / temperature + rng.gumbel(size=len(z))


def _mask(n: int, available: np.ndarray | None) -> np.ndarray:
    mask = np.ones(n, dtype=bool) if available is None else np.asarray(available, dtype=bool).reshape(-1)
    if len(mask) != n:
        raise ValueError("available must have one entry per doc")
    return mask


def greedy_fill(order: np.ndarray, tokens: np.ndarray, budget: int) -> np.ndarray:
    """Walk `order`, taking each doc that still fits; stop early once nothing left can fit.

    Vectorised: the prefix that fits whole is taken in one cumulative sum, and only the tail past the first
    document that overflows is walked one by one (it stops as soon as the budget is below every remaining
    document), so a million-document pool costs one sort and one pass.
    """
    order = np.asarray(order, dtype=np.int64)
    if len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    tok = tokens[order]
    fits = int(np.searchsorted(np.cumsum(tok), budget, side="right"))
    taken = [order[:fits]]
    total = int(tok[:fits].sum())
    rest, rest_tok = order[fits:], tok[fits:]
    if len(rest):
        # suffix minimum of token counts: once the remaining budget is below it, nothing further fits
        suffix_min = np.minimum.accumulate(rest_tok[::-1])[::-1]
        extra: list[int] = []
        for i, (doc, t) in enumerate(zip(rest.tolist(), rest_tok.tolist(), strict=True)):
            if budget - total < suffix_min[i]:
                break
            if total + t <= budget:
                total += t
                extra.append(doc)
        taken.append(np.asarray(extra, dtype=np.int64))
    return np.concatenate(taken).astype(np.int64)


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
