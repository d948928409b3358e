"""Vectorised (torch.func) oracle probes: many candidate documents per call instead of a Python loop.

Why a second module: `models.oracles` keeps the sequential, obviously-correct MATES probe (a real
torch.optim.AdamW step). This module re-derives the same step functionally so that it can be vmapped:

- per-document gradients with vmap(grad(loss)) over documents bucketed by length (right padding plus a
  loss mask; attention is causal, so padding after a document never changes its logits);
- the AdamW update from the saved moments, per candidate, written as torch's single-tensor AdamW writes it
  (clip by the total norm with clip_grad_norm_'s +1e-6, decoupled decay p*(1-lr*wd), lerp for the first
  moment, mul+addcmul for the second, addcdiv with bias corrections) so batched and sequential agree;
- the reference loss of every candidate's updated weights with vmap over stacked parameter sets.

Estimators of the score  loss_ref(theta) - loss_ref(theta + Delta_doc)  (see `fast_probes` in oracles.py
for which one is the default and the measurements behind the choice):

- "first_order": -<g_ref(theta), Delta_doc>.
- "shifted": every candidate's step shares a large part, Delta_0 = the AdamW step with a ZERO gradient
  (momentum b1*m and weight decay); only delta_doc = Delta_doc - Delta_0 differs between documents. The
  shared part is evaluated exactly once (loss at theta_0 = theta + Delta_0) and the document part is
  linearised there:  [L(theta) - L(theta_0)] - <g_ref(theta_0), delta_doc>.  This captures the cross
  curvature term delta^T H Delta_0 that "first_order" misses, for one extra reference backward in total.
- "shifted_remainder": "shifted" plus the exact second-order remainder of the document's own step,
  L(theta_0 + delta) - L(theta_0) - <g(theta_0), delta>, measured on only REMAINDER_ROWS evenly spaced
  reference rows: curvature is smooth across reference tokens, so a few rows estimate it well, and the
  per-document cost is a forward on those rows instead of on the whole reference set.
- "second_order" / "shifted_second_order": the two above minus 0.5 d^T H_ref d (d = Delta_doc or delta_doc)
  with one Hessian-vector product (jvp of the reference gradient) per document: research only, it costs
  more than the exact probe itself.

Not an estimate of that score but a different oracle: "gradient_cosine", cos(g_doc(theta), g_ref(theta))
(as in LESS/TracIn, without the optimizer state). Why offered: after a stage trained on a mixture, Adam's
second moments are large exactly where that mixture pushed, so a one-step probe from the checkpoint's
state down-weights more of the same data; the cosine reads only the loss landscape. In a look at the
selection benchmark's stored probes it ranked wiki and news higher than the Adam probe at later stages,
but it did not select better (README, "Selection benchmark", ablation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

from models.trainer import param_groups

Params = dict[str, torch.Tensor]
ESTIMATORS = ("first_order", "shifted", "shifted_remainder", "second_order", "shifted_second_order", "gradient_cosine")
REMAINDER_ROWS = 4
"""Reference rows on which "shifted_remainder" evaluates the document's curvature term exactly."""


@dataclass
class AdamSnapshot:
    """The saved AdamW state, by parameter name, ready for a functional step (never aliases the saved dict)."""

    params: Params
    buffers: Params
    exp_avg: Params
    exp_avg_sq: Params
    step: dict[str, float]
    weight_decay: dict[str, float]


def adam_moments(
    model: torch.nn.Module, optimizer_state: dict[str, Any] | None, weight_decay: float
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]]:
    """(param, exp_avg, exp_avg_sq, step, weight decay) per parameter, from the saved state (zeros if none).

    Saved states index parameters by position within the trainer's param groups; that is the map used here.
    """
    groups = param_groups(model, weight_decay)
    saved_state = (optimizer_state or {}).get("state", {})
    saved_groups = (optimizer_state or {}).get("param_groups")
    entries = []
    for g, group in enumerate(groups):
        ids = saved_groups[g]["params"] if saved_groups else [None] * len(group["params"])
        for p, pid in zip(group["params"], ids):
            state = saved_state.get(pid, {})
            if state:
                m = state["exp_avg"].to(device=p.device, dtype=p.dtype)
                v = state["exp_avg_sq"].to(device=p.device, dtype=p.dtype)
                step = float(state["step"])
            else:  # fresh optimizer: Adam's first step starts from zero moments
                m, v, step = torch.zeros_like(p), torch.zeros_like(p), 0.0
            entries.append((p, m, v, step, group["weight_decay"]))
    return entries


