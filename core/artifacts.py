"""The stage contracts: what each stage wrote, as a small typed record the flow passes to the next stage.

Every stage writes its results to DuckDB (and, for models, to files under the run's folder) and returns one
of these: which run and stage, which tables and paths it wrote, and the counts a person or a metric needs.
The next stage receives it as an argument, so the data between stages is visible in `flows/curate.py`,
the stage cache keys on it, and no stage has to rebuild another stage's paths or import its module.

The records are plain dataclasses (picklable: Prefect persists them as task results for resume).
`as_metrics()` gives flat float metrics with MLflow-safe names for tracking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def metric_key(name: str) -> str:
    """A free-form name (a domain, a quarantine reason) as an MLflow-safe metric key fragment."""
    return _METRIC_UNSAFE.sub("_", name)


@dataclass(frozen=True)
class Run:
    """A registered run: the `runs` row exists and the run's folder is made."""

    run_id: str
    database: str
    run_dir: str
    prefect_flow_run_id: str | None = None
    mlflow_run_id: str | None = None  # opened when the flow starts; every stage logs into it
    experiment_id: str | None = None
    TABLES: ClassVar[tuple[str, ...]] = ("runs",)


@dataclass
class Ingested:
    """The pool: clean, deduplicated documents, with what was dropped and why."""

    run_id: str
    records_read: int = 0
    documents: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    quarantined: int = 0
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    by_domain: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    TABLES: ClassVar[tuple[str, ...]] = ("documents", "quarantine", "duplicates")

    def as_metrics(self) -> dict[str, float]:
        """Totals, `quarantine.<reason>` and `domain.<name>` (documents kept per domain)."""
        metrics = {"records_read": float(self.records_read), "documents": float(self.documents),
                   "exact_duplicates": float(self.exact_duplicates), "near_duplicates": float(self.near_duplicates),
                   "quarantined": float(self.quarantined), "ingest_seconds": float(self.seconds)}
        for reason, n in sorted(self.quarantine_by_reason.items()):
            metrics[f"quarantine.{metric_key(reason)}"] = float(n)
        for domain, n in sorted(self.by_domain.items()):
            key = f"domain.{metric_key(domain)}"
            metrics[key] = metrics.get(key, 0.0) + float(n)
        return metrics


@dataclass
class Filtered:
    """The pool after the quality filters: each filter's verdicts (`filtered_documents`) and quarantine rows;
    every later stage reads the pool through the `pool_documents` view, which leaves rejected documents out."""

    run_id: str
    documents: int = 0  # judged: every document the run ingested
    kept: int = 0
    filtered: int = 0  # rejected by at least one filter
    by_filter: dict[str, int] = field(default_factory=dict)  # documents each filter rejects (they overlap)
    chars_by_filter: dict[str, int] = field(default_factory=dict)
    first_by_filter: dict[str, int] = field(default_factory=dict)  # quarantine rows: the first filter that rejects
    errors: dict[str, int] = field(default_factory=dict)  # documents a filter raised on (kept, not judged by it)
    filters: list[str] = field(default_factory=list)  # the enabled filters, in order
    seconds: float = 0.0
    TABLES: ClassVar[tuple[str, ...]] = ("filtered_documents", "quarantine")

    def as_metrics(self) -> dict[str, float]:
        """Flat float metrics with MLflow-safe keys: `filter.documents`, `filter.kept`, `filter.<name>`, ..."""
        metrics = {"filter.documents": float(self.documents), "filter.kept": float(self.kept),
                   "filter.filtered": float(self.filtered), "filter.seconds": float(self.seconds)}
        for name in self.filters:
            key = metric_key(name)
            metrics[f"filter.{key}"] = float(self.by_filter.get(name, 0))
            metrics[f"filter.{key}.chars"] = float(self.chars_by_filter.get(name, 0))
            metrics[f"filter.{key}.errors"] = float(self.errors.get(name, 0))
        return metrics


@dataclass(frozen=True)
class ReferenceSet:
    """The reference (target) documents the proxy's reference loss and the probes are measured on."""

    run_id: str
    documents: int
    TABLES: ClassVar[tuple[str, ...]] = ("reference_documents",)

    def as_metrics(self) -> dict[str, float]:
        return {"reference_documents": float(self.documents)}


@dataclass(frozen=True)
class Embedded:
    run_id: str
    model: str
    dim: int
    documents: int
    seconds: float
    docs_per_s: float
    reused: int = 0  # documents whose vector was in `embedding_cache` already (embedded by an earlier run)
    embedded: int = 0  # documents this run embedded: `documents - reused`
    TABLES: ClassVar[tuple[str, ...]] = ("embeddings", "embedding_cache")

    def as_metrics(self) -> dict[str, float]:
        return {"embed_documents": self.documents, "embed_dim": self.dim, "embed_docs_per_s": self.docs_per_s,
                "embed_reused": self.reused, "embed_new": self.embedded}


