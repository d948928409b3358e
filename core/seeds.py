"""One way to derive every random choice of a run from its `seed`: a SeedSequence per purpose and stage.

Why: seeds used to be derived seven ways (`seed + 7919 * stage`, `seed + stage`, string keys fed to
DuckDB's `hash()`), so `seed=1, stage=0` equalled `seed=0, stage=1` in one stage, and the sampling order
changed with DuckDB's version. Here the run's seed is the SeedSequence's entropy and (purpose, stage) its
spawn key, so streams for different purposes, stages or seeds are independent by construction, and
document order comes from xxhash64 (a fixed, specified function) rather than from the database.

Purposes are a closed list: a typo is an error, and adding one never changes another purpose's stream.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xxhash

PURPOSES = (
    "cluster",            # k-means initialisation
    "proxy",              # the proxy LM's initial weights and its batch order
    "warmup_sample",      # stage 0's uniform training sample of the pool
    "tokenizer_sample",   # the documents the BPE tokenizer (and the reference prior's pool side) learn from
    "candidates",         # the cluster-stratified order in which a stage probes and selects documents
    "probe_split",        # which measured documents are held out to judge the influence model
    "distill",            # the influence model's early-stopping split and initial weights
    "select",             # the selector's own draws (bandit sampling, Gumbel keys)
    "rollout",            # the documents a rollout probe trains on, and its control batch
    "reference_split",    # the halves of the visible reference (cross-fitting)
    "evaluator",          # benchmarks: the evaluator LM's weights and batch order
    "benchmark",          # benchmarks: their own draws (random baselines, DSIR resampling)
    "oracle",             # the oracle bandit's arm queues and warm-up order
    "coverage",           # the uniform top-ups that give every arm its floor (select.coverage_share)
)
"""Append new purposes at the end: a purpose's stream is keyed by its position in this tuple."""


def seed_sequence(seed: int, purpose: str, stage: int | None = None, method: int = 0) -> np.random.SeedSequence:
    """The SeedSequence of (`purpose`, `stage`) under the run's `seed`; `method` separates benchmark methods."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown seed purpose {purpose!r} (known: {', '.join(PURPOSES)})")
    if stage is not None and stage < 0:
        raise ValueError(f"stage must be >= 0, got {stage}")
    key = (PURPOSES.index(purpose), 0 if stage is None else int(stage) + 1, int(method))
    return np.random.SeedSequence(entropy=int(seed), spawn_key=key)


def rng(seed: int, purpose: str, stage: int | None = None, method: int = 0) -> np.random.Generator:
    """A numpy Generator for one purpose and stage."""
    return np.random.default_rng(seed_sequence(seed, purpose, stage, method))


def int_seed(seed: int, purpose: str, stage: int | None = None, method: int = 0) -> int:
    """A 31-bit integer seed for libraries that take one (torch.manual_seed, scikit-learn's random_state)."""
    return int(seed_sequence(seed, purpose, stage, method).generate_state(1)[0] & 0x7FFFFFFF)


def document_keys(doc_ids: Iterable[str], seed: int, purpose: str, stage: int | None = None) -> np.ndarray:
    """A pseudo-random uint64 sort key per document id: seeded, stable across machines and versions, and
    independent of which other documents are in the pool (adding one does not reorder the rest)."""
    key_seed = int(seed_sequence(seed, purpose, stage).generate_state(1, np.uint64)[0])
    return np.fromiter((xxhash.xxh64_intdigest(d.encode("utf-8", "surrogatepass"), seed=key_seed) for d in doc_ids), dtype=np.uint64)
