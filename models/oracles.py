"""The MATES one-step oracle and cheap estimates of it.

Oracle (Yu et al., 2024): from the current checkpoint, take ONE AdamW step on a candidate document alone,
then measure the mean loss on a reference set; score = loss_before - loss_after (higher is better).
It is exact but costs a forward+backward on the document and a full reference evaluation per document.
`exact_probes` runs it as a loop of real optimizer steps (CPU default) or, batched with torch.func, as
`exact_probes_batched` (CUDA default; same scores to rounding).

`fast_probes` replaces the per-document reference evaluation. Default estimator: "shifted".
WHY (tiny proxy, vocab 4096, seq 128, 32 reference rows, probe lr 1e-3, 100 pool docs; see
benchmarks/oracle_probes.py): the plain first-order estimate <g_ref(theta), Delta_doc> reaches Spearman
only 0.78 against the exact oracle after 300 training steps and 0.40 after 50. The gap is curvature,
not noise: adding 0.5 Delta^T H_ref Delta (a Hessian-vector product) lifts it to 0.999, the fp32 exact
oracle agrees with fp64 to Spearman 0.9996, clipping does not matter (every doc is clipped; estimating
with the unclipped update changes Spearman by < 0.03), and at probe lr 1e-4 / 1e-5 plain first order
is already 0.997 / 0.9999: linearity breaks between 1e-4 and 1e-3. Most of the curvature comes from the
part of the step all documents SHARE (momentum b1*m and weight decay, i.e. the step with a zero
gradient): "shifted" evaluates that shared step exactly once and linearises only the document's own part
around it. Same per-document cost as first order, Spearman 0.92 (300 steps) and 0.86 (50 steps). The
Hessian-vector variants ("second_order", "shifted_second_order") are exact to 0.999-1.0 but cost ~4x MORE
than the exact probe itself, so they exist only as research options.

Lessons measured in this project (see shared/research.md) shape the code:
- `optimizer.load_state_dict` keeps the saved tensors (`step`, and the moments when dtype and device
  match) by reference, so an un-copied state is advanced by each probe: always load a deep copy.
- The one-step loss change is tiny; bf16 or TF32 rounding swamps it, so everything here runs without
  autocast and with full-precision matmuls, in the model's own dtype (float32, or float64 in tests).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from models import fast_oracle
from models.proxy_lm import lm_loss
from models.trainer import param_groups

REFERENCE_BATCH = 16
"""Reference rows per forward pass when evaluating the reference loss or its gradient."""
EXACT_GPU_BATCH = 8
"""Candidates per vmapped exact probe on CUDA (B stacked copies of the weights and B reference passes)."""
FAST_BATCH = {"cpu": 4, "cuda": 32}
"""Documents per vmap(grad) call in the fast probes, by device: B per-document gradient copies of the
weights. On 2 CPU cores vmap does not beat a backward loop (16 per call measured slower than 4)."""
DEFAULT_ESTIMATOR = "shifted"
"""`fast_probes`' estimator; the evidence for the choice is in the module docstring."""


@dataclass
class ProbeConfig:
    """Hyperparameters of the probe step (MATES: lr 1e-3, wd 0.1, betas (0.9, 0.95), clip 1.0)."""

    lr: float
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    eps: float = 1e-8


@dataclass
class ProbeScores:
    """Exact oracle results, one entry per document."""

    scores: np.ndarray  # loss_before - loss_after
    loss_before: np.ndarray
    loss_after: np.ndarray


@contextmanager
def _exact_numerics(model: torch.nn.Module) -> Iterator[torch.device]:
    """Eval mode (no dropout), no autocast, no TF32; restores all three afterwards. Yields the device."""
    device = next(model.parameters()).device
    was_training = model.training
    matmul_precision = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    model.eval()
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield device
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        model.train(was_training)


def _reference_loss_sum(model: torch.nn.Module, ref: torch.Tensor, batch_size: int, device: torch.device):
    """Yield (token-loss sum of a batch, tokens in all of ref): the reference mean is their total / tokens."""
    n_tokens = ref.shape[0] * (ref.shape[1] - 1)
    for start in range(0, len(ref), batch_size):
        yield lm_loss(model, ref[start : start + batch_size].to(device), reduction="sum"), n_tokens


