"""The reads that several stages share, as named rows and arrays, over `sql/` statements.

Each stage writes its own tables (in its module); what other stages read back goes through here, so a
stage never imports another stage's module to read its output, and a row's fields are read by name (a
reordered SELECT in `sql/` cannot silently swap two columns). Seeded samples of the pool are drawn here
with `core.seeds`, not with DuckDB's hash function, so the same seed picks the same documents on any
DuckDB version.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from core import db
from core.seeds import document_keys


class RunRow(NamedTuple):
    run_id: str
    config_hash: str
    config_json: str
    status: str
    started_at: Any
    finished_at: Any
    mlflow_run_id: str | None
    prefect_flow_run_id: str | None
    host: str | None
    pid: int | None


class ProbeRow(NamedTuple):
    doc_id: str
    stage: int
    label: float | None  # the oracle's value: what the influence model learns
    exact_score: float | None
    fast_score: float | None
    split: str  # train | heldout


class OraclePull(NamedTuple):
    pull: int
    cluster_id: int
    ucb: float | None
    n_measured: int
    mean_value: float | None
    group_reward: float | None
    reward: float


class DocumentMeta(NamedTuple):
    doc_id: str
    source: str
    domain: str
    n_chars: int
    n_tokens: int | None
    content_hash: str


@dataclass(frozen=True)
class Candidates:
    """The documents a stage may probe or select, in the seeded cluster-stratified order: the first
    documents of every cluster come before the second ones, so any prefix covers every cluster."""

    doc_ids: list[str]
    cluster_ids: np.ndarray  # int64
    n_tokens: np.ndarray  # int64
    scores: np.ndarray | None = None  # float64: the stage's influence scores, NaN where not scored yet

    def __len__(self) -> int:
        return len(self.doc_ids)


# ------------------------------------------------------------------------------------------ runs


def run_row(con, run_id: str) -> RunRow | None:
    found = db.records(con, "get_run", {"run_id": run_id}, as_type=RunRow)
    return found[0] if found else None


# ------------------------------------------------------------------------------------- documents


def count_documents(con, run_id: str) -> int:
    return int(db.records(con, "count_documents", {"run_id": run_id})[0].documents)


def document_pages(con, run_id: str, page_size: int) -> Iterator[tuple[list[str], list[str]]]:
    """(doc_ids, texts) pages in doc_id order, without loading the corpus into memory."""
    after = ""
    while True:
        page = db.records(con, "documents_page", {"run_id": run_id, "after": after, "page_size": page_size})
        if not page:
            return
        yield [r.doc_id for r in page], [r.text for r in page]
        after = page[-1].doc_id


def texts_of(con, run_id: str, doc_ids: list[str]) -> dict[str, str]:
    """doc_id -> text for the listed documents (missing ids are simply absent)."""
    with db.relation(con, "wanted", pa.table({"doc_id": pa.array(doc_ids, pa.string())})):
        return {r.doc_id: r.text for r in db.records(con, "document_texts", {"run_id": run_id})}


def documents_metadata(con, run_id: str) -> list[DocumentMeta]:
    return db.records(con, "pool_documents_metadata", {"run_id": run_id}, as_type=DocumentMeta)


def reference_texts(con, run_id: str) -> list[str]:
    return [r.text for r in db.records(con, "reference_texts", {"run_id": run_id})]


def reference_documents(con, run_id: str) -> list[tuple[str, str]]:
    """(ref_id, text) of the run's reference documents, by ref_id."""
    return [(r.ref_id, r.text) for r in db.records(con, "reference_texts", {"run_id": run_id})]


def warmup_texts(con, run_id: str, seed: int, budget: int) -> list[str]:
    """Stage 0's training text: a seeded uniform sample of the pool filling `budget` tokens, by doc_id."""
    rows = db.records(con, "document_tokens", {"run_id": run_id})
    keys = document_keys([r.doc_id for r in rows], seed, "warmup_sample")
    order = np.argsort(keys, kind="stable")
    tokens = np.array([r.n_tokens or 0 for r in rows], dtype=np.int64)[order]
    chosen = sorted(rows[i].doc_id for i in order[np.cumsum(tokens) <= budget])
    texts = texts_of(con, run_id, chosen)
    return [texts[d] for d in chosen]


def tokenizer_sample(con, run_id: str, seed: int, limit: int) -> list[str]:
    """A seeded sample of up to `limit` pool texts: what the tokenizer (and the pool side of the reference
    prior) learns from."""
    ids = [r.doc_id for r in db.records(con, "document_ids", {"run_id": run_id})]
    keys = document_keys(ids, seed, "tokenizer_sample")
    chosen = [ids[i] for i in np.argsort(keys, kind="stable")[:limit]]
    texts = texts_of(con, run_id, chosen)
    return [texts[d] for d in chosen]


def mixture_texts(con, run_id: str, stage: int) -> list[str]:
    return [r.text for r in db.records(con, "mixture_texts", {"run_id": run_id, "stage": stage})]


