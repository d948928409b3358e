"""k-means over the document embeddings: the clusters are the bandit's arms.

Embeddings are L2-normalised, so Euclidean k-means on them is spherical k-means in effect; centroids are
re-normalised so that cosine distances between them (used for reward sharing) are meaningful.

Memory stays flat in the corpus size: the matrix is never held whole. k-means is fitted on at most
`FIT_SAMPLE` embeddings (all of them in smaller runs, so those cluster exactly as before), and every
document is then assigned in one streamed pass of `ASSIGN_PAGE` rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
from prefect import task
from sklearn.cluster import MiniBatchKMeans

from core import db
from core.artifacts import Clustered, Embedded
from core.config import ConfigError, Settings
from core.seeds import document_keys, int_seed
from runtime.policies import STAGE_CACHE

FIT_SAMPLE = 131_072
"""Most embeddings k-means is fitted on: a seeded uniform sample of rows above that. Why it loses nothing:
MiniBatchKMeans stops after a few hundred minibatches of `cluster.batch_size` rows (early stopping on its
smoothed inertia), so it never looks at more rows than this at k = 16-64; it only sampled them from a
matrix 8x larger at a million documents, a copy that was most of the stage's 7 GB."""
DUCKDB_MEMORY = "512MB"
"""DuckDB's memory cap while the stage runs. Why: its buffer pool keeps every table block a scan read, up to
80% of RAM by default, so streaming the embeddings twice would otherwise leave a copy of the whole matrix
(1.5 GB at a million 384-d rows) in the process anyway; the blocks are on disk, evicting them is free."""
ASSIGN_PAGE = 16_384
"""Rows per assignment page: a multiple of the 256-row chunks scikit-learn computes distances in, so a
document's label and distance do not depend on the page size (or the corpus size) it was computed at."""


def page_matrix(page: pa.Table) -> np.ndarray:
    """A page's `embedding` column as a float32 [rows, dim] matrix."""
    flat = page.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(page.num_rows, -1)


def fit_sample(con, run_id: str, n_docs: int, seed: int) -> np.ndarray:
    """The rows k-means is fitted on, in doc_id order: all of them up to `FIT_SAMPLE` documents, else a
    seeded uniform sample of about `FIT_SAMPLE` (each document kept when its seeded key, core.seeds, falls
    below a threshold, so only the sample is sorted, never the whole matrix)."""
    ids = [r.doc_id for r in db.records(con, "embedded_ids", {"run_id": run_id})]
    if n_docs > FIT_SAMPLE:
        keys = document_keys(ids, seed, "cluster")
        ids = [d for d, key in zip(ids, keys.tolist(), strict=True) if key < FIT_SAMPLE / n_docs * 2**64]
    with db.relation(con, "wanted", pa.table({"doc_id": pa.array(ids, pa.string())})):
        pages = db.arrow_pages(con, "cluster_fit_sample", {"run_id": run_id}, ASSIGN_PAGE)
        return np.concatenate([page_matrix(page) for page in pages])


def fit_kmeans(sample: np.ndarray, k: int, batch_size: int, seed: int) -> tuple[MiniBatchKMeans, np.ndarray]:
    """(fitted k-means, its unit-norm centroids)."""
    kmeans = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, random_state=seed, n_init=3, compute_labels=False)
    kmeans.fit(sample)
    centroids = kmeans.cluster_centers_.astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return kmeans, centroids


def assign_documents(reader_con, writer_con, run_id: str, kmeans: MiniBatchKMeans, centroids: np.ndarray
                     ) -> tuple[np.ndarray, float]:
    """Label every document with its nearest centre and write `cluster_assignments` page by page, streaming
    the embeddings on one connection while writing on another; returns (each cluster's size, inertia)."""
    sizes, inertia = np.zeros(len(centroids), dtype=np.int64), 0.0
    for page in db.arrow_pages(reader_con, "scan_embeddings", {"run_id": run_id}, ASSIGN_PAGE):
        X = page_matrix(page)
        labels = kmeans.predict(X).astype(np.int32)
        distance = 1.0 - np.einsum("ij,ij->i", X, centroids[labels])
        sizes += np.bincount(labels, minlength=len(centroids))
        inertia += float(np.sum(distance))
        # doc_id copied: DuckDB's uncommitted rows reference the strings' Arrow buffers until commit, and a
        # page's columns are one allocation, so the page's embeddings would stay pinned with them
        doc_ids = pa.array(page.column("doc_id").to_pylist(), pa.string())
        db.insert_arrow(writer_con, "insert_cluster_assignments", pa.table({
            "run_id": pa.array([run_id] * page.num_rows), "doc_id": doc_ids, "cluster_id": labels,
            "distance": distance.astype(np.float64)}))
    return sizes, inertia


@contextmanager
def _duckdb_memory(con, limit: str) -> Iterator[None]:
    db.run(con, "set_memory_limit", {"limit": limit})
    try:
        yield
    finally:
        db.run(con, "reset_memory_limit")


def cluster_documents(settings: Settings, embedded: Embedded) -> Clustered:
    """Fit k-means on (a sample of) the embeddings and assign every document to its nearest centre."""
    started = time.perf_counter()
    k, run_id = settings.cluster.k, embedded.run_id
    with db.connect(settings.database) as con, _duckdb_memory(con, DUCKDB_MEMORY):
        n_docs = int(db.records(con, "count_embeddings", {"run_id": run_id})[0].documents)
        if n_docs < k:
            raise ConfigError(f"setting `cluster.k`: {k} clusters asked for but only {n_docs} documents were embedded")
        seed = int_seed(settings.seed, "cluster")
        kmeans, centroids = fit_kmeans(fit_sample(con, run_id, n_docs, settings.seed), k, settings.cluster.batch_size,
                                       seed)
        reader = con.cursor()
        try:
            with db.transaction(con):
                db.run(con, "delete_clusters", {"run_id": run_id})
                db.run(con, "delete_cluster_assignments", {"run_id": run_id})
                sizes, inertia = assign_documents(reader, con, run_id, kmeans, centroids)
                db.insert_arrow(con, "insert_clusters", pa.table({
                    "run_id": [run_id] * k,
                    "cluster_id": np.arange(k, dtype=np.int32),
                    "size": sizes.astype(np.int32),
                    "centroid": pa.array(list(centroids), type=pa.list_(pa.float32())),
                }))
        finally:
            reader.close()
    return Clustered(run_id, k, n_docs, inertia, int(sizes.min()), int(sizes.max()), time.perf_counter() - started)


cluster_task = task(cluster_documents, name="cluster", cache_policy=STAGE_CACHE, persist_result=True)
