"""The selectors the benchmark compares, all drawing the same token budget per stage from one influmix pool.

One influmix run holds the pool (ingested, deduplicated and embedded once); every seed re-clusters it and
retrains its tokenizer in that run, then the methods select in turn:

* `topk_influence` (MATES): its own model-aware trajectory of pipeline stages (pretrain the proxy on its
  previous mixture, probe, distil) with Gumbel-top-k on each stage's influence scores instead of the bandit.
* `random`, `domain_oracle`, `dsir`, `bandit_static`: from the pool as it is (`bandit_static` on the
  stage-0 influence scores, which every model-aware method shares).
* `influmix`: the pipeline's own trajectory (bandit over clusters), run last so that the run's tables end
  up holding the influmix mixture, as `influmix show` would show it.

Each stage function replaces its rows for the run, so the trajectories reuse one run id in turn. A method
never selects a document twice across stages (the pipeline's `select.exclude_previous`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import db
from core.config import Settings
from models.bandit import select_with_bandit
from models.baselines import select_random, select_topk
from tasks.cluster import cluster_documents, load_centroids
from tasks.distill import distill_stage
from tasks.mixture import write_mixture
from tasks.pretrain import pretrain_stage, train_tokenizer
from tasks.probe import available_documents, probe_stage
from tasks.select import Selection, bandit_config, select_stage

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


def _timed(cost: Cost, part: str, fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    cost.add(part, time.perf_counter() - started)
    return result


def model_stage(settings: Settings, run_id: str, stage: int) -> tuple[Cost, dict[str, float]]:
    """Pretrain the proxy for `stage` (on the run's previous mixture), probe it and distil the probes.

    FLOPs are model FLOPs from models.flops (6N + attention per trained token): exact probe = one training
    step on a document (at most seq_len tokens) + a forward pass over the probe reference; fast probe = one
    per-document gradient + the shared reference gradient once; influence head = 6 x its weights per
    training example and epoch (an upper bound: early stopping) + 2 x weights per scored document; token
    model = its two ridge solves + 2 FLOPs per scored token.
    """
    cost = Cost()
    ckpt = _timed(cost, "proxy_train", pretrain_stage, settings, run_id, stage, progress=False)
    probes = _timed(cost, "probe", probe_stage, settings, run_id, stage, progress=False)
    distilled = _timed(cost, "distill_score", distill_stage, settings, run_id, stage)
    fpt, seq = ckpt.flops_per_token, settings.proxy.seq_len
    ref_tokens = settings.probe.reference_sequences * seq
    cost.flops["proxy_train"] += fpt * ckpt.train_tokens
    cost.flops["probe"] += probes.probes * (fpt * seq + fpt / 3 * ref_tokens)
    cost.flops["probe"] += probes.fast_probes * fpt * seq + (fpt * ref_tokens if probes.fast_probes else 0.0)
    if distilled.student == "tokens":  # two dual ridge fits (Gram + eigh), then one add per scored token
        n = distilled.train_probes
        cost.flops["distill_score"] += (2 * (2 * n * n * settings.proxy.vocab_size + 10 * n ** 3)
                                        + 2 * seq * distilled.scored_documents)
    else:
        head = 384 * settings.distill.hidden_dim + 2 * settings.distill.hidden_dim
        cost.flops["distill_score"] += (6 * head * distilled.train_probes * settings.distill.epochs
                                        + 2 * head * distilled.scored_documents)
    facts = {"proxy_reference_loss": ckpt.reference_loss, "probe_fast_spearman": probes.fast_spearman,
             "influence_heldout_spearman": distilled.heldout_spearman}
    return cost, facts


def topk_selection(settings: Settings, run_id: str, stage: int) -> Selection:
    """MATES: Gumbel-top-k (temperature `select.temperature`) on the stage's influence scores."""
    with db.connect(settings.database) as con:
        candidates = available_documents(con, settings, run_id, stage)
        score_of = dict(db.rows(con, "stage_scores", {"run_id": run_id, "stage": stage}))
    ids = [c[0] for c in candidates]
    tokens = np.array([c[2] for c in candidates], dtype=np.int64)
    scores = np.array([score_of[d] for d in ids])
    picked = select_topk(scores, tokens, settings.select.token_budget, settings.select.temperature,
                         seed=settings.seed + 7919 * stage).tolist()
    return Selection(stage, settings.select.token_budget, [ids[i] for i in picked],
                     [int(candidates[i][1]) for i in picked], [float(scores[i]) for i in picked], [0] * len(picked),
                     int(tokens[picked].sum()), 0, False)


def trajectory(settings: Settings, run_id: str, select, stage0: tuple[Cost, dict] | None
               ) -> tuple[list[list[str]], Cost, list[dict[str, float]], tuple[Cost, dict]]:
    """Run every stage model-aware with `select(settings, run_id, stage) -> Selection`; reuse a finished
    stage 0 (`stage0`, same seed: it does not depend on the selection rule). Returns the mixtures, the
    cost (stage 0 included), per-stage facts and stage 0's (cost, facts) for the next trajectory."""
    mixtures, cost, facts = [], Cost(), []
    for stage in range(settings.stages):
        if stage == 0 and stage0 is not None:
            stage_cost, stage_facts = stage0
        else:
            stage_cost, stage_facts = model_stage(settings, run_id, stage)
            stage0 = stage0 or (stage_cost, stage_facts)
        cost = cost.plus(stage_cost)
        selection = _timed(cost, "select", select, settings, run_id, stage)
        write_mixture(settings, run_id, selection)
        mixtures.append(selection.doc_ids)
        facts.append(stage_facts)
    return mixtures, cost, facts, stage0


def _seed_of(settings: Settings, method: str, stage: int) -> int:
    return settings.seed * 1_000_003 + 7919 * stage + 101 * METHODS.index(method)


def static_selections(settings: Settings, run_id: str, methods: list[str], dsir: DsirWeights | None,
                      reference_domains: set[str]) -> dict[str, list[list[str]]]:
    """Per stage and method, from the pool's stage-ordered candidates minus the method's earlier picks."""
    everything = settings.model_copy(update={"select": settings.select.model_copy(update={"exclude_previous": False})})
    with db.connect(settings.database) as con:
        centroids = load_centroids(con, run_id)
        domain_of = {r[0]: r[2] for r in db.rows(con, "pool_documents_metadata", {"run_id": run_id})}
        orders = [available_documents(con, everything, run_id, s) for s in range(settings.stages)]
        scores0 = dict(db.rows(con, "stage_scores", {"run_id": run_id, "stage": 0})) if "bandit_static" in methods else {}
    budget = settings.select.token_budget
    mixtures: dict[str, list[list[str]]] = {m: [] for m in methods}
    for stage, order in enumerate(orders):
        for method in methods:
            taken = {d for mixture in mixtures[method] for d in mixture}
            cand = [c for c in order if c[0] not in taken and (
                method != "domain_oracle" or domain_of[c[0]] in reference_domains) and (
                method != "dsir" or dsir.keep[c[0]])]
            ids = [c[0] for c in cand]
            tokens = np.array([c[2] for c in cand], dtype=np.int64)
            seed = _seed_of(settings, method, stage)
            if method in ("random", "domain_oracle"):
                picked = select_random(tokens, budget, seed=seed)
            elif method == "dsir":  # DSIR's resampling: Gumbel-top-k on the log importance weights
                keys = np.array([dsir.log_weight[d] for d in ids]) + np.random.default_rng(seed).gumbel(size=len(ids))
                picked = select_topk(keys, tokens, budget, temperature=0.0)
            else:  # bandit_static: the pipeline's bandit with stage 0's influence scores at every stage
                picked = select_with_bandit(np.array([c[1] for c in cand], dtype=np.int64),
                                            np.array([scores0[d] for d in ids]), tokens, centroids,
                                            bandit_config(settings, stage), progress=False).selected
            mixtures[method].append([ids[i] for i in np.asarray(picked, dtype=np.int64)])
    return mixtures


def select_for_seed(settings: Settings, run_id: str, methods: list[str], dsir: DsirWeights | None,
                    reference_domains: set[str], pool_cost: Cost) -> dict[str, Any]:
    """Every method's per-stage mixtures for `settings.seed`, with what their selection cost.

    Costs: `pool_cost` (embedding the pool once) goes to every method that uses the embeddings; clustering
    to the bandit methods; the tokenizer to nobody (every method's training needs it).
    """
    clustering, untracked = Cost(), Cost()
    _timed(clustering, "cluster", cluster_documents, settings, run_id)
    _timed(untracked, "tokenizer", train_tokenizer, settings, run_id)
    out: dict[str, Any] = {}
    stage0 = None
    if "topk_influence" in methods:
        mixtures, cost, facts, stage0 = trajectory(settings, run_id, topk_selection, stage0)
        out["topk_influence"] = {"stages": mixtures, "cost": pool_cost.plus(cost), "facts": facts}
    if "bandit_static" in methods and stage0 is None:
        stage0 = model_stage(settings, run_id, 0)
    static = [m for m in methods if m in ("random", "dsir", "domain_oracle", "bandit_static")]
    started = time.perf_counter()
    chosen = static_selections(settings, run_id, static, dsir, reference_domains) if static else {}
    per_method = (time.perf_counter() - started) / max(len(static), 1)
    for method, mixtures in chosen.items():
        cost = Cost()
        cost.add("select", per_method)
        if method == "dsir":
            cost.add("dsir_weights", dsir.seconds)
        if method == "bandit_static":
            cost = pool_cost.plus(clustering, stage0[0], cost)
        out[method] = {"stages": mixtures, "cost": cost, "facts": [stage0[1]] if method == "bandit_static" else []}
    if "influmix" in methods:
        def bandit(s: Settings, r: str, stage: int) -> Selection:
            return select_stage(s, r, stage, progress=False)

        mixtures, cost, facts, _ = trajectory(settings, run_id, bandit, stage0)
        out["influmix"] = {"stages": mixtures, "cost": pool_cost.plus(clustering, cost), "facts": facts}
    return {m: {**out[m], "cost": out[m]["cost"].as_dict()} for m in methods}


def mixture_facts(settings: Settings, run_id: str, methods: dict[str, Any]) -> dict[str, Any]:
    """Add tokens and documents per stage and the token share of each pool domain to every method's entry."""
    with db.connect(settings.database, read_only=True) as con:
        meta = {r[0]: (r[2], r[4]) for r in db.rows(con, "pool_documents_metadata", {"run_id": run_id})}
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
