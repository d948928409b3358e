"""One-step probes from altered optimizer states, sharing one per-document gradient pass.

Why: the README's reading of why model-aware stages drift is that after a stage trained on a mixture,
Adam's second moments v are large where that mixture pushed, so the next probe (which divides by sqrt(v))
down-weights more of the same data. That is testable by probing the SAME checkpoint weights with the
preconditioner changed, and judging each variant by how well it ranks held-out rollout effects:

- "checkpoint": the saved state as it is (the MATES probe; the pipeline's fast "shifted" estimate);
- "fresh": no state (zero moments, step 0): Adam's first step, about lr * sign(g), no memory at all;
- "mean_v": v replaced by its mean over each tensor: the per-tensor scale stays, the per-coordinate
  memory of what the last mixture pushed goes;
- "zero_m": momentum zeroed: no shared momentum step, v kept;
- "other_v": v from another checkpoint, e.g. stage 0's, trained on a random sample;
- "gradient_dot": <g_ref, g_doc> (plain SGD direction, TracIn's term at one checkpoint; summed over
  checkpoints by the caller it is TracIn); "gradient_cosine": the same normalised (LESS).

The Adam variants use fast_oracle's "shifted" estimator (the shared zero-gradient step evaluated exactly,
the document's own part linearised there); the per-document gradients, the costly part, are computed once
for all variants.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models import fast_oracle
from models.oracles import FAST_BATCH, REFERENCE_BATCH, ProbeConfig, _exact_numerics

STATE_VARIANTS = ("checkpoint", "fresh", "mean_v", "zero_m", "other_v")
GRADIENT_SCORES = ("gradient_dot", "gradient_cosine")


def state_variant(optimizer_state: dict[str, Any] | None, kind: str,
                  other: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A deep copy of `optimizer_state` with its moments altered as `kind` says (see the module docstring)."""
    if kind not in STATE_VARIANTS:
        raise ValueError(f"unknown state variant {kind!r}; valid: {', '.join(STATE_VARIANTS)}")
    if kind == "fresh" or not optimizer_state or not optimizer_state.get("state"):
        return None
    state = copy.deepcopy(optimizer_state)
    if kind == "other_v" and (other is None or other.get("state", {}).keys() != state["state"].keys()):
        raise ValueError("'other_v' needs another checkpoint's optimizer state for the same parameters")
    for index, entry in state["state"].items():
        if kind == "mean_v":
            entry["exp_avg_sq"] = torch.full_like(entry["exp_avg_sq"], float(entry["exp_avg_sq"].mean()))
        elif kind == "zero_m":
            entry["exp_avg"] = torch.zeros_like(entry["exp_avg"])
        elif kind == "other_v":
            entry["exp_avg_sq"] = other["state"][index]["exp_avg_sq"].clone()  # own step: bias corrections ~1
    return state


def _shifted_parts(model: torch.nn.Module, snap: fast_oracle.AdamSnapshot, ref: torch.Tensor, cfg: ProbeConfig,
                   loss0: float) -> tuple[dict[str, torch.Tensor], float, dict[str, torch.Tensor]]:
    """The variant's shared zero-gradient step Delta_0, the loss drop it causes, and g_ref there."""
    delta0 = {n: d[0] for n, d in fast_oracle.adamw_delta(snap, None, cfg).items()}
    loss_shift, g_shift = fast_oracle.reference_grad(model, snap, fast_oracle.add(snap.params, delta0), ref,
                                                     REFERENCE_BATCH)
    return delta0, loss0 - loss_shift, g_shift


def probe_variants(model: torch.nn.Module, states: dict[str, dict[str, Any] | None], docs: Sequence[torch.Tensor],
                   ref: torch.Tensor, cfg: ProbeConfig, gradient_scores: bool = True,
                   batch: int | None = None) -> dict[str, np.ndarray]:
    """Scores per document for every named optimizer state (shifted estimate) and the gradient scores.

    `states` maps a name to an optimizer state dict (or None = fresh); e.g. build them with `state_variant`.
    The weights and the given states are only read.
    """
    batch = batch or FAST_BATCH["cuda" if next(model.parameters()).is_cuda else "cpu"]
    out: dict[str, np.ndarray] = {}
    with _exact_numerics(model) as device:
        snaps = {name: fast_oracle.snapshot(model, state, cfg.weight_decay) for name, state in states.items()}
        any_snap = next(iter(snaps.values())) if snaps else fast_oracle.snapshot(model, None, cfg.weight_decay)
        docs = [d.to(device) for d in docs]
        ref = ref.to(device)
        loss0, g_ref = fast_oracle.reference_grad(model, any_snap, any_snap.params, ref, REFERENCE_BATCH)
        ref_norm = float(fast_oracle.dot(g_ref, g_ref)) ** 0.5
        parts = {name: _shifted_parts(model, snap, ref, cfg, loss0) for name, snap in snaps.items()}
        names = [*snaps, *(GRADIENT_SCORES if gradient_scores else ())]
        out = {name: np.zeros(len(docs)) for name in names}
        for idx, ids, lengths in fast_oracle.length_buckets(docs, batch):
            raw = fast_oracle.per_doc_grads(model, any_snap, ids, lengths)
            with torch.no_grad():
                coef, norms = fast_oracle.clip_coefficients(raw, cfg.grad_clip)
                clipped = {n: g * coef.view(-1, *([1] * (g.ndim - 1))) for n, g in raw.items()}
                for name, snap in snaps.items():
                    delta0, shared_drop, g_shift = parts[name]
                    local = {n: d - delta0[n] for n, d in fast_oracle.adamw_delta(snap, clipped, cfg).items()}
                    out[name][idx] = shared_drop - fast_oracle.dot(g_shift, local).cpu().numpy()
                if gradient_scores:
                    dots = fast_oracle.dot(g_ref, raw).double()
                    out["gradient_dot"][idx] = dots.cpu().numpy()
                    out["gradient_cosine"][idx] = (dots / (norms.double() * ref_norm).clamp_min(1e-30)).cpu().numpy()
    return out
