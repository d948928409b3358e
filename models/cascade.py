"""The selection cascade: a cheap model ranks the whole pool, the oracle re-ranks the head of that ranking.

Retrieve-then-rerank, as in search: the influence model (models/influence.py) is fast enough to score every
candidate but only approximates the oracle (its held-out Spearman is 0.6-0.8 across the pool, and the head
of a ranking is where an approximation's errors pile up: the documents it over-rates most sit there). The
oracle is exact but costs two forward passes per document. So the oracle measures only the head, a few
times the token budget (`select.rerank_factor`), and the budget is then filled from the head in measured
order. With a factor of 1 the cascade changes only the order of the selection; as the factor grows it tends
to a top-k on the oracle itself (CoLoR-Filter's selection).

The winner's curse: sorting measured values and taking the top favours the values that noise pushed up, and
a per-token mean over few tokens is noisy. The wider the head, the more such documents it holds: at 32x the
budget the speech mixture's share of records under 100 characters was 21% against 11.5% at 16x (3 seeds),
for no better loss. `shrunk_values` is the textbook answer (Fay and Herriot 1979; Efron and Morris 1975):
each measured value is a noisy reading of the document's true value with a known sampling variance (the
per-token spread over its token count), the prior is a regression of the measured values on the influence
model's score, and the estimate is the precision-weighted mix of the two, with the prior's variance fitted
by moments (Prasad and Rao 1990). A long document keeps its measurement; a short one moves toward what the
student predicted for it, not toward zero, so short documents that look like the target stay (a fixed shrink
toward zero, `probe.shrink_tokens`, pushed out the speech target's short transcripts and lost 0.04). Written
here because the estimator is a dozen lines of numpy and the libraries that have it (R's `sae`) are not
Python.

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


def pooled_variance(spread: np.ndarray, tokens: np.ndarray, shrink_tokens: float = 0.0) -> np.ndarray:
    """Sampling variance of each measured value: the head's pooled per-token spread over its token count.

    A measured value is sum(drop) / (tokens + shrink) over a document's predicted tokens; with the per-token
    spread s^2 its variance is s^2 tokens / (tokens + shrink)^2. The spread is pooled over the head (degrees
    of freedom tokens - 1) because one short document's own spread is itself a noisy estimate: three tokens
    that happen to agree would make it look exact."""
    spread, tokens = np.asarray(spread, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    dof = tokens - 1
    usable = np.isfinite(spread) & (dof > 0)
    if not usable.any():
        raise ValueError("no measured document has two predicted tokens: the spread cannot be pooled")
    pooled = float((dof[usable] * spread[usable]).sum() / dof[usable].sum())
    return pooled * tokens / (tokens + shrink_tokens) ** 2


def shrunk_values(measured: np.ndarray, variance: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, float]:
    """Fay-Herriot estimates of the head's true values, and the mean weight kept on the measurements.

    Model: measured_i = theta_i + e_i, e_i ~ (0, variance_i); theta_i = a + b score_i + u_i, u_i ~ (0, tau^2).
    The estimate is prior_i + w_i (measured_i - prior_i) with w_i = tau^2 / (tau^2 + variance_i); a, b by
    least squares and tau^2 by Prasad-Rao moments (the residuals' spread beyond the sampling noise, floored
    at 0, where every estimate is the regression's). Fewer than 4 documents: the measurements as they are."""
    measured = np.asarray(measured, dtype=np.float64)
    variance, scores = np.asarray(variance, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if not (len(measured) == len(variance) == len(scores)):
        raise ValueError("measured, variance and scores must have one entry per measured document")
    if not (np.isfinite(variance).all() and (variance >= 0).all()):
        raise ValueError("every sampling variance must be finite and non-negative")
    if len(measured) < 4:
        return measured.copy(), 1.0
    design = np.column_stack([np.ones_like(scores), scores]) if np.ptp(scores) > 0 else np.ones((len(scores), 1))
    coef, *_ = np.linalg.lstsq(design, measured, rcond=None)
    prior = design @ coef
    residual = measured - prior
    leverage = np.einsum("ij,ji->i", design, np.linalg.pinv(design))
    tau2 = max(0.0, float((residual ** 2).sum() - (variance * (1 - leverage)).sum()) / (len(measured) - design.shape[1]))
    denominator = tau2 + variance
    weight = np.divide(tau2, denominator, out=np.ones_like(variance), where=denominator > 0)
    return prior + weight * residual, float(weight.mean())
