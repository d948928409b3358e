"""The selectors the benchmark compares, all drawing the same token budget per stage from one influmix pool.

One influmix run holds the pool (ingested, deduplicated and embedded once); every seed re-clusters it and
retrains its tokenizer in that run, then the methods select in turn:

* `random`, `dsir`, `domain_oracle` (the target's own domains, uniformly): from the pool as it is.
* model-aware methods (`MODEL_AWARE`): the pipeline's own stages with the product defaults plus the
  method's settings overrides (`VARIANTS`), through the flow's own stage loop (benchmarks/
  selection_trajectories.py): `influmix` is exactly `influmix run`'s defaults; `topk_influence` is MATES
  (one-step probes, uniformly sampled, top-k on the distilled scores); the other `influmix_*` rows are the
  ablation, each the product minus one part (or, for `influmix_bandit` and `influmix_tokens`, plus one).
* `bandit_static` (= the ablation "without model-aware stages"; the name is older than the defaults):
  stage 0's measurements and influence model used for every stage, without the cascade.

`influmix` runs last so that the run's tables end up holding the product's mixture, as `influmix show`
would show it. A method never selects a document twice across stages.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.selection_trajectories import (
    Clock,
    Cost,
    static_trajectory,
    timed,
    trajectory,
    with_overrides,
)
from core import db, store
from core.artifacts import Corpus, Embedded, Filtered, Ingested, ReferenceSet
from core.config import Settings
from core.seeds import rng
from models.baselines import greedy_fill, select_topk
from tasks.cluster import cluster_documents
from tasks.tokenizer import train_tokenizer

BANDIT = ['probe.sampling="bandit"', "probe.group_rollouts=true", 'select.method="bandit"']
"""The oracle-driven bandit with its group rewards: the defaults until the cascade made it tie (README)."""
UNIFORM = ['probe.sampling="uniform"', "probe.group_rollouts=false", 'select.method="topk"']
"""Uniform probes, no rollouts, top-k on the influence model: today's defaults, spelled out."""
VARIANTS: dict[str, list[str]] = {
    "topk_influence": ['probe.oracle="one_step"', *UNIFORM],
    "influmix_no_bandit": UNIFORM,
    "influmix_bandit": BANDIT,
    "influmix_no_group": [*BANDIT[:1], "probe.group_rollouts=false", *BANDIT[2:]],
    "influmix_no_student": ['select.method="arms"'],
    "influmix_no_tokens": ['distill.features="embedding"'],
    "influmix_tokens": ['distill.features="tokens"'],
    "influmix_no_history": ["distill.history_stages=0"],
    "influmix": [],
}
"""Each model-aware method's settings on top of the benchmark's `[pipeline]` (product defaults but sizes).
The sampling variants spell out all three settings, not their difference from today's defaults, so they mean
the same since the defaults changed: `influmix_no_bandit` is what the defaults became (its cached mixtures
and results keep their name); `influmix_no_student` and the rest are the defaults of when they ran."""
METHODS = ("random", "dsir", "topk_influence", "bandit_static", "domain_oracle", "influmix_no_bandit",
           "influmix_bandit", "influmix_no_group", "influmix_no_student", "influmix_no_tokens", "influmix_tokens",
           "influmix_no_history",
           "influmix")
MODEL_AWARE = (*VARIANTS, "bandit_static")
STATIC = ("random", "dsir", "domain_oracle")
EMBED_FLOPS_PER_TOKEN = 2 * 10.6e6
"""Forward FLOPs per token of all-MiniLM-L6-v2: 2 x its 10.6M matmul parameters (6 layers of 384 wide)."""


@dataclass
class DsirWeights:
    """DSIR's log importance weight per pool document and whether it passes DSIR's length filter."""

    log_weight: dict[str, float]
    keep: dict[str, bool]
    seconds: float
    implementation: str


