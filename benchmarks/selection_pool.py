"""The selection benchmark's pool (benchmarks/selection.py): the influmix settings it runs with, and what is
computed once per work folder and read back after: ingest, the visible reference, the pool's embeddings and
DSIR's weights. The seed-dependent parts (mixtures, evaluators) stay in selection.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from benchmarks.selection_data import visible_documents

RUN_ID = "selection-pool"


def pipeline_settings(cfg, files, workdir: Path):
    """The influmix settings of the benchmark's run: the config's `[pipeline]`, on the benchmark's data.
    (`cfg` is a benchmarks.selection.BenchConfig; not imported here, which would make an import cycle.)"""
    from core.config import Settings

    data = json.loads(json.dumps(cfg.pipeline))
    data.update(run_dir=str(workdir / "runs"), run_id=RUN_ID)
    data.setdefault("ingest", {})["sources"] = [{"path": str(files.path("pool"))}]
    data.setdefault("reference", {}).update(sources=[{"path": str(files.path("reference_visible"))}],
                                            max_documents=1_000_000)
    data.setdefault("track", {})["tracking_uri"] = f"sqlite:///{(workdir / 'runs' / 'mlflow.db').resolve()}"
    return Settings.model_validate(data)


def prepare_pool(settings, workdir: Path, data_key: str):
    """Ingest, load the visible reference and embed the pool, once per work folder, data files and settings."""
    from benchmarks.selection_methods import EMBED_FLOPS_PER_TOKEN, Cost
    from core import db, store
    from core.artifacts import Embedded, Filtered, Ingested, ReferenceSet
    from core.config import is_static_embed_name
    from tasks.embed import embed_documents
    from tasks.filter import filter_documents
    from tasks.ingest import ingest_corpus, load_reference
    from tasks.track import register_run

    stamp = workdir / "pool.json"
    key = data_key + settings.model_dump_json(include={"ingest", "reference", "filter", "embed"})
    saved = json.loads(stamp.read_text()) if stamp.exists() else None
    if saved is None or saved["key"] != key:
        register_run(settings)
        started = time.perf_counter()
        ingested = ingest_corpus(settings, RUN_ID, progress=False)
        reference = load_reference(settings, RUN_ID)
        filtered = filter_documents(settings, ingested, progress=False)
        ingest_s = time.perf_counter() - started
        embedded = embed_documents(settings, filtered, progress=False)
        with db.connect(settings.database, read_only=True) as con:
            chars = [r.n_chars for r in store.documents_metadata(con, RUN_ID)]
        # ~4 characters per MiniLM word piece, cut at the embedder's window; a static model only looks tokens up
        tokens = 0.0 if is_static_embed_name(settings.embed.model) else sum(
            min(c / 4, settings.embed.max_seq_length) for c in chars)
        saved = {"key": key, "documents": ingested.documents, "ingest_seconds": ingest_s,
                 "embed_seconds": embedded.seconds, "embed_docs_per_s": embedded.docs_per_s,
                 "embed_flops": EMBED_FLOPS_PER_TOKEN * tokens,
                 "filtered_documents": filtered.filtered,
                 "artifacts": {"ingested": dataclasses.asdict(ingested), "reference": dataclasses.asdict(reference),
                               "embedded": dataclasses.asdict(embedded), "filtered": dataclasses.asdict(filtered)}}
        stamp.write_text(json.dumps(saved, indent=1))
    cost = Cost()
    cost.add("embed", saved["embed_seconds"], saved["embed_flops"])
    artifacts = saved["artifacts"]
    pool = (Ingested(**artifacts["ingested"]), ReferenceSet(**artifacts["reference"]), Embedded(**artifacts["embedded"]),
            Filtered(**artifacts["filtered"]))
    return cost, saved, pool


def dsir_for_pool(cfg, settings, files, workdir: Path):
    """DSIR's weights for the pool (seed-independent): fitted once per work folder, then read back."""
    from benchmarks.selection_methods import DsirWeights, dsir_weights

    saved = workdir / "dsir_weights.json"
    key = [json.loads((workdir / "pool.json").read_text())["key"], cfg.dsir.model_dump()]
    if saved.exists() and (data := json.loads(saved.read_text()))["key"] == key:
        return DsirWeights(**data["weights"])
    pool = list(pool_texts(settings).items())
    shutil.rmtree(workdir / "dsir", ignore_errors=True)
    weights = dsir_weights(pool, visible_documents(files), workdir / "dsir", cfg.dsir.ngrams, cfg.dsir.num_buckets,
                           cfg.dsir.min_example_length)
    saved.write_text(json.dumps({"key": key, "weights": dataclasses.asdict(weights)}))
    return weights


def pool_texts(settings) -> dict[str, str]:
    """Every pool document's text by id, in the store's page order."""
    from core import db, store

    with db.connect(settings.database, read_only=True) as con:
        return {d: t for ids, page in store.document_pages(con, RUN_ID, 5000) for d, t in zip(ids, page)}
