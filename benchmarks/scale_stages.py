"""One stage of the scale benchmark, run alone in a fresh process so that its peak RSS is its own.

    python -m benchmarks.scale_stages STAGE WORKDIR      # writes WORKDIR/STAGE.json

WORKDIR/settings.json holds the run id, the document count and the `--set` overrides (`benchmarks/scale.py`
writes it). The stages call the pipeline's own code; only what needs the proxy LM or MiniLM stands in:

* `generate`: the synthetic corpus (`benchmarks/scale_corpus.py`); set-up, not a pipeline stage.
* `ingest`: `tasks.ingest.ingest_corpus` (readers, cleaning, exact + MinHash LSH dedup, batched inserts);
  the near-dedup index is wrapped to time MinHash + LSH separately and to report its size.
* `features`: stand-ins for embed, tokenizer and distill, written through the pipeline's own statements
  (`insert_embeddings`, `update_token_counts`, `insert_influence_scores`) in pages of `documents_page`:
  hashed word features (HashingVectorizer, 2^14 buckets, log1p counts) times a fixed Gaussian projection to
  384 dims, L2-normalised, in place of MiniLM; n_tokens = round(1.3 x words) in place of the BPE count; the
  score = cosine of the features with a fixed random direction plus seeded per-document noise (xxhash of
  the doc id) in place of the influence model, so that clusters differ in mean score as they do for real.
* `cluster`: `tasks.cluster.cluster_documents` (MiniBatchKMeans on every embedding).
* `select`: `tasks.select.select_stage` (influence z-score plus the arm's reward) and `tasks.mixture.write_mixture`;
  each arm's reward stands in as its clusters' mean stand-in score (what the oracle bandit would measure).
* `imports`: imports the modules above and stops: the memory floor every stage process starts from.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FEATURE_BUCKETS = 2**14
FEATURE_DIM = 384
FEATURE_PAGE = 2_000  # the tokenizer stage's page size (tasks/pretrain.py)
FEATURES_MODEL = f"stand-in: hashed words {FEATURE_BUCKETS} -> Gaussian projection {FEATURE_DIM}"
STAGES = ("imports", "generate", "ingest", "features", "cluster", "select")


def load_config(workdir: Path) -> dict[str, Any]:
    return json.loads((workdir / "settings.json").read_text())


def settings_for(config: dict[str, Any]):
    from core.config import load_settings

    return load_settings(None, config["overrides"])


def import_pipeline() -> None:
    """Import what the stages import, so that the `imports` floor is the one they start from."""
    import sklearn.feature_extraction.text  # noqa: F401

    import tasks.cluster
    import tasks.ingest
    import tasks.mixture
    import tasks.select  # noqa: F401


def run_generate(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from benchmarks.scale_corpus import write_corpus

    source = Path(config["source"])
    kinds = write_corpus(Path(config["corpus"]), config["documents"], source, seed=config["seed"])
    return {"documents": config["documents"], "kinds": kinds, "source": str(source),
            "corpus_bytes": Path(config["corpus"]).stat().st_size}


def run_ingest(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import tasks.ingest
    from tasks.ingest.dedup import NearDedup

    timer = {"near_dedup_seconds": 0.0, "indexes": []}

    class TimedNearDedup(NearDedup):
        """The pipeline's index, timed: MinHash signatures plus LSH query/insert per document."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            timer["indexes"].append(self)

        def signatures_for(self, texts):
            started = time.perf_counter()
            try:
                return super().signatures_for(texts)
            finally:
                timer["near_dedup_seconds"] += time.perf_counter() - started

        def check_and_add(self, doc_id, minhash):
            started = time.perf_counter()
            try:
                return super().check_and_add(doc_id, minhash)
            finally:
                timer["near_dedup_seconds"] += time.perf_counter() - started

    tasks.ingest.NearDedup = TimedNearDedup
    stats = tasks.ingest.ingest_corpus(settings_for(config), config["run_id"], progress=False)
    index = timer["indexes"][0]
    return {"records_read": stats.records_read, "documents": stats.documents,
            "exact_duplicates": stats.exact_duplicates, "near_duplicates": stats.near_duplicates,
            "quarantined": stats.quarantined, "near_dedup_seconds": round(timer["near_dedup_seconds"], 3),
            "near_index_documents": len(index.ids), "near_index_bytes": int(index.nbytes)}


def feature_page(texts: list[str], vectorizer, projection: np.ndarray) -> np.ndarray:
    """Unit-norm hashed-word features of one page: log1p bucket counts times a fixed Gaussian projection."""
    counts = vectorizer.transform(texts)
    counts.data = np.log1p(counts.data)
    dense = np.asarray(counts @ projection, dtype=np.float32)
    return dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)