def dsir_weights(pool: list[tuple[str, str]], target: list[str], cache_dir: Path, ngrams: int, num_buckets: int,
                 min_example_length: int) -> DsirWeights:
    """Fit DSIR (Xie et al. 2023) with the reference implementation, the `data-selection` package.

    Hashed unigram+bigram counts (`num_buckets` buckets) for the pool (raw) and the visible reference
    (target); log importance weight = features . (log p_target - log p_raw); documents under
    `min_example_length` words are filtered as in the package. Only its resampling is replaced (see
    `static_selections`): Gumbel-top-k as there, but filling a token budget instead of a document count.
    """
    try:
        from importlib.metadata import version

        from data_selection import HashedNgramDSIR
    except ImportError as exc:  # pragma: no cover - installed with influmix[bench] / [dev]
        raise ImportError("the dsir baseline needs the `data-selection` package: pip install -e '.[bench]'") from exc
    started = time.perf_counter()
    texts = {"pool": [text for _, text in pool], "target": target}

    def load(name: str):
        return ({"text": text} for text in texts[name])

    dsir = HashedNgramDSIR(["pool"], ["target"], cache_dir=str(cache_dir), raw_load_dataset_fn=load,
                           target_load_dataset_fn=load, num_proc=1, ngrams=ngrams, num_buckets=num_buckets,
                           min_example_length=min_example_length)
    dsir.fit_importance_estimator(num_tokens_to_fit="all")
    dsir.compute_importance_weights()
    log_weight = np.load(cache_dir / "log_importance_weights" / "0.npy")
    keep = dsir.perexample_metadata_filter(np.load(cache_dir / "perexample_metadata" / "0.npy"))
    ids = [doc_id for doc_id, _ in pool]
    return DsirWeights(dict(zip(ids, log_weight.tolist())), dict(zip(ids, np.asarray(keep).tolist())),
                       time.perf_counter() - started, f"data-selection {version('data-selection')} HashedNgramDSIR")


def method_rng(settings: Settings, method: str, stage: int) -> np.random.Generator:
    return rng(settings.seed, "benchmark", stage, method=METHODS.index(method))


def static_selections(settings: Settings, corpus: Corpus, methods: list[str], dsir: DsirWeights | None,
                      reference_domains: set[str]) -> dict[str, list[list[str]]]:
    """Per stage and method, from the pool's stage-ordered candidates minus the method's earlier picks."""
    run_id = corpus.ingested.run_id
    with db.connect(settings.database, read_only=True) as con:
        domain_of = {r.doc_id: r.domain for r in store.documents_metadata(con, run_id)}
        orders = [store.candidates(con, run_id, s, settings.seed, exclude_previous=False)
                  for s in range(settings.stages)]
    budget = settings.select.token_budget
    mixtures: dict[str, list[list[str]]] = {m: [] for m in methods}
    for stage, order in enumerate(orders):
        for method in methods:
            taken = {d for mixture in mixtures[method] for d in mixture}
            keep = [i for i, d in enumerate(order.doc_ids) if d not in taken and (
                method != "domain_oracle" or domain_of[d] in reference_domains) and (
                method != "dsir" or dsir.keep[d])]
            ids, tokens = [order.doc_ids[i] for i in keep], order.n_tokens[keep]
            draws = method_rng(settings, method, stage)
            if method == "dsir":  # DSIR's resampling: Gumbel-top-k on the log importance weights
                keys = np.array([dsir.log_weight[d] for d in ids]) + draws.gumbel(size=len(ids))
                picked = select_topk(keys, tokens, budget, temperature=0.0)
            else:  # random over the pool, or over the target's own domains
                picked = greedy_fill(draws.permutation(len(ids)), tokens, budget)
            mixtures[method].append([ids[i] for i in np.asarray(picked, dtype=np.int64)])
    return mixtures


