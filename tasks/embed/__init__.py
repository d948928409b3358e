"""Embed stage: every document, streamed in pages, into `embeddings`, reusing vectors any earlier run computed.

Which model and how it loads: tasks/embed/encoders.py. Embeddings are content-addressed: `embedding_cache`
keeps one vector per (document `content_hash`, `embedding_key`), and the key hashes the model's files and
the settings that change vectors, so a run on documents some earlier run embedded (any run id, same model
and settings) embeds only the new ones. A static model's vector depends on the document alone; a
transformer's also, by rounding only, on the padding of the batch it was embedded in, so a reused vector
is the one the first run computed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from core import db, store
from core.artifacts import Embedded, Filtered, Ingested
from core.config import EmbedSettings, Settings
from core.faults import failpoint
from models.influence_encoder import embedding_dim
from runtime import shards
from runtime.policies import STAGE_CACHE
from tasks.embed.encoders import (
    PACKAGED_MODELS,
    Embedder,
    EmbedError,
    check_embed_model,
    is_static_model,
    load_embedder,
    open_embedder,
    resolve_embedder,
)

__all__ = ["PACKAGED_MODELS", "EmbedError", "check_embed_model", "embed_documents", "embed_task", "is_static_model",
           "load_embedder"]

PAGE_BATCHES = 4
"""Batches per `encode` call, and the unit shards are cut in. `encode` sorts a page by length before
batching (less padding), so a transformer's embedding of a document depends on the page it is in; pages
never straddle shards, which keeps embeddings bit-identical for any runner and `runner.shards`. Four
batches (128 documents by default) keep most of the sorting gain and still give a small corpus several
shards. The pages themselves are cut from the documents sorted by length (`documents_to_embed`), so
each batch holds documents of about one length whatever page size is chosen."""


RUN_PRIVATE_KEYS = ("uncached:", "legacy:")
"""Cache keys of one run's own: a model that could not be fingerprinted, or vectors moved from a file made
before `embeddings` was a view (sql/migrate_legacy_embeddings.sql). They are deleted when the run is
pointed at another key, since no other run can read them."""


def page_size(cfg: EmbedSettings) -> int:
    """Documents per `encode` call: `PAGE_BATCHES` batches."""
    return cfg.batch_size * PAGE_BATCHES


def encode_page(encoder, texts: list[str], batch_size: int) -> pa.Array:
    """Unit-normalised float32 embeddings of one page, as the `embeddings.embedding` column type."""
    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                             convert_to_numpy=True).astype(np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32()))


def embed_shard(settings: Settings, input_path: str, output_path: str, threads: int, location: str,
                static: bool) -> dict[str, int]:
    """Shard worker: (content_hash, text) Parquet -> (content_hash, embedding) Parquet; it never opens DuckDB."""
    shards.use_threads(threads)
    cfg = settings.embed
    encoder = open_embedder(location, static, cfg)
    pages = list(shards.pages_of(pq.read_table(input_path), page_size(cfg)))
    vectors = []
    for page in pages:
        failpoint("embed.batch")
        vectors.append(encode_page(encoder, page.column("text").to_pylist(), cfg.batch_size))
    shards.write_table(Path(output_path), pa.table({
        "content_hash": pa.concat_arrays([page.column("content_hash").combine_chunks() for page in pages]),
        "embedding": pa.concat_arrays(vectors),
    }))
    return {"documents": sum(page.num_rows for page in pages), "dim": int(embedding_dim(encoder))}


embed_shard_task = task(embed_shard, name="shard-embed", cache_policy=NO_CACHE)


def pages_to_embed(con, run_id: str, key: str, size: int) -> Iterator[pa.Table]:
    """(content_hash, text) pages of `size` rows: the run's documents with no cached vector, shortest first.

    One streamed query: a transformer pads each batch to its longest document, so batches cut from a
    length-sorted stream hold little padding; keyset pages over a (length, id) order would rescan the
    table per page.
    """
    return db.arrow_pages(con, "documents_to_embed", {"run_id": run_id, "model_key": key}, size)


@contextmanager
def _embed_new(con, settings: Settings, run_id: str, embedder: Embedder, key: str, new: int
               ) -> Iterator[list[shards.ShardResult]]:
    """The shards' results for the `new` documents with no cached vector (none: no shards, no runner)."""
    if not new:
        yield []
        return
    size = page_size(settings.embed)
    tagged = shards.tag_pages(pages_to_embed(con, run_id, key, size), -(-new // size), settings.runner.shards)
    params = {"settings": settings, "location": embedder.location, "static": embedder.static}
    with shards.sharded(settings, run_id, "embed", embed_shard_task, tagged, params) as results:
        yield results


def embed_documents(settings: Settings, pool: Filtered | Ingested, progress: bool = True) -> Embedded:
    """Embed the pool's new documents (what the filter stage kept; all ingested ones without it) in
    page-aligned shards (`runner`), then, in one transaction, add their vectors to `embedding_cache` and point
    the run's `embeddings` view at the model's key: a run's vectors are never copied, so a second run on an
    embedded corpus writes one row."""
    cfg, run_id = settings.embed, pool.run_id
    started = time.perf_counter()
    embedder = resolve_embedder(cfg)
    key = embedder.key or f"uncached:{run_id}:{time.time_ns()}"  # an unreadable model: a key no run shares
    with db.connect(settings.database) as con:
        total = store.count_documents(con, run_id)
        new = int(db.records(con, "count_documents_to_embed", {"run_id": run_id, "model_key": key})[0].documents)
        with _embed_new(con, settings, run_id, embedder, key, new) as results, db.transaction(con):
            for result in tqdm(results, desc="embed shards", unit="shard", disable=None if progress else True):
                out = shards.read_output(result)
                db.insert_arrow(con, "insert_embedding_cache", out.append_column("model_key", pa.array([key] * out.num_rows)))
            previous = db.records(con, "run_embedding_model", {"run_id": run_id})
            if previous and previous[0].model_key.startswith(RUN_PRIVATE_KEYS) and previous[0].model_key != key:
                db.run(con, "delete_embedding_cache", {"model_key": previous[0].model_key})  # shared by no run
            db.run(con, "set_run_embedding_model", {"run_id": run_id, "model_key": key, "model": cfg.model})
        dim = db.records(con, "embedding_dim", {"run_id": run_id})
    seconds = time.perf_counter() - started
    return Embedded(run_id, cfg.model, int(dim[0].dim) if dim else 0, total, seconds, total / max(seconds, 1e-9),
                    reused=total - new, embedded=new)


embed_task = task(embed_documents, name="embed", cache_policy=STAGE_CACHE, persist_result=True)