def stand_in_scores(doc_ids: list[str], features: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Feature-aligned signal plus seeded per-document noise: deterministic, no model needed."""
    import xxhash

    noise = np.array([xxhash.xxh64_intdigest(d.encode()) for d in doc_ids], dtype=np.float64) / 2.0**64 - 0.5
    return features @ direction * 4.0 + noise


def run_features(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import pyarrow as pa
    from sklearn.feature_extraction.text import HashingVectorizer

    from core import db, store

    settings, run_id = settings_for(config), config["run_id"]
    rng = np.random.default_rng(settings.seed)
    projection = (rng.standard_normal((FEATURE_BUCKETS, FEATURE_DIM)) / np.sqrt(FEATURE_DIM)).astype(np.float32)
    direction = rng.standard_normal(FEATURE_DIM).astype(np.float64)
    direction /= np.linalg.norm(direction)
    vectorizer = HashingVectorizer(n_features=FEATURE_BUCKETS, alternate_sign=False, norm=None, dtype=np.float32)
    documents = tokens_total = 0
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_embeddings", {"run_id": run_id})
        db.run(con, "delete_influence_scores", {"run_id": run_id, "stage": 0})
        for doc_ids, texts in store.document_pages(con, run_id, FEATURE_PAGE):
            n = len(doc_ids)
            vectors = feature_page(texts, vectorizer, projection)
            tokens = np.array([max(1, round(1.3 * len(t.split()))) for t in texts], dtype=np.int32)
            run_ids = pa.array([run_id] * n)
            db.insert_arrow(con, "insert_embeddings", pa.table({
                "run_id": run_ids, "doc_id": doc_ids, "model": pa.array([FEATURES_MODEL] * n),
                "embedding": pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), FEATURE_DIM).cast(
                    pa.list_(pa.float32()))}))
            db.insert_arrow(con, "update_token_counts", pa.table(
                {"run_id": run_ids, "doc_id": doc_ids, "n_tokens": tokens}))
            db.insert_arrow(con, "insert_influence_scores", pa.table({
                "run_id": run_ids, "stage": pa.array([0] * n, pa.int32()), "doc_id": doc_ids,
                "score": stand_in_scores(doc_ids, vectors, direction)}))
            documents += n
            tokens_total += int(tokens.sum())
    return {"documents": documents, "tokens": tokens_total, "features": FEATURES_MODEL}


def run_cluster(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from core.artifacts import Embedded
    from tasks.cluster import cluster_documents

    embedded = Embedded(config["run_id"], FEATURES_MODEL, FEATURE_DIM, 0, 0.0, 0.0)  # the stand-in features
    stats = cluster_documents(settings_for(config), embedded)
    return {"documents": stats.documents, "clusters": stats.k, "smallest": stats.smallest,
            "largest": stats.largest, "inertia": round(stats.inertia, 3)}


def run_select(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from core.artifacts import Clustered, Influence, Probes
    from tasks.mixture import write_mixture
    from tasks.select import select_stage

    settings, run_id = settings_for(config), config["run_id"]
    # the stand-in scores of run_features, as the distill stage would have written them
    scores = Influence(run_id, 0, 0, 0, float("nan"), float("nan"), 0, "", "stand-in", 0.0)
    clusters = Clustered(run_id, settings.cluster.k, 0, 0.0, 0, 0, 0.0)
    probes = Probes(run_id, 0, "stand-in", 0, 0, 0.0, 0.0, 0.0, 0, settings.cluster.k,
                    stand_in_arm_rewards(settings, run_id), None, 0, 0.0, 0.0, None, 0.0)
    selection = select_stage(settings, scores, clusters, probes, progress=False)
    written = write_mixture(settings, selection)
    return {"documents": written.documents, "selected_documents": written.documents,
            "selected_tokens": written.tokens, "token_budget": written.token_budget,
            "pool_exhausted": selection.exhausted, "clusters_used": len(set(selection.cluster_ids))}


def stand_in_arm_rewards(settings: Any, run_id: str) -> list[float]:
    """Each cluster's mean stand-in score, z-scored across clusters: the arm rewards the probe stage would give."""
    from core import db, store

    with db.connect(settings.database, read_only=True) as con:
        pool = store.candidates(con, run_id, 0, settings.seed, False)
        score_of = store.stage_scores(con, run_id, 0)
    scores = np.array([score_of[d] for d in pool.doc_ids])
    means = np.array([scores[pool.cluster_ids == c].mean() if (pool.cluster_ids == c).any() else 0.0
                      for c in range(settings.cluster.k)])
    return ((means - means.mean()) / (means.std() or 1.0)).tolist()


def main(argv: list[str]) -> None:
    stage, workdir = argv[0], Path(argv[1])
    if stage not in STAGES:
        raise SystemExit(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    config = load_config(workdir)
    if stage != "generate":
        import_pipeline()
    started = time.perf_counter()
    counts = {} if stage == "imports" else globals()[f"run_{stage}"](config, workdir)
    seconds = time.perf_counter() - started
    (workdir / f"{stage}.json").write_text(json.dumps({"stage": stage, "seconds": seconds, "counts": counts}))


if __name__ == "__main__":
    main(sys.argv[1:])