@dataclass(frozen=True)
class Clustered:
    """k-means over the embeddings: the clusters are the selector's arms."""

    run_id: str
    k: int
    documents: int
    inertia: float
    smallest: int
    largest: int
    seconds: float
    TABLES: ClassVar[tuple[str, ...]] = ("clusters", "cluster_assignments")

    def as_metrics(self) -> dict[str, float]:
        return {"clusters": self.k, "cluster_inertia": self.inertia, "cluster_smallest": self.smallest,
                "cluster_largest": self.largest}


@dataclass(frozen=True)
class Tokenized:
    """The proxy's BPE tokenizer (a file), every document's exact token count (`documents.n_tokens`), and
    the reference packed into `reference_rows` rows of `proxy.seq_len` tokens (a safetensors file)."""

    run_id: str
    tokenizer_path: str
    reference_path: str
    reference_rows: int
    vocab_size: int
    corpus_tokens: int
    reused: bool = False  # the tokenizer an earlier run trained on the same sample
    counts_reused: int = 0  # documents whose token count was already in `token_counts`
    counts_new: int = 0
    TABLES: ClassVar[tuple[str, ...]] = ("documents", "tokenizers", "token_counts")

    def as_metrics(self) -> dict[str, float]:
        return {"tokenizer_vocab_size": self.vocab_size, "corpus_tokens": self.corpus_tokens,
                "tokenizer_reused": int(self.reused), "token_counts_reused": self.counts_reused,
                "token_counts_new": self.counts_new}


@dataclass(frozen=True)
class Checkpoint:
    """A pretrained proxy-LM stage: weights and optimizer state on disk, its losses and speed."""

    run_id: str
    stage: int
    path: str
    n_params: int
    train_tokens: int
    steps: int
    final_train_loss: float
    reference_loss: float
    tokens_per_s: float
    losses: list[float]
    flops_per_token: float = 0.0
    model_flops_per_s: float = 0.0
    mfu: float | None = None
    TABLES: ClassVar[tuple[str, ...]] = ("checkpoints",)

    def as_metrics(self) -> dict[str, float]:
        metrics = {"train_tokens": self.train_tokens, "proxy_train_loss": self.final_train_loss,
                   "reference_loss": self.reference_loss, "train_tokens_per_s": self.tokens_per_s,
                   "train_model_flops_per_s": self.model_flops_per_s}
        if self.mfu is not None:
            metrics["train_mfu"] = self.mfu
        return metrics


@dataclass(frozen=True)
class Probes:
    """A stage's oracle measurements (`probes` rows) and how the bandit spent them (`oracle_pulls` rows)."""

    run_id: str
    stage: int
    oracle: str  # conditional | one_step
    measured: int  # documents the oracle measured
    heldout: int  # of which kept to judge the influence model
    label_mean: float
    label_std: float
    seconds_per_document: float
    pulls: int
    arms_pulled: int
    arm_scores: list[float]  # each arm's posterior reward (models.bandit.arm_scores), by cluster id
    exact_agreement: float | None  # one_step: Spearman of the fast probe against the exact one on its slice
    group_rewards: int  # arms with a rollout group reward
    group_seconds: float
    oracle_setup_seconds: float  # conditional: the fine-tune on the reference's fit half
    finetune_step: int | None  # conditional: the fine-tune step kept (0 = the checkpoint itself)
    seconds: float
    oracle_timings: dict[str, float] = field(default_factory=dict)  # one_step: fast/exact seconds and documents
    conditional_path: str | None = None  # conditional: the fine-tuned model, for the cascade (tasks/rerank.py)

    def seconds_per(self, kind: str) -> float | None:
        """One-step oracle: measured seconds per `kind` ("fast" or "exact") probe, None if none ran."""
        n = self.oracle_timings.get(f"{kind}_documents", 0)
        return self.oracle_timings[f"{kind}_seconds"] / n if n else None

    TABLES: ClassVar[tuple[str, ...]] = ("probes", "oracle_pulls")

    def as_metrics(self) -> dict[str, float]:
        metrics = {"oracle_measured": self.measured, "oracle_pulls": self.pulls, "oracle_arms_pulled": self.arms_pulled,
                   "oracle_label_mean": self.label_mean, "oracle_label_std": self.label_std,
                   "oracle_seconds_per_document": self.seconds_per_document,
                   "oracle_group_rewards": self.group_rewards, "oracle_group_seconds": self.group_seconds,
                   "oracle_setup_seconds": self.oracle_setup_seconds, "probe_seconds": self.seconds}
        if self.exact_agreement is not None:
            metrics["probe_fast_spearman"] = self.exact_agreement
        if self.finetune_step is not None:
            metrics["oracle_finetune_step"] = self.finetune_step
        return metrics


@dataclass(frozen=True)
class Influence:
    """A stage's distilled influence model (a folder) and its score for every document."""

    run_id: str
    stage: int
    train_probes: int
    heldout_probes: int
    heldout_spearman: float
    heldout_pearson: float
    scored_documents: int
    model_dir: str
    student: str  # a name in models.students.STUDENTS
    seconds: float
    TABLES: ClassVar[tuple[str, ...]] = ("influence_scores",)

    def as_metrics(self) -> dict[str, float]:
        return {"influence_heldout_spearman": self.heldout_spearman, "influence_heldout_pearson": self.heldout_pearson,
                "influence_train_probes": self.train_probes, "influence_scored_documents": self.scored_documents}


