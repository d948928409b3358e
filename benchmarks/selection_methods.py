"""The selectors the benchmark compares, all drawing the same token budget per stage from one influmix pool.

One influmix run holds the pool (ingested, deduplicated and embedded once); every seed re-clusters it and
retrains its tokenizer in that run, then the methods select in turn:

* `topk_influence` (MATES): its own model-aware trajectory of pipeline stages with `select.method = "topk"`
  (Gumbel-top-k on each stage's influence scores instead of the bandit).
* `random`, `domain_oracle`, `dsir`, `bandit_static`: from the pool as it is (`bandit_static` on the
  stage-0 influence scores, which every model-aware method shares).
* `influmix`: the pipeline's own trajectory with the configured `select.method`, run last so that the
  run's tables end up holding the influmix mixture, as `influmix show` would show it.

Both model-aware trajectories run the flow's own stage loop (flows/stages.py, `model_aware_stages`) over
the stage functions the flow's tasks wrap: the benchmark measures what `influmix run` does.

Each stage function replaces its rows for the run, so the trajectories reuse one run id in turn. A method
never selects a document twice across stages (the pipeline's `select.exclude_previous`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from core import db, store
from core.artifacts import Corpus, Embedded, Ingested, ReferenceSet, StageResult
from core.config import Settings
from core.seeds import rng
from flows.stages import StageSteps, model_aware_stages
from models.bandit import select_with_bandit
from models.baselines import greedy_fill, select_topk
from runtime.configs import bandit_config
from tasks.cluster import cluster_documents
from tasks.distill import distill_stage
from tasks.mixture import write_mixture
from tasks.pretrain import pretrain_stage
from tasks.probe import probe_stage
from tasks.select import select_stage
from tasks.tokenizer import train_tokenizer

METHODS = ("random", "dsir", "topk_influence", "bandit_static", "domain_oracle", "influmix")
MODEL_AWARE = ("topk_influence", "bandit_static", "influmix")
EMBED_FLOPS_PER_TOKEN = 2 * 10.6e6
"""Forward FLOPs per token of all-MiniLM-L6-v2: 2 x its 10.6M matmul parameters (6 layers of 384 wide)."""


@dataclass
class Cost:
    """Seconds and model FLOPs a method spent on selection, by part (embed, probe, distill_score, ...)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    flops: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, part: str, seconds: float, flops: float = 0.0) -> None:
        self.seconds[part] += seconds
        self.flops[part] += flops

    def plus(self, *others: Cost) -> Cost:
        total = Cost()
        for cost in (self, *others):
            for part, value in cost.seconds.items():
                total.add(part, value, cost.flops.get(part, 0.0))
        return total

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"seconds": dict(self.seconds), "flops": dict(self.flops)}


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