def reference_loss(model: torch.nn.Module, ref: torch.Tensor, batch_size: int = REFERENCE_BATCH) -> float:
    """Mean next-token loss of `model` on the reference rows `ref` [n, L], in the model's dtype, no autocast."""
    with _exact_numerics(model) as device, torch.no_grad():
        total = 0.0
        for loss_sum, n_tokens in _reference_loss_sum(model, ref, batch_size, device):
            total += loss_sum.double().item()
    return total / n_tokens


def _probe_optimizer(
    model: torch.nn.Module, optimizer_state: dict[str, Any] | None, cfg: ProbeConfig
) -> torch.optim.AdamW:
    """AdamW with the trainer's group layout, a DEEP COPY of the saved state, and the probe's hyperparameters.

    load_state_dict also restores the saved groups' lr/betas/wd (the training schedule's); they are set back
    to the probe's, together with the implementation flags (fused/foreach) chosen for this device.
    """
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )
    if optimizer_state and optimizer_state.get("state"):
        probe_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        for group, probe_group in zip(optimizer.param_groups, probe_groups):
            group.update(probe_group)
    return optimizer


def exact_probe(
    model: torch.nn.Module,
    optimizer_state: dict[str, Any] | None,
    doc: torch.Tensor,
    ref: torch.Tensor,
    cfg: ProbeConfig,
    loss_before: float | None = None,
) -> tuple[float, float, float]:
    """MATES oracle for one document `doc` [1, L]: (loss_before - loss_after, loss_before, loss_after).

    The weights (and any .grad) are restored bit-identically afterwards, even if the probe fails, and
    `optimizer_state` is never modified, so probes are independent of each other and of their order.
    """
    if loss_before is None:
        loss_before = reference_loss(model, ref)
    params = list(model.parameters())
    saved_weights = [p.detach().clone() for p in params]
    saved_grads = [p.grad for p in params]
    optimizer = _probe_optimizer(model, optimizer_state, cfg)
    try:
        for p in params:
            p.grad = None
        with _exact_numerics(model) as device:
            lm_loss(model, doc.to(device)).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        loss_after = reference_loss(model, ref)
    finally:
        with torch.no_grad():
            for p, saved in zip(params, saved_weights):
                p.copy_(saved)
        for p, grad in zip(params, saved_grads):
            p.grad = grad
    return loss_before - loss_after, loss_before, loss_after


def exact_probes(
    model: torch.nn.Module,
    optimizer_state: dict[str, Any] | None,
    docs: list[torch.Tensor],
    ref: torch.Tensor,
    cfg: ProbeConfig,
    progress: bool = True,
    batch: int | None = None,
) -> ProbeScores:
    """`exact_probe` for each document; the reference loss before the step is computed once.

    `batch` None picks the implementation by device: `exact_probes_batched` (8 candidates per vmap) on
    CUDA, where it fills the GPU, and the sequential loop on CPU, where it measured no faster (see
    benchmarks/oracle_probes.py). 0 forces the loop, a positive number the batched path with that batch.
    """
    if batch is None:
        batch = EXACT_GPU_BATCH if next(model.parameters()).is_cuda else 0
    if batch > 0:
        return exact_probes_batched(model, optimizer_state, docs, ref, cfg, batch)
    loss_before = reference_loss(model, ref)
    rows = [
        exact_probe(model, optimizer_state, doc, ref, cfg, loss_before)
        for doc in tqdm(docs, desc="exact probes", disable=None if progress else True)
    ]
    table = np.array(rows, dtype=np.float64).reshape(len(docs), 3)
    return ProbeScores(scores=table[:, 0], loss_before=table[:, 1], loss_after=table[:, 2])