@dataclass
class Reranked:
    """A stage's cascade (tasks/rerank.py): the oracle's second look at the head of the selection ranking."""

    run_id: str
    stage: int
    measured: int  # documents of the ranking's head the oracle measured (0: the cascade is off)
    tokens: int  # their tokens: about select.rerank_factor x the budget
    agreement: float | None  # Spearman of the influence model's scores against the measured values on the head
    seconds: float
    weight: float | None = None  # shrunk: the mean weight the estimates keep on the measurements (1 = as measured)
    TABLES: ClassVar[tuple[str, ...]] = ("reranked_documents",)

    @property
    def estimate(self) -> str:
        """What the head was ordered by: the measured values, or their shrunk estimates (a weight is kept)."""
        return "measured" if self.weight is None else "shrunk"

    def as_metrics(self) -> dict[str, float]:
        metrics = {"rerank_measured": self.measured, "rerank_seconds": self.seconds}
        metrics |= {"rerank_agreement": self.agreement} if self.agreement is not None else {}
        return metrics | ({"rerank_weight": self.weight} if self.weight is not None else {})


@dataclass(frozen=True)
class Selection:
    """A stage's chosen documents, in selection order (`rounds` numbers them), and how they were chosen."""

    run_id: str
    stage: int
    token_budget: int
    doc_ids: list[str]
    cluster_ids: list[int]
    scores: list[float]
    rounds: list[int]
    tokens: int
    n_rounds: int
    exhausted: bool
    selector: str = "bandit"
    TABLES: ClassVar[tuple[str, ...]] = ()  # the mixture stage writes it

    def as_metrics(self) -> dict[str, float]:
        return {"selected_documents": len(self.doc_ids), "selected_tokens": self.tokens,
                "token_budget": self.token_budget, "budget_fill": self.tokens / self.token_budget,
                "pool_exhausted": float(self.exhausted)}


@dataclass(frozen=True)
class Mixture:
    """A stage's mixture as written: its header in `mixtures`, its members in `mixture_members`."""

    run_id: str
    stage: int
    documents: int
    tokens: int
    token_budget: int
    TABLES: ClassVar[tuple[str, ...]] = ("mixtures", "mixture_members")


@dataclass(frozen=True)
class Tracked:
    """Where the run is tracked in MLflow, and the registered influence model's version."""

    mlflow_run_id: str
    experiment_id: str
    tracking_uri: str
    registered_model: str
    model_version: str | None
    alias_version: str | None = None  # the version `track.model_alias` points at after this run
    alias_note: str = ""  # why the alias did not move to this run's version (empty when it did)


@dataclass
class StageResult:
    """What one model-aware stage produced, in the order its stages ran."""

    checkpoint: Checkpoint
    probes: Probes
    influence: Influence
    selection: Selection
    mixture: Mixture
    reranked: Reranked | None = None  # None: a caller (a benchmark baseline) skipped the cascade step

    def parts(self) -> tuple[Any, ...]:
        head = (self.checkpoint, self.probes, self.influence)
        return (*head, *([self.reranked] if self.reranked is not None else []), self.selection)


@dataclass
class Corpus:
    """The corpus-level stages' artifacts, which every model-aware stage builds on."""

    ingested: Ingested
    reference: ReferenceSet
    embedded: Embedded
    clustered: Clustered
    tokenized: Tokenized
    filtered: Filtered | None = None  # None where a caller skips the filter stage (the pool is then all ingested)

    def parts(self) -> tuple[Any, ...]:
        parts = (self.ingested, self.reference, self.embedded, self.clustered, self.tokenized)
        return parts if self.filtered is None else (*parts, self.filtered)


@dataclass
class RunResult:
    run_id: str
    database: str
    prefect_flow_run_id: str | None
    tracked: Tracked | None
    metrics: dict[str, float]
    corpus: Corpus | None = None
    stages: list[StageResult] = field(default_factory=list)


def run_metrics(corpus: Corpus, stages: list[StageResult]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Final metrics (one value each) and curves (one value per step: per stage, or per training step).

    A per-stage metric's final value is its last stage's, as `final_<name>`; `train_loss` is the curve over
    every training step.
    """
    metrics: dict[str, float] = {}
    for part in corpus.parts():
        metrics.update(part.as_metrics())
    curves: dict[str, list[float]] = {"train_loss": []}
    for result in stages:
        curves["train_loss"].extend(result.checkpoint.losses)
        for part in result.parts():
            for key, value in part.as_metrics().items():
                curves.setdefault(key, []).append(float(value))
    for key, values in curves.items():
        if key != "train_loss" and values:
            metrics[f"final_{key}"] = values[-1]
    return metrics, curves
