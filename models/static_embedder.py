"""Static sentence embeddings distilled from a sentence-transformers model (model2vec), for fast CPU runs.

Why: a transformer embeds 22-38 documents/s on 2 CPU cores, so embedding a million documents takes a day.
model2vec runs the transformer once per vocabulary token (30k forward passes, under a minute), reduces the
token vectors with PCA and weights them by Zipf rank (SIF); a document's embedding is then the mean of its
tokens' vectors: thousands of documents per second, and no dependence on which batch a document is in.

The distilled model is cached in a folder named by its inputs (`distilled_folder`): the source model's
content fingerprint and the distillation settings. Distilling costs a minute of forward passes, so it is
done once per machine and source model, and every run, shard worker and test reuses the folder; a changed
source model or setting gets a new folder instead of silently reusing a stale one.

Pure numpy/transformers/model2vec: no knowledge of runs, settings or the database.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np

MODEL2VEC_TYPE = "model2vec"
"""`model_type` in a model2vec folder's config.json: how a static model folder is told from a transformer."""
_NOT_CONTENT = {"README.md", ".gitattributes"}
"""Files in a model folder that do not change its vectors (left out of the fingerprint)."""


@dataclass(frozen=True)
class DistillSpec:
    """model2vec's distillation settings (its recommended defaults), float32 so no precision is lost."""

    pca_dims: int | None = 256
    sif_coefficient: float = 1e-4
    pooling: str = "mean"
    dtype: str = "float32"


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 over every file's relative path and bytes (README and .gitattributes excepted).

    Why bytes, not names and sizes: a fine-tuned copy of a model has the same file names and sizes. Hashing
    MiniLM's 90 MB takes ~0.2 s; results are memoised per (path, size, mtime) within a process.
    """
    root = Path(folder).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _NOT_CONTENT and ".cache" not in p.parts)
    stamp = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _fingerprint(str(root), stamp)


@cache
def _fingerprint(root: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, size, _ in stamp:
        digest.update(f"{name}\0{size}\0".encode())
        with open(Path(root) / name, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def is_static_folder(folder: str | Path) -> bool:
    """True for a folder holding a model2vec static model (ours or one downloaded by the user)."""
    config = Path(folder) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == MODEL2VEC_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def distillation_key(source_folder: str | Path, spec: DistillSpec) -> str:
    """What a distilled model is a function of: the source's bytes, the settings and model2vec's version."""
    payload = {"source": folder_fingerprint(source_folder), "spec": asdict(spec),
               "model2vec": metadata.version("model2vec")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def distilled_folder(source_folder: str | Path, cache_root: str | Path, spec: DistillSpec = DistillSpec(),
                     name: str = "static") -> Path:
    """`<cache_root>/<name>-<key>`: the static model distilled from `source_folder`, distilled on first use.

    Distilled into a temporary sibling folder and renamed into place, so a crash never leaves half a
    model and two processes distilling at once both end with one complete folder.
    """
    folder = Path(cache_root) / f"{name}-{distillation_key(source_folder, spec)}"
    if is_static_folder(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        distill(source_folder, spec).save_pretrained(str(staging))
        _portable_config(staging / "config.json")
        try:
            os.rename(staging, folder)
        except OSError:  # another process finished first: keep its folder
            if not is_static_folder(folder):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _portable_config(config: Path) -> None:
    """model2vec writes the source's absolute path into config.json (`tokenizer_name`, metadata it never
    loads from); keeping only its folder name makes the model's bytes, hence `embedding_key` and every
    cached vector's key, the same from any checkout or virtualenv."""
    fields = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(fields.get("tokenizer_name"), str):
        fields["tokenizer_name"] = Path(fields["tokenizer_name"]).name
    config.write_text(json.dumps(fields, indent=4), encoding="utf-8")


def distill(source_folder: str | Path, spec: DistillSpec):
    """A model2vec StaticModel from a local transformer folder: safetensors weights only, no remote code."""
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(source_folder), use_safetensors=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(str(source_folder), use_fast=True, trust_remote_code=False)
    return distill_from_model(model, tokenizer, device="cpu", pca_dims=spec.pca_dims,
                              sif_coefficient=spec.sif_coefficient, pooling=spec.pooling, quantize_to=spec.dtype)


class StaticEncoder:
    """Mean of token vectors, unit-normalised: the subset of SentenceTransformer's interface stages use.

    Documents are truncated to `max_seq_length` tokens like the transformer path. A document with no known
    token (only emoji, say) would get a zero vector; it gets one shared unit vector instead, so every
    embedding has unit norm and such documents cluster together.
    """

    def __init__(self, folder: str | Path, max_seq_length: int | None = None):
        from model2vec import StaticModel

        self.folder = Path(folder)
        self.model = StaticModel.from_pretrained(str(folder))
        self.max_seq_length = max_seq_length

    def get_embedding_dimension(self) -> int:
        return int(self.model.dim)

    def encode(self, texts: Sequence[str], **_: object) -> np.ndarray:
        """float32 [len(texts), dim]; SentenceTransformer's keyword arguments (batch size...) are ignored.

        A document's vector depends on its own tokens only, so the batch size changes nothing but speed
        (model2vec's default is used). Its multiprocessing is off: shard workers already own their cores.
        """
        vectors = self.model.encode(list(texts), max_length=self.max_seq_length, normalize=True,
                                    use_multiprocessing=False, show_progress_bar=False).astype(np.float32)
        if len(vectors):
            empty = np.linalg.norm(vectors, axis=1) < 0.5
            vectors[empty] = 1.0 / np.sqrt(vectors.shape[1])
        return vectors