def snapshot(model: torch.nn.Module, optimizer_state: dict[str, Any] | None, weight_decay: float) -> AdamSnapshot:
    """Name-keyed, detached views of the weights and the saved moments (the model is only read)."""
    names = {id(p): n for n, p in model.named_parameters()}
    snap = AdamSnapshot({}, {n: b for n, b in model.named_buffers()}, {}, {}, {}, {})
    for p, m, v, step, wd in adam_moments(model, optimizer_state, weight_decay):
        name = names[id(p)]
        snap.params[name], snap.exp_avg[name], snap.exp_avg_sq[name] = p.detach(), m, v
        snap.step[name], snap.weight_decay[name] = step, wd
    return snap


def length_buckets(docs: list[torch.Tensor], batch: int) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(doc indices, right-padded ids [B, L], lengths [B]) over docs sorted by length, `batch` at a time.

    Sorting first keeps padding (wasted compute) small: a chunk is padded only to its own longest document.
    """
    order = sorted(range(len(docs)), key=lambda i: docs[i].shape[-1])
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        rows = [docs[i].reshape(-1) for i in idx]
        width = max(r.numel() for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
        for j, r in enumerate(rows):
            ids[j, : r.numel()] = r
        yield idx, ids, torch.tensor([r.numel() for r in rows], device=ids.device)


def _doc_loss_fn(model: torch.nn.Module, buffers: Params) -> Callable[..., torch.Tensor]:
    """Mean next-token loss of ONE right-padded document (ids [L], valid length n): vmap-able."""

    def loss(params: Params, ids: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, buffers), args=(), kwargs={"input_ids": ids[None]}).logits[0, :-1]
        tokens = F.cross_entropy(logits, ids[1:], reduction="none")
        mask = torch.arange(ids.shape[0] - 1, device=ids.device) < (n - 1)
        return torch.where(mask, tokens, torch.zeros_like(tokens)).sum() / (n - 1)

    return loss


def per_doc_grads(model: torch.nn.Module, snap: AdamSnapshot, ids: torch.Tensor, lengths: torch.Tensor) -> Params:
    """Per-document loss gradients, name -> [B, *shape], in one vmap(grad) call."""
    return vmap(grad(_doc_loss_fn(model, snap.buffers)), in_dims=(None, 0, 0))(snap.params, ids, lengths)


def clip_coefficients(grads: Params, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip coefficient [B], total grad norm [B]) exactly as torch.nn.utils.clip_grad_norm_ computes them."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    if max_norm <= 0:
        return torch.ones_like(total), total
    return (max_norm / (total + 1e-6)).clamp(max=1.0), total


def _bias(snap: AdamSnapshot, name: str, cfg: Any) -> tuple[float, float]:
    """(step size lr / bc1, sqrt(bc2)) for the probe step t = saved step + 1, as torch's AdamW."""
    t = snap.step[name] + 1
    return cfg.lr / (1 - cfg.beta1**t), (1 - cfg.beta2**t) ** 0.5


def adamw_step(snap: AdamSnapshot, grads: Params | None, cfg: Any) -> Params:
    """The weights after one AdamW step per candidate (name -> [B, *shape]); `grads=None` = zero gradient.

    Mirrors torch's single-tensor AdamW op for op (mul, lerp, mul+addcmul, sqrt/div/add, addcdiv), so the
    batched exact probe reproduces the sequential one to rounding. Gradients must already be clipped.
    """
    out = {}
    for name, p in snap.params.items():
        m, v, wd = snap.exp_avg[name], snap.exp_avg_sq[name], snap.weight_decay[name]
        g = torch.zeros_like(p)[None] if grads is None else grads[name]
        step_size, bc2_sqrt = _bias(snap, name, cfg)
        m_new = torch.lerp(m.expand_as(g), g, 1 - cfg.beta1)
        v_new = torch.addcmul(v * cfg.beta2, g, g, value=1 - cfg.beta2)
        denom = (v_new.sqrt() / bc2_sqrt).add_(cfg.eps)
        decayed = p * (1 - cfg.lr * wd) if wd != 0 else p
        out[name] = torch.addcdiv(decayed.expand_as(g), m_new, denom, value=-step_size)
    return out


