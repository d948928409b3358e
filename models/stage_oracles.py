"""The oracles a stage's bandit spends: real measurements of what documents do to the reference loss.

Both take a proxy checkpoint (weights + Adam state) and the reference halves (models/conditional_loss.py:
"fit" to adapt to, "measure" to take values on), and return one value per document (higher = better):

* `ConditionalOracle` (the default): CoLoR-Filter's conditional loss reduction, the document's mean token
  loss under the checkpoint minus under the checkpoint briefly fine-tuned on the fit half (the number of
  steps chosen on the measure half); by default averaged with a second copy fine-tuned the other way round
  (`probe.conditional_folds`). One forward pass per document for the checkpoint and one per fold once the
  fine-tunes are done. Why the default: in benchmarks/signal_study.py (the whole shared corpus, 4 x 65k
  tokens) top-k on it gave a held-out reference loss of 6.002 against DSIR's 6.050, the wiki+news mix's
  6.114 and 6.315 for MATES-style one-step probes distilled by the token model.
* `OneStepOracle`: MATES's probe, the loss drop on the measure half after one AdamW step on the document
  alone: the fast first-order estimate for every document, the exact step on a slice of each pull to keep
  the estimate honest (their agreement is reported).

`GroupOracle` adds Group-MATES's view: a short rollout (models/rollout.py) on a batch of an arm's documents
minus the same for random pool batches, one per arm and checkpoint; the model is restored bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.conditional_loss import FinetuneConfig, FinetuneTrace, document_drops, finetune_folds
from models.oracles import ProbeConfig, exact_probes, fast_probes, reference_loss
from models.rollout import Control, RolloutConfig, rollout_effect


@dataclass
class OracleValues:
    """One pull's measurements: the value per document, and what else the oracle measured on them."""

    values: np.ndarray
    exact: np.ndarray | None = None  # one-step: the exact probe where it ran (NaN elsewhere)
    loss_before: np.ndarray | None = None
    loss_after: np.ndarray | None = None
    spread: np.ndarray | None = None  # conditional: within-document variance of the per-token drop (NaN: 1 token)
    tokens: np.ndarray | None = None  # conditional: predicted tokens per document (what the values average over)


class ConditionalOracle:
    """Conditional loss reduction under a checkpoint (see the module docstring).

    With `folds=2` a second copy is fine-tuned on the measure half (stopped on the fit half) and the two
    drops are averaged: CoLoR-Filter's cross-fit "vice versa", the folds of `finetune_folds` in
    models/conditional_loss.py. Each fine-tune then sees the whole visible reference between them, and the
    values depend less on which passages one half happens to hold. The measure half is no longer free of the
    oracle's fitting data, so a stage that also measures rollouts or one-step probes on it should keep one fold.
    """

    name = "conditional"

    def __init__(self, model: torch.nn.Module, optimizer_state: dict[str, Any] | None, fit_rows: torch.Tensor,
                 measure_rows: torch.Tensor, cfg: FinetuneConfig, shrink_tokens: float = 0.0,
                 folds: int = 1) -> None:
        started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.prior, self.shrink = model, shrink_tokens
        self.conditionals, self.traces = finetune_folds(model, optimizer_state, (fit_rows, measure_rows), cfg, folds)
        self.setup_seconds = time.perf_counter() - started

    @classmethod
    def restored(cls, prior: torch.nn.Module, conditionals: list[torch.nn.Module], traces: list[FinetuneTrace],
                 shrink_tokens: float = 0.0) -> ConditionalOracle:
        """The oracle of an earlier fine-tune (its conditional models saved, e.g. by the probe stage), so a later
        step measures with the very same models instead of fine-tuning again."""
        oracle = cls.__new__(cls)
        oracle.timings, oracle.prior, oracle.shrink = {}, prior, shrink_tokens
        oracle.conditionals, oracle.traces = [c.eval() for c in conditionals], list(traces)
        oracle.setup_seconds = 0.0
        return oracle

    @property
    def finetune(self) -> FinetuneTrace:
        """The first fold's fine-tune (the fit half's), the one recorded per stage."""
        return self.traces[0]

    def measure(self, docs: list[list[int]]) -> OracleValues:
        drops = document_drops(self.prior, self.conditionals, docs)
        prior, conditional, counts = drops.prior, drops.conditional, drops.prior.counts
        values = (prior.sums - conditional.sums) / (counts + self.shrink)
        return OracleValues(values, loss_before=prior.sums / counts, loss_after=conditional.sums / counts,
                            spread=drops.drop_variance, tokens=counts)


