"""The influence study's data: the pipeline's own stages up to stage 0's probes, and the study's splits.

The labels are what `influmix run` distils with `probe.oracle = "one_step"`: the probe stage's fast probes
on `probe.budget` uniformly drawn documents and its exact probes on `probe.exact_fraction` of them, on the
checkpoint the pretrain stage trained, with the tokenizer, embeddings and clusters of the stages before it. The stages
are called as plain functions with their artifacts, as flows/curate.py wires them.

Splits (why the numbers are not optimistic): each repeat holds out `probe.heldout_fraction` of the
exact-probed documents as its test set. A test document is in no fit set and no early-stopping set, of any
student or label source; early stopping uses `distill.val_fraction` of the TRAINING documents.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.influence_study_config import RUN_ID
from core import db, store
from core.artifacts import Checkpoint, Corpus, Probes
from core.config import Settings
from core.seeds import rng


@dataclass(frozen=True)
class ProbeLabels:
    """Stage 0's probed documents by doc_id: exact and fast probe scores (NaN where a document has none) and
    each document's proxy-token count (`documents.n_tokens`), which the length-only baseline predicts from."""

    doc_ids: list[str]
    exact: np.ndarray
    fast: np.ndarray
    n_tokens: np.ndarray

    def _rows(self, ids: list[str]) -> np.ndarray:
        row_of = {d: i for i, d in enumerate(self.doc_ids)}
        return np.array([row_of[d] for d in ids], dtype=np.int64)

    def exact_of(self, ids: list[str]) -> np.ndarray:
        return self.exact[self._rows(ids)]

    def fast_of(self, ids: list[str]) -> np.ndarray:
        return self.fast[self._rows(ids)]

    def tokens_of(self, ids: list[str]) -> np.ndarray:
        return self.n_tokens[self._rows(ids)]

    def exact_ids(self) -> list[str]:
        return [d for d, y in zip(self.doc_ids, self.exact) if np.isfinite(y)]

    def fast_only_ids(self) -> list[str]:
        """Documents with a fast probe and no exact one: the extra labels the fast budget buys."""
        return [d for d, e, f in zip(self.doc_ids, self.exact, self.fast) if np.isfinite(f) and not np.isfinite(e)]


@dataclass(frozen=True)
class StudyData:
    """What the pipeline's stages produced for the study, and how long each took."""

    settings: Settings
    corpus: Corpus
    checkpoint: Checkpoint
    probes: Probes
    labels: ProbeLabels
    seconds: dict[str, float]


def prepare(settings: Settings) -> StudyData:
    """Run ingest, reference, embed, cluster, tokenizer, stage-0 pretrain and probe for the study's run."""
    from tasks.cluster import cluster_documents
    from tasks.embed import embed_documents
    from tasks.ingest import ingest_corpus, load_reference
    from tasks.pretrain import pretrain_stage
    from tasks.probe import probe_stage
    from tasks.tokenizer import train_tokenizer
    from tasks.track import register_run

    seconds: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - started
        return result

    register_run(settings)
    ingested = timed("ingest", ingest_corpus, settings, RUN_ID, progress=False)
    reference = timed("reference", load_reference, settings, RUN_ID)
    embedded = timed("embed", embed_documents, settings, ingested, progress=False)
    clustered = timed("cluster", cluster_documents, settings, embedded)
    tokenized = timed("tokenizer", train_tokenizer, settings, ingested, reference)
    checkpoint = timed("pretrain", pretrain_stage, settings, tokenized, 0, progress=False)
    probes = timed("probe", probe_stage, settings, checkpoint, tokenized, clustered, progress=False)
    corpus = Corpus(ingested, reference, embedded, clustered, tokenized)
    return StudyData(settings, corpus, checkpoint, probes, read_labels(settings, probes), seconds)


def read_labels(settings: Settings, probes: Probes) -> ProbeLabels:
    with db.connect(settings.database, read_only=True) as con:
        rows = store.stage_probes(con, probes.run_id, probes.stage)
        tokens = {m.doc_id: m.n_tokens or 0 for m in store.documents_metadata(con, probes.run_id)}

    def column(values) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    return ProbeLabels([r.doc_id for r in rows], column(r.exact_score for r in rows),
                       column(r.fast_score for r in rows), np.array([tokens[r.doc_id] for r in rows], np.float64))