def adamw_delta(snap: AdamSnapshot, grads: Params | None, cfg: Any) -> Params:
    """Delta = new - old weights of one AdamW step, computed directly (no cancellation of new - old)."""
    out = {}
    for name, p in snap.params.items():
        m, v, wd = snap.exp_avg[name], snap.exp_avg_sq[name], snap.weight_decay[name]
        g = torch.zeros_like(p)[None] if grads is None else grads[name]
        step_size, bc2_sqrt = _bias(snap, name, cfg)
        m_new = cfg.beta1 * m + (1 - cfg.beta1) * g
        v_new = cfg.beta2 * v + (1 - cfg.beta2) * g * g
        out[name] = -step_size * m_new / (v_new.sqrt() / bc2_sqrt + cfg.eps) - cfg.lr * wd * p
    return out


def clipped_grads(model: torch.nn.Module, snap: AdamSnapshot, ids: torch.Tensor, lengths: torch.Tensor,
                  cfg: Any) -> tuple[Params, torch.Tensor]:
    """Per-document gradients after the probe's total-norm clip, and the unclipped norms [B]."""
    grads = per_doc_grads(model, snap, ids, lengths)
    coef, norms = clip_coefficients(grads, cfg.grad_clip)
    return {n: g * coef.view(-1, *([1] * (g.ndim - 1))) for n, g in grads.items()}, norms


def _ref_chunk_loss_fn(model: torch.nn.Module, buffers: Params) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """Token-loss SUM of reference rows [R, L] under the given weights (functional, vmap-able)."""

    def loss(params: Params, rows: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, buffers), args=(), kwargs={"input_ids": rows}).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1), reduction="sum")

    return loss


def reference_losses(model: torch.nn.Module, snap: AdamSnapshot, stacked: Params, ref: torch.Tensor,
                     ref_batch: int) -> np.ndarray:
    """Mean reference loss of each stacked parameter set (name -> [B, *shape]) with vmap over candidates.

    Per-chunk sums are accumulated in float64 as `oracles.reference_loss` does, so the two agree to rounding.
    """
    f = vmap(_ref_chunk_loss_fn(model, snap.buffers), in_dims=(0, None))
    n_tokens = ref.shape[0] * (ref.shape[1] - 1)
    total = None
    with torch.no_grad():
        for start in range(0, len(ref), ref_batch):
            part = f(stacked, ref[start : start + ref_batch]).double()
            total = part if total is None else total + part
    return (total / n_tokens).cpu().numpy()


def reference_grad(model: torch.nn.Module, snap: AdamSnapshot, params: Params, ref: torch.Tensor,
                   ref_batch: int) -> tuple[float, Params]:
    """(mean reference loss, its gradient) at `params` (name -> tensor), chunked over reference rows."""
    f = grad(_ref_chunk_loss_fn(model, snap.buffers), has_aux=False)
    loss_f = _ref_chunk_loss_fn(model, snap.buffers)
    n_tokens = ref.shape[0] * (ref.shape[1] - 1)
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    loss = 0.0
    for start in range(0, len(ref), ref_batch):
        rows = ref[start : start + ref_batch]
        for n, g in f(params, rows).items():
            acc[n] += g / n_tokens
        with torch.no_grad():
            loss += loss_f(params, rows).double().item()
    return loss / n_tokens, acc


def reference_hvp_quadratic(model: torch.nn.Module, snap: AdamSnapshot, params: Params, direction: Params,
                            ref: torch.Tensor, ref_batch: int) -> float:
    """d^T H_ref d at `params` for one direction d, by a jvp of the reference gradient (forward-over-reverse)."""
    g = grad(_ref_chunk_loss_fn(model, snap.buffers))
    n_tokens = ref.shape[0] * (ref.shape[1] - 1)
    total = 0.0
    for start in range(0, len(ref), ref_batch):
        rows = ref[start : start + ref_batch]
        _, hd = jvp(lambda p, rows=rows: g(p, rows), (params,), (direction,))
        total += sum(torch.sum(hd[n] * direction[n]).double().item() for n in params) / n_tokens
    return total


def dot(a: Params, b: Params) -> torch.Tensor:
    """<a, b> summed over all parameters; b may carry a leading candidate dimension ([B] result)."""
    total = None
    for name, x in a.items():
        y = b[name]
        part = (y.flatten(1) * x.flatten()[None]).sum(1).double() if y.ndim > x.ndim else torch.sum(x * y).double()
        total = part if total is None else total + part
    return total


def add(a: Params, b: Params, scale: float = 1.0) -> Params:
    """a + scale * b, name by name."""
    return {n: a[n] + scale * b[n] for n in a}


