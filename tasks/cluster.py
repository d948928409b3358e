"""k-means over the document embeddings: the clusters are the bandit's arms.

Embeddings are L2-normalised, so Euclidean k-means on them is spherical k-means in effect; centroids are
re-normalised so that cosine distances between them (used for reward sharing) are meaningful.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from prefect import task
from sklearn.cluster import MiniBatchKMeans

from core import db, store
from core.artifacts import Clustered, Embedded
from core.config import ConfigError, Settings
from core.seeds import int_seed
from runtime.policies import STAGE_CACHE


def fit_clusters(embeddings: np.ndarray, k: int, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, unit-norm centroids)."""
    kmeans = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, random_state=seed, n_init=3)
    labels = kmeans.fit_predict(embeddings)
    centroids = kmeans.cluster_centers_.astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return labels.astype(np.int32), centroids


def cluster_documents(settings: Settings, embedded: Embedded) -> Clustered:
    started = time.perf_counter()
    k, run_id = settings.cluster.k, embedded.run_id
    with db.connect(settings.database) as con:
        doc_ids, X = store.load_embeddings(con, run_id)
        if len(doc_ids) < k:
            raise ConfigError(f"setting `cluster.k`: {k} clusters asked for but only {len(doc_ids)} documents were embedded")
        labels, centroids = fit_clusters(X, k, settings.cluster.batch_size, int_seed(settings.seed, "cluster"))
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
    return Clustered(run_id, k, len(doc_ids), inertia, int(sizes.min()), int(sizes.max()), time.perf_counter() - started)


cluster_task = task(cluster_documents, name="cluster", cache_policy=STAGE_CACHE, persist_result=True)