class OneStepOracle:
    """MATES's one-step probe: fast for every document, exact on the first `exact_fraction` of each pull."""

    name = "one_step"

    def __init__(self, model: torch.nn.Module, optimizer_state: dict[str, Any] | None, measure_rows: torch.Tensor,
                 cfg: ProbeConfig, estimator: str, exact_fraction: float) -> None:
        self.model, self.state, self.ref, self.cfg = model, optimizer_state, measure_rows, cfg
        self.estimator, self.exact_fraction = estimator, exact_fraction
        self.setup_seconds = 0.0
        self.finetune = None
        self.timings = {"fast_seconds": 0.0, "fast_documents": 0, "exact_seconds": 0.0, "exact_documents": 0}

    def measure(self, docs: list[list[int]]) -> OracleValues:
        device = next(self.model.parameters()).device
        tensors = [torch.tensor([d], dtype=torch.long, device=device) for d in docs]
        started = time.perf_counter()
        values = fast_probes(self.model, self.state, tensors, self.ref, self.cfg, progress=False,
                             method=self.estimator)
        self.timings["fast_seconds"] += time.perf_counter() - started
        self.timings["fast_documents"] += len(docs)
        n_exact = int(np.ceil(self.exact_fraction * len(docs) - 1e-9))  # 0.4 x 5 is 2, not 2.0000000000000004
        exact = np.full(len(docs), np.nan)
        before, after = np.full(len(docs), np.nan), np.full(len(docs), np.nan)
        if n_exact:
            started = time.perf_counter()
            probed = exact_probes(self.model, self.state, tensors[:n_exact], self.ref, self.cfg, progress=False)
            self.timings["exact_seconds"] += time.perf_counter() - started
            self.timings["exact_documents"] += n_exact
            exact[:n_exact], before[:n_exact], after[:n_exact] = probed.scores, probed.loss_before, probed.loss_after
        return OracleValues(np.asarray(values, dtype=np.float64), exact, before, after)


@dataclass
class GroupOracle:
    """Each arm's rollout effect per trained token minus the mean effect of random pool batches."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    measure_rows: torch.Tensor
    cfg: RolloutConfig
    control: Control | None = None
    loss_before: float = float("nan")
    seconds: float = 0.0
    rewards: dict[int, float] = field(default_factory=dict)

    def effect(self, rows: torch.Tensor) -> float:
        """The per-token loss drop of a rollout on `rows`: all configured steps, or as many whole steps as the
        rows allow (a small arm), from the same state every time (restored bit for bit)."""
        cfg = self.cfg if len(rows) >= self.cfg.rows else RolloutConfig(
            steps=len(rows) // self.cfg.rows_per_step, rows_per_step=self.cfg.rows_per_step, lr=self.cfg.lr,
            grad_clip=self.cfg.grad_clip)
        return rollout_effect(self.model, self.optimizer, rows[:cfg.rows], self.measure_rows, cfg,
                              self.loss_before).per_token

    def calibrate(self, control_batches: list[torch.Tensor]) -> None:
        """Measure the control once per checkpoint (it shifts every arm's reward alike); with no usable batch
        (a pool too small to fill one step) there is no control and no arm gets a group reward."""
        started = time.perf_counter()
        self.loss_before = reference_loss(self.model, self.measure_rows)
        usable = [rows for rows in control_batches if len(rows) >= self.cfg.rows_per_step]
        self.control = Control(np.array([self.effect(rows) for rows in usable])) if usable else None
        self.seconds += time.perf_counter() - started

    def reward(self, arm: int, rows: torch.Tensor | None) -> float | None:
        """The arm's group reward, measured on `rows` the first time it is asked for (None: no batch)."""
        if arm in self.rewards:
            return None  # counted once, with the arm's first pull
        if rows is None or self.control is None:
            self.rewards[arm] = float("nan")
            return None
        started = time.perf_counter()
        self.rewards[arm] = self.effect(rows) - self.control.mean
        self.seconds += time.perf_counter() - started
        return self.rewards[arm]
