"""Group influence by a short multi-step rollout (Group-MATES): what k real training steps on a batch do.

One-step probes of single documents do not add up: a batch's effect depends on what is inside it
(redundancy, order, Adam's moments building up over the steps). The rollout measures it directly: from a
checkpoint's weights and optimizer state, train `steps` real AdamW steps on rows packed from a batch of
documents (an arm's sample), measure the reference loss, then put the weights, buffers, gradients and
optimizer state back bit for bit (`restored`), so rollouts are independent of each other and of their order.

    effect  = (reference loss before - after) / trained tokens          (a loss drop per trained token)
    reward  = effect(arm batch) - effect(random pool batch)             (control variate)

Why the control: every rollout shares a large part of its effect, the general learning any data gives a
young model plus the drift of momentum and weight decay, and that part moves with the checkpoint. The
difference isolates what the arm adds over an ordinary batch.

Reusing one control per checkpoint: the control is the same for every arm, so it shifts all of a
checkpoint's rewards by the same amount and never changes how arms rank against each other. Its noise
matters only where a reward is compared with a threshold or with another checkpoint's rewards; there a
control averaged over a few random batches (`control_baseline`, with its standard error) is enough, and
it costs a few rollouts per checkpoint instead of one per arm.

Cost on CPU: a rollout is `steps` training steps plus one reference forward; batches of 8 to 16 rows of
128 tokens are where the tiny proxy trains fastest on one core (~4k tokens/s measured for 8, 16 and 32),
and the reference loss before the rollouts is computed once per checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.oracles import reference_loss
from models.proxy_lm import lm_loss, pack_sequences


@dataclass(frozen=True)
class RolloutConfig:
    """`steps` AdamW steps of `rows_per_step` packed rows each; `lr` None keeps the optimizer's own lr."""

    steps: int = 8
    rows_per_step: int = 8
    lr: float | None = None
    grad_clip: float = 1.0

    @property
    def rows(self) -> int:
        return self.steps * self.rows_per_step


@dataclass
class SavedState:
    """Copies of everything a training step changes: weights, buffers, grads, optimizer state and groups."""

    params: list[torch.Tensor]
    buffers: list[torch.Tensor]
    grads: list[torch.Tensor | None]
    optimizer_state: dict[torch.Tensor, dict[str, Any]]
    group_settings: list[dict[str, Any]]
    training: bool