def exact_probes_batched(
    model: torch.nn.Module,
    optimizer_state: dict[str, Any] | None,
    docs: list[torch.Tensor],
    ref: torch.Tensor,
    cfg: ProbeConfig,
    batch: int = EXACT_GPU_BATCH,
) -> ProbeScores:
    """The exact oracle for `batch` candidates at a time with torch.func (same scores as `exact_probes`).

    The AdamW step is re-derived functionally (fast_oracle.adamw_step) from a read-only view of the saved
    moments, so neither the weights nor `optimizer_state` are ever written.
    """
    loss_before = reference_loss(model, ref)
    with _exact_numerics(model) as device:
        snap = fast_oracle.snapshot(model, optimizer_state, cfg.weight_decay)
        after = fast_oracle.exact_batched(
            model, snap, [d.to(device) for d in docs], ref.to(device), cfg, batch, REFERENCE_BATCH
        )
    before = np.full(len(docs), loss_before)
    return ProbeScores(scores=before - after, loss_before=before, loss_after=after)


def fast_probes(
    model: torch.nn.Module,
    optimizer_state: dict[str, Any] | None,
    docs: list[torch.Tensor],
    ref: torch.Tensor,
    cfg: ProbeConfig,
    progress: bool = True,
    method: str = DEFAULT_ESTIMATOR,
    batch: int | None = None,
) -> np.ndarray:
    """Cheap estimate of `exact_probe`'s score per document (`method`: see fast_oracle.ESTIMATORS, or
    "first_order_loop", the per-document backward-loop version of "first_order", kept as the fallback).

    The model's weights and .grad are never touched and the reference set is evaluated once (twice for
    "shifted"), never per document.
    """
    if method == "first_order_loop":
        return _first_order_loop(model, optimizer_state, docs, ref, cfg, progress)
    if batch is None:
        batch = FAST_BATCH["cuda" if next(model.parameters()).is_cuda else "cpu"]
    with _exact_numerics(model) as device:
        snap = fast_oracle.snapshot(model, optimizer_state, cfg.weight_decay)
        out = fast_oracle.estimate(
            model, snap, [d.to(device) for d in docs], ref.to(device), cfg, (method,), batch, REFERENCE_BATCH
        )
    return out[method]


def _first_order_loop(
    model: torch.nn.Module,
    optimizer_state: dict[str, Any] | None,
    docs: list[torch.Tensor],
    ref: torch.Tensor,
    cfg: ProbeConfig,
    progress: bool = True,
) -> np.ndarray:
    """<g_ref, AdamW update on doc alone> with one autograd backward per document (no torch.func)."""
    entries = fast_oracle.adam_moments(model, optimizer_state, cfg.weight_decay)
    params = [e[0] for e in entries]
    b1, b2 = cfg.beta1, cfg.beta2
    estimates = np.zeros(len(docs), dtype=np.float64)
    with _exact_numerics(model) as device:
        g_ref = [torch.zeros_like(p) for p in params]
        for loss_sum, n_tokens in _reference_loss_sum(model, ref, REFERENCE_BATCH, device):
            for acc, g in zip(g_ref, torch.autograd.grad(loss_sum / n_tokens, params)):
                acc += g
        # The decoupled weight decay p <- p (1 - lr wd) moves every probe the same way: a shared term.
        with torch.no_grad():
            decay_term = cfg.lr * sum(
                wd * torch.sum(gr * p).item() for gr, (p, _, _, _, wd) in zip(g_ref, entries)
            )
        for i, doc in enumerate(tqdm(docs, desc="fast probes", disable=None if progress else True)):
            grads = torch.autograd.grad(lm_loss(model, doc.to(device)), params)
            with torch.no_grad():
                # the real step clips first: the same coefficient as torch.nn.utils.clip_grad_norm_
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                clip = (cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0) if cfg.grad_clip > 0 else 1.0
                total = torch.zeros((), dtype=torch.float64, device=device)  # one GPU sync per document
                for gr, g, (p, m, v, step, _) in zip(g_ref, grads, entries):
                    g = g * clip
                    t = step + 1
                    m_hat = (b1 * m + (1 - b1) * g) / (1 - b1**t)
                    v_hat = (b2 * v + (1 - b2) * g * g) / (1 - b2**t)
                    total += torch.sum(gr * m_hat / (v_hat.sqrt() + cfg.eps)).double()
                estimates[i] = decay_term + cfg.lr * total.item()
    return estimates
