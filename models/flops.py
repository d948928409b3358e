"""Model-FLOPs accounting for the GPTNeoX proxy LM: FLOPs per trained token, device peaks, and MFU.

Tokens/s alone cannot tell whether a GPU run is any good (a 25m model at 1M tok/s may still idle an H100);
model FLOPs utilisation (MFU) compares the FLOPs the *model* needs with what the chip could do. We count
model FLOPs, not hardware FLOPs: recomputation, padding or wasted causal-mask work do not inflate it, so MFU
is comparable across implementations (PaLM, Appendix B; the same convention as nanoGPT/nanochat).
"""

from __future__ import annotations

import os
from typing import Any

import torch

PEAK_ENV = "INFLUMIX_PEAK_FLOPS"

# Dense (no 2:4 sparsity) peak FLOP/s from the vendor datasheets. The first matching name wins, so the
# specific variants (PCIe, NVL) come before the generic SXM entry of the same chip. float32 is plain FP32
# (torch's default matmul precision "highest" does not use TF32); tf32 applies when the user enables it.
_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("h100 pcie", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("h100 nvl", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("h200 nvl", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("h100", {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}),  # SXM ("H100 80GB HBM3")
    ("h200", {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}),  # same die as H100 SXM
    ("a100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
]
_DTYPE_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "tf32": "tf32",
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
}


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _config_of(model_or_config: Any) -> Any:
    config = getattr(unwrap_model(model_or_config), "config", None) if isinstance(
        model_or_config, torch.nn.Module) else model_or_config
    if config is None or not hasattr(config, "num_hidden_layers"):
        raise TypeError("expected a GPTNeoX model or its config (with num_hidden_layers, hidden_size, ...)")
    return config


def _matmul_params_from_config(config: Any) -> int:
    """Parameters that take part in per-token compute, from a GPTNeoXConfig (see `matmul_params`)."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    bias = bool(getattr(config, "attention_bias", True))
    per_layer = (
        4 * h  # input and post-attention LayerNorm (weight + bias)
        + 3 * h * h + (3 * h if bias else 0)  # fused query_key_value
        + h * h + (h if bias else 0)  # attention output projection
        + h * i + i + i * h + h  # MLP up and down projections with biases
    )
    return config.num_hidden_layers * per_layer + 2 * h + v * h  # final LayerNorm, LM head


def matmul_params(model_or_config: Any) -> int:
    """N in 6N: every parameter except the input embedding; the LM head is *included*.

    The input embedding is a table lookup (no multiply-adds), so Kaplan et al. leave it out. The output
    head is a real [hidden x vocab] matmul per token and, with the proxy's small hidden size and untied
    embeddings, it is a large share of the compute (more than half for "tiny"), so nanochat and we count it.
    With tied embeddings the head is the same tensor as the input table and is counted once, as the head.
    """
    if not isinstance(model_or_config, torch.nn.Module):
        return _matmul_params_from_config(_config_of(model_or_config))
    model = unwrap_model(model_or_config)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embed_in = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed_in
    return total if tied else total - embed_in.numel()


def flops_per_token(model_or_config: Any, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of a causal LM over contexts of `seq_len` tokens.

    6N + 12 * n_layers * hidden * seq_len (PaLM, Appendix B; nanochat's `estimate_flops`):
    * 6N: each parameter in a matmul costs 2 FLOPs (multiply + add) per token in the forward pass and
      4 in the backward pass (gradient w.r.t. the input and w.r.t. the weight): 2 + 4 = 6.
    * attention: per layer and token, Q @ K^T and softmax(.) @ V each cost 2 * seq_len * hidden in the
      forward pass; times 3 for forward + backward gives 12 * seq_len * hidden. The full (non-causal)
      score matrix is counted, as PaLM does; the eager attention used here does compute all of it.
    Elementwise work (LayerNorm, softmax, GELU, rotary) is left out: it is small and memory-bound.
    """
    if seq_len < 1:
        raise ValueError("seq_len must be positive")
    config = _config_of(model_or_config)
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return float(6 * matmul_params(model_or_config) + attention)


def _normalize_dtype(dtype: str | torch.dtype) -> str | None:
    return _DTYPE_ALIASES.get(str(dtype).lower())


def device_peak_flops(device: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one `device` for `dtype` (bf16, fp16, tf32, fp32), or None when unknown.

    `device` is a torch device ("cuda", "cuda:1": the name is queried from the driver) or a GPU name as
    `torch.cuda.get_device_name` gives it ("NVIDIA H100 80GB HBM3"). Env var INFLUMIX_PEAK_FLOPS (FLOP/s,
    e.g. 1.5e12) overrides the table for any device: CPUs have no meaningful single peak (it depends on
    the SIMD width, cores and clocks in use), so MFU on CPU is only reported when someone measured one.
    An unknown GPU gives None rather than a guess: a wrong peak gives a confidently wrong MFU.
    """
    override = os.environ.get(PEAK_ENV)
    if override:
        return float(override)
    kind = _normalize_dtype(dtype)
    if kind is None:  # float64, int8, ...: no entry, and no reason to fail a training run over a metric
        return None
    name = device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(torch.device(device))
    lowered = name.lower()
    for key, peaks in _PEAKS:
        if key in lowered:
            return peaks.get(kind)
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s over `peak` (None without a peak).

    With data parallelism pass either the global tokens/s and `peak * world_size`, or one rank's tokens/s
    and the per-device peak; both give the per-device MFU.
    """
    if peak is None or peak <= 0:
        return None
    return tokens_per_s * flops_per_token / peak