def _timed(cost: Cost, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` that adds its wall time to `cost[part]` on every call."""
    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        cost.add(part, time.perf_counter() - started)
        return result
    return timed


def stage_flops(settings: Settings, result: StageResult) -> dict[str, float]:
    """Model FLOPs of one model-aware stage's selection work, from its artifacts (models.flops: 6N +
    attention per trained token): exact probe = one training step on a document (at most seq_len tokens) +
    a forward pass over the probe reference; fast probe = one per-document gradient + the shared reference
    gradient once; influence head = 6 x its weights per training example and epoch (an upper bound: early
    stopping) + 2 x weights per scored document; token model = its two ridge solves + 2 FLOPs per scored
    token."""
    ckpt, probes, distilled = result.checkpoint, result.probes, result.influence
    fpt, seq = ckpt.flops_per_token, settings.proxy.seq_len
    ref_tokens = settings.probe.reference_sequences * seq
    flops = {"proxy_train": fpt * ckpt.train_tokens,
             "probe": probes.probes * (fpt * seq + fpt / 3 * ref_tokens)
             + probes.fast_probes * fpt * seq + (fpt * ref_tokens if probes.fast_probes else 0.0)}
    if distilled.student == "tokens":  # two dual ridge fits (Gram + eigh), then one add per scored token
        n = distilled.train_probes
        flops["distill_score"] = (2 * (2 * n * n * settings.proxy.vocab_size + 10 * n ** 3)
                                  + 2 * seq * distilled.scored_documents)
    else:
        head = 384 * settings.distill.hidden_dim + 2 * settings.distill.hidden_dim
        flops["distill_score"] = (6 * head * distilled.train_probes * settings.distill.epochs
                                  + 2 * head * distilled.scored_documents)
    return flops


class StageClock:
    """Times every model-aware step by part. Stage 0's pretrain, probe and distil do not depend on the
    selection rule: they run once per seed and every trajectory gets the same artifacts (their rows stay in
    the run's tables), while each trajectory is charged their full cost."""

    def __init__(self) -> None:
        self.stage0, self.done = Cost(), {}

    def steps(self, own: Cost) -> StageSteps:
        """The flow's stage functions, timed into `own` (stage 0: into the shared `stage0`)."""
        return StageSteps(
            pretrain=self._step(own, "proxy_train", partial(pretrain_stage, progress=False)),
            probe=self._step(own, "probe", partial(probe_stage, progress=False)),
            distill=self._step(own, "distill_score", distill_stage),
            select=_timed(own, "select", partial(select_stage, progress=False)),
            write=write_mixture)

    def _step(self, own: Cost, part: str, fn):
        def step(settings: Settings, *args):
            stage = next(a if isinstance(a, int) else a.stage for a in args if isinstance(a, int) or hasattr(a, "stage"))
            if stage == 0 and part in self.done:
                return self.done[part]
            started = time.perf_counter()
            result = fn(settings, *args)
            (self.stage0 if stage == 0 else own).add(part, time.perf_counter() - started)
            if stage == 0:
                self.done[part] = result
            return result
        return step


def trajectory(settings: Settings, corpus: Corpus, clock: StageClock, stages: range | None = None
               ) -> tuple[list[StageResult], Cost]:
    """Model-aware stages with `settings.select.method`, through the flow's own stage loop (flows/stages.py)
    and stage functions; the cost includes stage 0's and the FLOPs of every stage's probes and student."""
    own = Cost()
    results = model_aware_stages(settings, corpus, clock.steps(own), stages)
    cost = clock.stage0.plus(own)
    for result in results:
        for part, flops in stage_flops(settings, result).items():
            cost.flops[part] += flops
    return results, cost


def method_rng(settings: Settings, method: str, stage: int) -> np.random.Generator:
    return rng(settings.seed, "benchmark", stage, method=METHODS.index(method))


def static_selections(settings: Settings, corpus: Corpus, methods: list[str], dsir: DsirWeights | None,
                      reference_domains: set[str], stage0_scores: dict[str, float]) -> dict[str, list[list[str]]]:
    """Per stage and method, from the pool's stage-ordered candidates minus the method's earlier picks."""
    run_id = corpus.ingested.run_id
    with db.connect(settings.database) as con:
        centroids = store.load_centroids(con, run_id)
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
            ids = [order.doc_ids[i] for i in keep]
            tokens, clusters = order.n_tokens[keep], order.cluster_ids[keep]
            draws = method_rng(settings, method, stage)
            if method in ("random", "domain_oracle"):
                picked = greedy_fill(draws.permutation(len(ids)), tokens, budget)
            elif method == "dsir":  # DSIR's resampling: Gumbel-top-k on the log importance weights
                keys = np.array([dsir.log_weight[d] for d in ids]) + draws.gumbel(size=len(ids))
                picked = select_topk(keys, tokens, budget, temperature=0.0)
            else:  # bandit_static: the pipeline's bandit with stage 0's influence scores at every stage
                picked = select_with_bandit(clusters, np.array([stage0_scores[d] for d in ids]), tokens, centroids,
                                            bandit_config(settings, stage), progress=False).selected
            mixtures[method].append([ids[i] for i in np.asarray(picked, dtype=np.int64)])
    return mixtures


def with_selector(settings: Settings, method: str) -> Settings:
    return settings.model_copy(update={"select": settings.select.model_copy(update={"method": method})})


def _facts(results: list[StageResult]) -> list[dict[str, float]]:
    return [{"proxy_reference_loss": r.checkpoint.reference_loss, "probe_fast_spearman": r.probes.fast_spearman,
             "influence_heldout_spearman": r.influence.heldout_spearman} for r in results]


def select_for_seed(settings: Settings, methods: list[str], dsir: DsirWeights | None, reference_domains: set[str],
                    pool_cost: Cost, ingested: Ingested, reference: ReferenceSet, embedded: Embedded) -> dict[str, Any]:
    """Every method's per-stage mixtures for `settings.seed`, with what their selection cost.

    Costs: `pool_cost` (embedding the pool once) goes to every method that uses the embeddings; clustering
    to the bandit methods; the tokenizer to nobody (every method's training needs it).
    """
    clustering, untracked = Cost(), Cost()
    clustered = _timed(clustering, "cluster", cluster_documents)(settings, embedded)
    tokenized = _timed(untracked, "tokenizer", train_tokenizer)(settings, ingested, reference)
    corpus = Corpus(ingested, reference, embedded, clustered, tokenized)
    clock = StageClock()
    out: dict[str, Any] = {}
    if "topk_influence" in methods:
        results, cost = trajectory(with_selector(settings, "topk"), corpus, clock)
        out["topk_influence"] = {"stages": [r.selection.doc_ids for r in results], "facts": _facts(results),
                                 "cost": pool_cost.plus(cost)}
    stage0_scores: dict[str, float] = {}
    static = [m for m in methods if m in ("random", "dsir", "domain_oracle", "bandit_static")]
    if "bandit_static" in methods:
        results, stage0_cost = trajectory(settings, corpus, clock, stages=range(1))
        with db.connect(settings.database, read_only=True) as con:
            stage0_scores = store.stage_scores(con, ingested.run_id, 0)
        stage0_cost.seconds.pop("select", None)
    started = time.perf_counter()
    chosen = static_selections(settings, corpus, static, dsir, reference_domains, stage0_scores) if static else {}
    per_method = (time.perf_counter() - started) / max(len(static), 1)
    for method, mixtures in chosen.items():
        cost = Cost()
        cost.add("select", per_method)
        if method == "dsir":
            cost.add("dsir_weights", dsir.seconds)
        if method == "bandit_static":
            cost = pool_cost.plus(clustering, stage0_cost, cost)
        out[method] = {"stages": mixtures, "cost": cost, "facts": _facts(results) if method == "bandit_static" else []}
    if "influmix" in methods:  # last, so the run's tables end up holding the product's own mixture
        results, cost = trajectory(settings, corpus, clock)
        out["influmix"] = {"stages": [r.selection.doc_ids for r in results], "facts": _facts(results),
                           "cost": pool_cost.plus(clustering, cost)}
    return {m: {**out[m], "cost": out[m]["cost"].as_dict()} for m in methods}


def mixture_facts(settings: Settings, run_id: str, methods: dict[str, Any]) -> dict[str, Any]:
    """Add tokens and documents per stage and the token share of each pool domain to every method's entry."""
    with db.connect(settings.database, read_only=True) as con:
        meta = {r.doc_id: (r.domain, r.n_tokens) for r in store.documents_metadata(con, run_id)}
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