def save_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> SavedState:
    """Clone the model's parameters, buffers and grads and the optimizer's per-parameter state."""
    def clone(value: Any) -> Any:
        return value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)

    return SavedState(
        params=[p.detach().clone() for p in model.parameters()],
        buffers=[b.detach().clone() for b in model.buffers()],
        grads=[None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        optimizer_state={p: {k: clone(v) for k, v in s.items()} for p, s in optimizer.state.items()},
        group_settings=[{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        training=model.training,
    )


def restore_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: SavedState) -> None:
    """Write `saved` back IN PLACE: the same tensor objects hold the old values again.

    In place, not `load_state_dict`: anything that kept a reference to a state tensor (a state_dict taken
    earlier, the optimizer's own `step` tensors) sees the restored values, and nothing saved is aliased
    into the live state, so the next rollout cannot advance the saved copy (research.md's `step` bug).
    """
    with torch.no_grad():
        for p, value in zip(model.parameters(), saved.params):
            p.copy_(value)
        for b, value in zip(model.buffers(), saved.buffers):
            b.copy_(value)
    for p, grad in zip(model.parameters(), saved.grads):
        p.grad = None if grad is None else grad.clone()
    for p in [p for p in optimizer.state if p not in saved.optimizer_state]:
        del optimizer.state[p]  # state the rollout created for a parameter that had none
    for p, entries in saved.optimizer_state.items():
        live = optimizer.state[p]
        for key in [k for k in live if k not in entries]:
            del live[key]
        for key, value in entries.items():
            current = live.get(key)
            if (isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor)
                    and current.shape == value.shape and current.dtype == value.dtype):
                current.copy_(value)
            else:
                live[key] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
    for group, settings in zip(optimizer.param_groups, saved.group_settings):
        group.update(copy.deepcopy(settings))
    model.train(saved.training)


@contextmanager
def restored(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Run the block, then put model and optimizer back exactly as they were (also if the block raises)."""
    saved = save_state(model, optimizer)
    try:
        yield
    finally:
        restore_state(model, optimizer, saved)


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rows: torch.Tensor,
                cfg: RolloutConfig) -> None:
    """`cfg.steps` real AdamW steps on consecutive slices of `rows` (fp32, no autocast, clipped)."""
    if len(rows) < cfg.rows:
        raise ValueError(f"a rollout needs {cfg.rows} rows ({cfg.steps} steps x {cfg.rows_per_step}), got {len(rows)}")
    device = next(model.parameters()).device
    if cfg.lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
    model.train()
    with torch.autocast(device.type, enabled=False):
        for i in range(cfg.steps):
            optimizer.zero_grad(set_to_none=True)
            lm_loss(model, rows[i * cfg.rows_per_step:(i + 1) * cfg.rows_per_step].to(device)).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class RolloutEffect:
    """One rollout: reference loss before and after, the tokens trained on, and the drop per token."""

    loss_before: float
    loss_after: float
    tokens: int

    @property
    def drop(self) -> float:
        return self.loss_before - self.loss_after

    @property
    def per_token(self) -> float:
        return self.drop / self.tokens


def rollout_effect(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rows: torch.Tensor, ref: torch.Tensor,
                   cfg: RolloutConfig, loss_before: float | None = None) -> RolloutEffect:
    """Train `cfg.steps` steps on `rows`, measure the mean reference loss on `ref`, restore everything.

    Pass `loss_before` (one `reference_loss` per checkpoint) when running many rollouts from one state.
    """
    if loss_before is None:
        loss_before = reference_loss(model, ref)
    with restored(model, optimizer):
        train_steps(model, optimizer, rows, cfg)
        after = reference_loss(model, ref)
    return RolloutEffect(float(loss_before), float(after), cfg.rows * rows.shape[1])


def rollout_rows(token_lists: Sequence[Sequence[int]], cfg: RolloutConfig, seq_len: int, eos_id: int
                 ) -> torch.Tensor | None:
    """Pack documents (in the given order, each followed by EOS) into exactly `cfg.rows` rows, or None if
    they hold fewer tokens than that. Draw the documents in random order: packing keeps their order."""
    rows, _ = pack_sequences([list(t) for t in token_lists], seq_len, eos_id)
    return rows[:cfg.rows] if len(rows) >= cfg.rows else None


@dataclass
class Control:
    """Per-token effects of random pool batches from one checkpoint; their mean is every arm's baseline."""

    effects: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.effects.mean())

    @property
    def standard_error(self) -> float:
        n = len(self.effects)
        return float(self.effects.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def control_baseline(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[torch.Tensor],
                     ref: torch.Tensor, cfg: RolloutConfig, loss_before: float) -> Control:
    """Rollouts on random pool batches: the control shared by every arm of this checkpoint."""
    if not batches:
        raise ValueError("a control needs at least one random pool batch")
    return Control(np.array([rollout_effect(model, optimizer, rows, ref, cfg, loss_before).per_token
                             for rows in batches]))


@dataclass
class GroupRewards:
    """Each arm batch's per-token effect, the shared control, and reward = effect - control mean."""

    effects: np.ndarray
    control: Control
    loss_before: float
    rewards: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rewards = self.effects - self.control.mean


def group_rewards(model: torch.nn.Module, optimizer: torch.optim.Optimizer, arm_batches: Sequence[torch.Tensor],
                  ref: torch.Tensor, cfg: RolloutConfig, control_batches: Sequence[torch.Tensor] = (),
                  control: Control | None = None, loss_before: float | None = None) -> GroupRewards:
    """Rollout rewards of arm batches against a control (given, or measured here on `control_batches`)."""
    if loss_before is None:
        loss_before = reference_loss(model, ref)
    if control is None:
        control = control_baseline(model, optimizer, control_batches, ref, cfg, loss_before)
    effects = np.array([rollout_effect(model, optimizer, rows, ref, cfg, loss_before).per_token for rows in arm_batches])
    return GroupRewards(effects, control, float(loss_before))
