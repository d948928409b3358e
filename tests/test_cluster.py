"""The cluster stage on a real DuckDB file: streamed, sampled above FIT_SAMPLE, deterministic for a seed."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from sklearn.cluster import MiniBatchKMeans

from benchmarks.cluster_memory import write_embeddings
from core import db
from core.artifacts import Embedded
from core.config import load_settings
from core.seeds import int_seed

RUN_ID = "clustered"
EMBEDDED = Embedded(RUN_ID, "synthetic", 0, 0, 0.0, 0.0)  # what the embed stage hands the cluster stage


def _embedded(tmp_path, n: int, dim: int = 8):
    """Settings over a database holding `n` unit-norm embeddings around 6 centres (and nothing else)."""
    settings = load_settings(None, [f'run_dir="{tmp_path / "runs"}"', "cluster.k=4", "cluster.batch_size=64"])
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, dim))[rng.integers(0, 6, n)] + 0.3 * rng.standard_normal((n, dim))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    with db.connect(settings.database) as con:
        write_embeddings(con, RUN_ID, [f"doc-{i:05d}" for i in range(n)], X)
    return settings, X


def _assignments(settings) -> list[tuple]:
    con = duckdb.connect(str(settings.database), read_only=True)
    try:
        return con.execute("SELECT doc_id, cluster_id, distance FROM cluster_assignments WHERE run_id = ? ORDER BY doc_id",
                           [RUN_ID]).fetchall()
    finally:
        con.close()


def test_small_runs_cluster_as_k_means_over_the_whole_matrix(tmp_path):
    from tasks.cluster import cluster_documents

    settings, X = _embedded(tmp_path, 1500)
    stats = cluster_documents(settings, EMBEDDED)
    whole = MiniBatchKMeans(n_clusters=4, batch_size=64, random_state=int_seed(settings.seed, "cluster"), n_init=3).fit(X)
    rows = _assignments(settings)
    assert [r[1] for r in rows] == whole.labels_.tolist()  # what the stage computed before it streamed
    centroids = whole.cluster_centers_ / np.linalg.norm(whole.cluster_centers_, axis=1, keepdims=True)
    np.testing.assert_allclose([r[2] for r in rows], 1 - np.einsum("ij,ij->i", X, centroids[whole.labels_]), atol=1e-5)
    assert stats.documents == 1500 and stats.smallest + stats.largest <= 1500


def test_large_runs_fit_on_a_seeded_sample_and_label_every_document(tmp_path, monkeypatch):
    import tasks.cluster

    monkeypatch.setattr(tasks.cluster, "FIT_SAMPLE", 400)  # the sampled path, at a size a test can afford
    monkeypatch.setattr(tasks.cluster, "ASSIGN_PAGE", 512)  # several assignment pages
    settings, _ = _embedded(tmp_path, 3000)
    first = tasks.cluster.cluster_documents(settings, EMBEDDED)
    rows = _assignments(settings)
    assert [r[0] for r in rows] == [f"doc-{i:05d}" for i in range(3000)]
    assert first.documents == 3000 and all(0 <= r[1] < 4 and -1e-6 <= r[2] <= 2 for r in rows)
    counted = np.bincount([r[1] for r in rows], minlength=4)
    con = duckdb.connect(str(settings.database), read_only=True)
    sizes = [r[0] for r in con.execute("SELECT size FROM clusters WHERE run_id = ? ORDER BY cluster_id", [RUN_ID]).fetchall()]
    con.close()
    assert sizes == counted.tolist() and (first.smallest, first.largest) == (min(sizes), max(sizes))
    again = tasks.cluster.cluster_documents(settings, EMBEDDED)  # a re-run replaces, and repeats, the clusters
    assert _assignments(settings) == rows and again.inertia == first.inertia


def test_more_clusters_than_embeddings_names_the_setting(tmp_path):
    from core.config import ConfigError
    from tasks.cluster import cluster_documents

    settings, _ = _embedded(tmp_path, 3)
    with pytest.raises(ConfigError, match="cluster.k"):
        cluster_documents(settings, EMBEDDED)
