"""The proxy language model: a small GPTNeoX (Pythia architecture) trained from scratch on the pool.

MATES probes the *current* proxy checkpoint with one optimizer step per candidate document, so the proxy
must be cheap to step and to evaluate; presets go from a CPU-sized "tiny" model to Pythia-410m.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM


@dataclass(frozen=True)
class ProxyPreset:
    """Shape of a proxy model; the vocabulary and context length come from the tokenizer and the run."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


PRESETS: dict[str, ProxyPreset] = {
    # 1.4M params with a 4096 vocabulary (2.5M with 8192; the two embedding matrices dominate): 2 CPU cores.
    "tiny": ProxyPreset("tiny", hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512),
    # 23M params with a 4096 vocabulary, 27M with 8192 (Pythia-70m shape).
    "25m": ProxyPreset("25m", hidden_size=512, num_layers=6, num_heads=8, intermediate_size=2048),
    # Pythia-160m shape: 98M params with an 8192 vocabulary (Pythia's 50k vocabulary makes it 160M).
    "125m": ProxyPreset("125m", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    # Pythia-410m shape, the proxy size of the MATES paper: 319M params with an 8192 vocabulary.
    "410m": ProxyPreset("410m", hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}


def build_proxy_lm(
    preset: str, vocab_size: int, seq_len: int, seed: int, overrides: dict[str, Any] | None = None
) -> GPTNeoXForCausalLM:
    """A freshly initialised GPTNeoX causal LM of the given preset.

    `overrides` replaces any GPTNeoXConfig field (tests use it for even smaller models). Attention is the
    eager (math) path: torch.func transforms (vmap/jvp) used by the fast probes cannot go through SDPA
    kernels, and the exact probe needs deterministic fp32 attention anyway. The global RNG is left untouched
    so building a model never changes what a caller samples next.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown proxy preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    fields: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": p.hidden_size,
        "num_hidden_layers": p.num_layers,
        "num_attention_heads": p.num_heads,
        "intermediate_size": p.intermediate_size,
        "max_position_embeddings": seq_len,
        "rotary_pct": 0.25,  # Pythia: rotary on a quarter of each head (stored as rope_parameters in transformers 5)
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": None,
        "use_cache": False,  # training and probing only, never generation
        "attn_implementation": "eager",
    }
    fields.update(overrides or {})
    config = GPTNeoXConfig(**fields)
    config._attn_implementation = fields["attn_implementation"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    return model


def use_attention(model: GPTNeoXForCausalLM, implementation: str) -> GPTNeoXForCausalLM:
    """Switch the attention kernel in place: SDPA/flash to train fast, eager where torch.func must trace.

    Training never needs torch.func, so it may use the fused kernel; probes load checkpoints as eager.
    """
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = implementation
    return model


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters (embeddings included: they are untied here, so each counts)."""
    return sum(p.numel() for p in model.parameters())


def lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of `input_ids` [B, L] ("mean" over tokens, or "sum").

    Computed here rather than via `labels=`: the loss stays in the model's dtype (float64 in the oracle
    tests); only half-precision logits (bf16 autocast) are upcast to float32.
    """
    logits = model(input_ids=input_ids).logits[:, :-1]
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    targets = input_ids[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


def pack_sequences(token_lists: list[list[int]], seq_len: int, eos_id: int) -> tuple[torch.Tensor, int]:
    """Concatenate documents, each followed by `eos_id`, and cut into full rows of `seq_len`.

    Returns (rows [n, seq_len] int64, n_tokens) where n_tokens = n * seq_len is exactly what training sees;
    the ragged tail is dropped so every row is a full context (no padding, no wasted compute).
    """
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        stream.append(eos_id)
    n_rows = len(stream) // seq_len
    n_tokens = n_rows * seq_len
    rows = torch.tensor(stream[:n_tokens], dtype=torch.long).view(n_rows, seq_len)
    return rows, n_tokens


def save_token_rows(path: str | Path, parts: dict[str, torch.Tensor]) -> None:
    """Named sets of packed token rows ([n, seq_len] int64) as safetensors: data only, nothing unpickled on load."""
    save_file({name: rows.to(torch.long).contiguous() for name, rows in parts.items()}, str(path))


def load_token_rows(path: str | Path, limit: int | None = None, part: str = "rows") -> torch.Tensor:
    """The first `limit` (all if None) rows of set `part` saved by `save_token_rows`."""
    rows = load_file(str(path))[part]
    return rows if limit is None else rows[:limit]


def document_tensor(token_ids: list[int], seq_len: int, eos_id: int) -> torch.Tensor:
    """One document as a [1, L] probe input: truncated to `seq_len`, EOS appended if there is room.

    A next-token loss needs at least 2 tokens, so an (almost) empty document is padded with EOS in front.
    """
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    ids = list(token_ids[:seq_len])
    if len(ids) < seq_len:
        ids.append(eos_id)
    while len(ids) < 2:
        ids.insert(0, eos_id)
    return torch.tensor([ids], dtype=torch.long)


CHARS_PER_TOKEN_CUT = 16
"""`probe_inputs` encodes only a text's first `seq_len * 16` characters (~5x the corpus's 3.4 characters per
token), so a 200k-character document costs what a short one does."""


def probe_inputs(tokenizer, texts: list[str], seq_len: int) -> list[list[int]]:
    """The token ids a probe trains on for each text: `document_tensor` of its proxy-BPE encoding.

    Exact, not approximate: BPE merges never cross the pre-tokenizer's word boundaries, so the tokens before
    the last (possibly cut) word of a prefix are the full text's. A prefix that yields fewer than
    `seq_len + CHARS_PER_TOKEN_CUT` tokens is encoded again whole.
    """
    from models.tokenizer import EOS_TOKEN, encode_documents

    eos = tokenizer.token_to_id(EOS_TOKEN)
    limit = seq_len * CHARS_PER_TOKEN_CUT
    encoded = encode_documents(tokenizer, [t[:limit] for t in texts])
    again = [i for i, (t, ids) in enumerate(zip(texts, encoded, strict=True))
             if len(t) > limit and len(ids) < seq_len + CHARS_PER_TOKEN_CUT]
    for i, ids in zip(again, encode_documents(tokenizer, [texts[i] for i in again]), strict=True):
        encoded[i] = ids
    return [document_tensor(ids, seq_len, eos)[0].tolist() for ids in encoded]