def select_for_seed(settings: Settings, methods: list[str], dsir: DsirWeights | None, reference_domains: set[str],
                    pool_cost: Cost, ingested: Ingested, reference: ReferenceSet, embedded: Embedded,
                    filtered: Filtered) -> dict[str, Any]:
    """Every method's per-stage mixtures for `settings.seed`, with what their selection cost.

    Costs: `pool_cost` (embedding the pool once) and clustering go to every model-aware method (their arms);
    the tokenizer to nobody (every method's training needs it).
    """
    clustering, untracked = Cost(), Cost()
    clustered = timed(clustering, "cluster", cluster_documents)(settings, embedded)
    tokenized = timed(untracked, "tokenizer", train_tokenizer)(settings, filtered, reference)
    corpus = Corpus(ingested, reference, embedded, clustered, tokenized, filtered)
    out: dict[str, Any] = {}
    static = [m for m in methods if m in STATIC]
    started = time.perf_counter()
    chosen = static_selections(settings, corpus, static, dsir, reference_domains) if static else {}
    per_method = (time.perf_counter() - started) / max(len(static), 1)
    for method, mixtures in chosen.items():
        cost = Cost()
        cost.add("select", per_method)
        if method == "dsir":
            cost.add("dsir_weights", dsir.seconds)
        out[method] = {"stages": mixtures, "cost": cost, "facts": []}
    for group in stage0_groups(settings, [m for m in MODEL_AWARE if m in methods]):
        clock = Clock()  # one stage 0 per group, run back to back: another group's stage 0 replaces its rows
        for method in group:
            variant = with_overrides(settings, VARIANTS.get(method, []))
            run = static_trajectory if method == "bandit_static" else trajectory
            mixtures, facts, cost = run(variant, corpus, clock)
            out[method] = {"stages": mixtures, "facts": facts, "cost": pool_cost.plus(clustering, cost)}
    return {m: {**out[m], "cost": out[m]["cost"].as_dict()} for m in methods}


def stage0_groups(settings: Settings, methods: list[str]) -> list[list[str]]:
    """Model-aware methods grouped by what their stage 0 depends on (the proxy, oracle and student settings),
    the product's own group last and `influmix` last in it, so the run's tables end on the product's run."""
    def key(method: str) -> str:
        return with_overrides(settings, VARIANTS.get(method, [])).model_dump_json(include={"proxy", "probe", "distill"})

    groups: dict[str, list[str]] = {}
    for method in sorted(methods, key=lambda m: m == "influmix"):
        groups.setdefault(key(method), []).append(method)
    product = key("influmix")
    return [g for k, g in groups.items() if k != product] + [groups[product]] if product in groups else list(groups.values())


SHORT_CHARS = 100
"""A record under this many characters counts as short in `mixture_quality`."""


def mixture_quality(texts: list[str]) -> dict[str, float]:
    """Shares of a mixture's records that are under 100 characters and that py3langid does not call English.

    The pool is about half junk; the hand-picked domain mix takes its domains uniformly, junk included, so
    these two shares say whether a selector keeps the good half of the right domains. Every record counts,
    whatever py3langid's confidence (the filter stage only drops confident non-English calls). py3langid
    reads a record's first 1,000 characters here, where the filter reads `LANGUAGE_CHARS` (4,000): every
    committed result was measured so, and it is kept to compare them."""
    from tasks.filter.rules import language_identifier

    identifier = language_identifier()
    n = max(len(texts), 1)
    return {"records": len(texts),
            "under_100_chars": sum(len(t) < SHORT_CHARS for t in texts) / n,
            "non_english": sum(identifier.classify(t[:1000])[0] != "en" for t in texts) / n}


def stage_texts(con, run_id: str, stages: list[list[str]]) -> list[str]:
    """The texts of every document of every stage's mixture, in stage order."""
    ids = [d for mixture in stages for d in mixture]
    texts = store.texts_of(con, run_id, ids)
    return [texts[d] for d in ids]


def mixture_facts(settings: Settings, run_id: str, methods: dict[str, Any]) -> dict[str, Any]:
    """Add tokens and documents per stage, the token share of each pool domain and the mixture's quality
    (`mixture_quality`) to every method's entry."""
    with db.connect(settings.database, read_only=True) as con:
        meta = {r.doc_id: (r.domain, r.n_tokens) for r in store.documents_metadata(con, run_id)}
        for entry in methods.values():
            entry["mixture_quality"] = mixture_quality(stage_texts(con, run_id, entry["stages"]))
    for entry in methods.values():
        by_domain: dict[str, int] = defaultdict(int)
        for mixture in entry["stages"]:
            for doc_id in mixture:
                by_domain[meta[doc_id][0]] += meta[doc_id][1]
        total = max(sum(by_domain.values()), 1)
        entry["tokens_per_stage"] = [sum(meta[d][1] for d in mixture) for mixture in entry["stages"]]
        entry["documents_per_stage"] = [len(mixture) for mixture in entry["stages"]]
        entry["domain_token_shares"] = {d: n / total for d, n in sorted(by_domain.items())}
    return methods
