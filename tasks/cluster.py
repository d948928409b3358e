"""k-means over the document embeddings: the clusters are the bandit's arms.

Embeddings are L2-normalised, so Euclidean k-means on them is spherical k-means in effect; centroids are
re-normalised so that cosine distances between them (used for reward sharing) are meaningful.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from prefect import task
from sklearn.cluster import MiniBatchKMeans

from core import db
from core.config import ConfigError, Settings
from runtime.policies import STAGE_CACHE
from tasks.embed import load_embeddings


@dataclass
class ClusterStats:
    k: int
    documents: int
    inertia: float
    smallest: int
    largest: int
    seconds: float

    def as_metrics(self) -> dict[str, float]:
        return {"clusters": self.k, "cluster_inertia": self.inertia, "cluster_smallest": self.smallest,
                "cluster_largest": self.largest}


def fit_clusters(embeddings: np.ndarray, k: int, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, unit-norm centroids)."""
    kmeans = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, random_state=seed, n_init=3)
    labels = kmeans.fit_predict(embeddings)
    centroids = kmeans.cluster_centers_.astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return labels.astype(np.int32), centroids


def cluster_documents(settings: Settings, run_id: str) -> ClusterStats:
    started = time.perf_counter()
    k = settings.cluster.k
    with db.connect(settings.database) as con:
        doc_ids, X = load_embeddings(con, run_id)
        if len(doc_ids) < k:
            raise ConfigError(f"setting `cluster.k`: {k} clusters asked for but only {len(doc_ids)} documents were embedded")
        labels, centroids = fit_clusters(X, k, settings.cluster.batch_size, settings.seed)
        distance = 1.0 - np.einsum("ij,ij->i", X, centroids[labels])
        sizes = np.bincount(labels, minlength=k)
        with db.transaction(con):
            db.run(con, "delete_clusters", {"run_id": run_id})
            db.run(con, "delete_cluster_assignments", {"run_id": run_id})
            db.insert_arrow(con, "insert_clusters", pa.table({
                "run_id": [run_id] * k,
                "cluster_id": np.arange(k, dtype=np.int32),
                "size": sizes.astype(np.int32),
                "centroid": pa.array(list(centroids), type=pa.list_(pa.float32())),
            }))
            db.insert_arrow(con, "insert_cluster_assignments", pa.table({
                "run_id": [run_id] * len(doc_ids),
                "doc_id": doc_ids,
                "cluster_id": labels,
                "distance": distance.astype(np.float64),
            }))
    inertia = float(np.sum(distance))
    return ClusterStats(k, len(doc_ids), inertia, int(sizes.min()), int(sizes.max()), time.perf_counter() - started)


def load_centroids(con, run_id: str) -> np.ndarray:
    table = db.arrow(con, "load_centroids", {"run_id": run_id})
    k = table.num_rows
    flat = table.column("centroid").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(k, -1)


cluster_task = task(cluster_documents, name="cluster", cache_policy=STAGE_CACHE, persist_result=True)