@dataclass(frozen=True)
class LabelBudget:
    """N exact labels vs the fast labels the same probing compute buys: k = exact / fast seconds per probe,
    measured by the probe stage (or fixed by `fast_per_exact`), capped by the fast probes there are."""

    exact_s_per_probe: float
    fast_s_per_probe: float
    k_measured: float
    k: float
    n_exact_train: int
    n_fast_train: int
    capped: bool

    @property
    def compute_exact_s(self) -> float:
        return self.n_exact_train * self.exact_s_per_probe

    @property
    def compute_fast_s(self) -> float:
        return self.n_fast_train * self.fast_s_per_probe


def label_budget(probes: Probes, n_exact_train: int, n_fast_available: int, fast_per_exact: float | None) -> LabelBudget:
    exact_s, fast_s = probes.seconds_per("exact"), probes.seconds_per("fast")
    if not fast_s or not exact_s:
        raise ValueError("the probe stage measured no fast or no exact one-step probes (probe.oracle = 'one_step', "
                         "probe.exact_fraction > 0)")
    k_measured = exact_s / fast_s
    k = fast_per_exact if fast_per_exact is not None else k_measured
    wanted = round(k * n_exact_train)
    n_fast = min(wanted, n_fast_available)
    return LabelBudget(exact_s, fast_s, k_measured, k, n_exact_train, n_fast, wanted > n_fast)


@dataclass(frozen=True)
class Split:
    """One repeat's document sets. The exact arm fits on `fit` and early-stops on `val`; the fast arm, at
    equal compute, on `fast_fit` / `fast_val` (the exact arm's training documents plus fast-only ones);
    every model is judged on the exact probes of `test`, which lie in none of the other sets."""

    repeat: int
    fit: list[str]
    val: list[str]
    test: list[str]
    fast_fit: list[str]
    fast_val: list[str]


def _carve(ids: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(fit, val) of already shuffled ids: the first `val_fraction` (at least one) stop early."""
    n_val = max(1, round(val_fraction * len(ids)))
    return ids[n_val:], ids[:n_val]


def n_train_of(settings: Settings, n_exact: int) -> int:
    return n_exact - max(1, round(settings.probe.heldout_fraction * n_exact))


def make_splits(settings: Settings, labels: ProbeLabels, repeats: int, n_fast_train: int) -> list[Split]:
    """`repeats` seeded splits of the exact-probed documents (core.seeds purpose `benchmark`, one per repeat)."""
    exact, fast_only = labels.exact_ids(), labels.fast_only_ids()
    n_train, val_fraction = n_train_of(settings, len(exact)), settings.distill.val_fraction
    if n_train < 3:
        raise ValueError(f"{len(exact)} exact probes leave too few to fit; raise `pipeline.probe.budget`")
    splits = []
    for repeat in range(repeats):
        draw = rng(settings.seed, "benchmark", method=repeat)
        order = [exact[i] for i in draw.permutation(len(exact))]
        train, test = order[:n_train], order[n_train:]
        fit, val = _carve(train, val_fraction)
        extra = [fast_only[i] for i in draw.permutation(len(fast_only))[:max(0, n_fast_train - n_train)]]
        pool = (train + extra)[:n_fast_train]
        fast_fit, fast_val = _carve([pool[i] for i in draw.permutation(len(pool))], val_fraction)
        splits.append(Split(repeat, fit, val, test, fast_fit, fast_val))
    return splits


def write_splits(path: Path, labels: ProbeLabels, splits: list[Split]) -> Path:
    """The splits as indices into the probed documents: which documents every number was computed on."""
    row_of = {d: i for i, d in enumerate(labels.doc_ids)}
    parts = ("fit", "val", "test", "fast_fit", "fast_val")
    payload = {"documents": labels.doc_ids,
               "repeats": [{part: [row_of[d] for d in getattr(s, part)] for part in parts} for s in splits]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, separators=(",", ":")))
    return path