def estimate(model: torch.nn.Module, snap: AdamSnapshot, docs: list[torch.Tensor], ref: torch.Tensor, cfg: Any,
             estimators: tuple[str, ...], batch: int, ref_batch: int, clip: bool = True) -> dict[str, np.ndarray]:
    """Scores of several estimators (see ESTIMATORS) sharing one vmap(grad) pass over the documents.

    Also returns "grad_norm" (each document's unclipped gradient norm). `clip=False` estimates with the
    UNclipped update, to measure what clipping does (the exact oracle always clips). The caller sets the
    numerics (eval mode, no autocast, no TF32): see oracles._exact_numerics.
    """
    unknown = set(estimators) - set(ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown estimators {sorted(unknown)}; valid: {', '.join(ESTIMATORS)}")
    shifted = any(e.startswith("shifted") for e in estimators)
    plain = any(not e.startswith("shifted") for e in estimators)
    if plain:
        loss0, g_ref = reference_grad(model, snap, snap.params, ref, ref_batch)
        ref_norm = float(dot(g_ref, g_ref)) ** 0.5
    else:  # "shifted" needs only the loss at theta, not its gradient
        loss0 = float(reference_losses(model, snap, {n: p[None] for n, p in snap.params.items()}, ref, ref_batch)[0])
    if shifted:  # the zero-gradient step all candidates share, evaluated exactly once
        delta0 = {n: d[0] for n, d in adamw_delta(snap, None, cfg).items()}
        theta0 = add(snap.params, delta0)
        loss_shift, g_shift = reference_grad(model, snap, theta0, ref, ref_batch)
    if "shifted_remainder" in estimators:
        sub = ref[torch.linspace(0, len(ref) - 1, min(REMAINDER_ROWS, len(ref))).round().long().unique()]
        sub_base, g_sub = reference_grad(model, snap, theta0, sub, ref_batch)
    out = {e: np.zeros(len(docs)) for e in (*estimators, "grad_norm")}
    for idx, ids, lengths in length_buckets(docs, batch):
        grads, norms = clipped_grads(model, snap, ids, lengths, cfg) if clip else (
            per_doc_grads(model, snap, ids, lengths), None)
        with torch.no_grad():
            if norms is None:
                norms = clip_coefficients(grads, 0.0)[1]
            delta = adamw_delta(snap, grads, cfg)
            out["grad_norm"][idx] = norms.double().cpu().numpy()
            if "gradient_cosine" in out:  # direction only: no optimizer state, no gradient scale
                doc_norm = clip_coefficients(grads, 0.0)[1].double()
                out["gradient_cosine"][idx] = (dot(g_ref, grads) / (doc_norm * ref_norm).clamp_min(1e-30)).cpu().numpy()
            if plain:
                first = (-dot(g_ref, delta)).cpu().numpy()
                if "first_order" in out:
                    out["first_order"][idx] = first
            if shifted:
                local = {n: d - delta0[n] for n, d in delta.items()}
                shifted_first = (loss0 - loss_shift) - dot(g_shift, local).cpu().numpy()
                if "shifted" in out:
                    out["shifted"][idx] = shifted_first
            if "shifted_remainder" in out:
                after = reference_losses(model, snap, add({n: p[None] for n, p in theta0.items()}, local), sub,
                                         ref_batch)
                out["shifted_remainder"][idx] = shifted_first - (after - sub_base - dot(g_sub, local).cpu().numpy())
        for j, i in enumerate(idx):  # research only: one Hessian-vector product per document
            if "second_order" in estimators:
                d = {n: x[j] for n, x in delta.items()}
                quad = reference_hvp_quadratic(model, snap, snap.params, d, ref, ref_batch)
                out["second_order"][i] = first[j] - 0.5 * quad
            if "shifted_second_order" in estimators:
                d = {n: x[j] for n, x in local.items()}
                quad = reference_hvp_quadratic(model, snap, theta0, d, ref, ref_batch)
                out["shifted_second_order"][i] = shifted_first[j] - 0.5 * quad
    return out


def exact_batched(model: torch.nn.Module, snap: AdamSnapshot, docs: list[torch.Tensor], ref: torch.Tensor,
                  cfg: Any, batch: int, ref_batch: int) -> np.ndarray:
    """Reference loss after each document's own AdamW step (the exact oracle's loss_after), `batch` at a time.

    Per chunk: vmap(grad) per-document gradients, total-norm clip, the functional AdamW step into a stack
    of B parameter sets, and the reference loss of all B with vmap over the stack.
    """
    after = np.zeros(len(docs))
    for idx, ids, lengths in length_buckets(docs, batch):
        grads, _ = clipped_grads(model, snap, ids, lengths, cfg)
        with torch.no_grad():
            stacked = adamw_step(snap, grads, cfg)
        del grads
        after[idx] = reference_losses(model, snap, stacked, ref, ref_batch)
    return after