# -------------------------------------------------------------------------- embeddings, clusters


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """A table's `embedding` column as a float32 [rows, dim] matrix ([0, 0] when empty)."""
    if table.num_rows == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(table.num_rows, -1)


def load_embeddings(con, run_id: str) -> tuple[list[str], np.ndarray]:
    """All of a run's embeddings as (doc_ids, float32 matrix) in doc_id order."""
    table = db.arrow(con, "load_embeddings", {"run_id": run_id})
    return table.column("doc_id").to_pylist(), embedding_matrix(table)


def load_centroids(con, run_id: str) -> np.ndarray:
    """The run's unit-norm cluster centroids, [k, dim], by cluster id."""
    table = db.arrow(con, "load_centroids", {"run_id": run_id})
    flat = table.column("centroid").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(table.num_rows, -1)


def candidates(con, run_id: str, stage: int, seed: int, exclude_previous: bool) -> Candidates:
    """The stage's available documents in the seeded cluster-stratified order (see `Candidates`), with
    their influence scores for this stage. Read as Arrow columns: at a million documents Python row
    objects took most of the select stage's time."""
    table = db.arrow(con, "available_documents",
                     {"run_id": run_id, "stage": stage, "exclude_previous": exclude_previous})
    doc_ids = table.column("doc_id").to_pylist()
    clusters = table.column("cluster_id").to_numpy().astype(np.int64)
    tokens = table.column("n_tokens").to_numpy().astype(np.int64)
    scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    keys = document_keys(doc_ids, seed, "candidates", stage)
    by_cluster = np.lexsort((keys, clusters))  # stable: ties keep doc_id order
    sorted_clusters = clusters[by_cluster]
    rank = np.empty(len(doc_ids), dtype=np.int64)
    rank[by_cluster] = np.arange(len(doc_ids)) - np.searchsorted(sorted_clusters, sorted_clusters, side="left")
    order = np.lexsort((keys, rank))
    return Candidates([doc_ids[i] for i in order], clusters[order], tokens[order], scores[order])


# ------------------------------------------------------------------------------ probes and scores


def stage_probes(con, run_id: str, stage: int) -> list[ProbeRow]:
    return db.records(con, "load_probes", {"run_id": run_id, "stage": stage}, as_type=ProbeRow)


def probe_history(con, run_id: str, stage: int, first_stage: int) -> list[ProbeRow]:
    """The training probes of stages [first_stage, stage)."""
    return db.records(con, "load_probe_history", {"run_id": run_id, "stage": stage, "first_stage": first_stage},
                      as_type=ProbeRow)


def stage_scores(con, run_id: str, stage: int) -> dict[str, float]:
    return {r.doc_id: r.score for r in db.records(con, "stage_scores", {"run_id": run_id, "stage": stage})}


def reranked_values(con, run_id: str, stage: int) -> dict[str, float]:
    """doc_id -> the value the cascade orders the head by (the measured value or its estimate; tasks/rerank.py)."""
    return {r.doc_id: r.estimate for r in db.records(con, "load_reranked_documents", {"run_id": run_id, "stage": stage})}


def oracle_pulls(con, run_id: str, stage: int) -> list[OraclePull]:
    return db.records(con, "load_oracle_pulls", {"run_id": run_id, "stage": stage}, as_type=OraclePull)


# ----------------------------------------------------------------------------------- the mixture


def mixture_summary(db_path: Path, run_id: str) -> dict[str, Any]:
    """Run header plus, for every stage, the mixture's tokens and its composition by domain and cluster."""
    with db.connect(db_path, read_only=True) as con:
        header = run_row(con, run_id)
        if header is None:
            raise LookupError(f"no run {run_id!r} in {db_path}")
        stages = []
        for m in db.records(con, "mixture_headers", {"run_id": run_id}):
            params = {"run_id": run_id, "stage": m.stage}
            stages.append({
                "stage": m.stage, "token_budget": m.token_budget, "tokens": m.tokens, "documents": m.n_documents,
                "created_at": str(m.created_at),
                "by_domain": [_share_row(r, "domain") for r in db.records(con, "mixture_by_domain", params)],
                "by_cluster": [{**_share_row(r, "cluster"), "mean_score": r.mean_score, "cluster_size": r.cluster_size}
                               for r in db.records(con, "mixture_by_cluster", params)],
            })
        pool = [_share_row(r, "domain") for r in db.records(con, "pool_by_domain", {"run_id": run_id})]
    return {"run_id": header.run_id, "status": header.status, "config_hash": header.config_hash,
            "started_at": str(header.started_at), "finished_at": str(header.finished_at),
            "mlflow_run_id": header.mlflow_run_id, "prefect_flow_run_id": header.prefect_flow_run_id,
            "pool_by_domain": pool, "stages": stages}


def _share_row(row: Any, label: str) -> dict[str, Any]:
    """A composition row (domain or cluster, documents, tokens, token share) as the summary's dict."""
    name = row.domain if label == "domain" else row.cluster_id
    return {label: name, "documents": row.documents, "tokens": row.tokens, "share": row.token_share}
