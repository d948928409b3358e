"""What the influence model is trained and judged by: rank correlations that stay defined on degenerate
inputs, the pairwise ranking loss, and early stopping on validation Spearman (selection consumes only the
ranking). Shared by the frozen-encoder head (models/influence.py) and the fine-tuned encoder
(models/influence_encoder.py).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from torch import nn


def _safe_corr(fn: Any, a: np.ndarray, b: np.ndarray) -> float:
    """Correlation, or 0.0 when undefined (fewer than 2 points or a constant side gives nan)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    r = float(fn(a, b)[0])
    return r if math.isfinite(r) else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return _safe_corr(spearmanr, a, b)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return _safe_corr(pearsonr, a, b)


def ranking_loss(pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pairwise logistic loss over random pairs in the batch: softplus(-sign(y_i - y_j) * (p_i - p_j)).

    Why: selection only uses the ordering, and MSE alone spends capacity on outliers' magnitudes.
    """
    if pred.numel() < 2:
        return pred.sum() * 0.0
    perm = torch.randperm(pred.numel(), generator=generator).to(pred.device)
    sign = torch.sign(target - target[perm])
    mask = sign != 0
    if not bool(mask.any()):
        return pred.sum() * 0.0
    margin = sign[mask] * (pred - pred[perm])[mask]
    return F.softplus(-margin).mean()


def influence_loss(pred: torch.Tensor, target: torch.Tensor, ranking_weight: float,
                   gen: torch.Generator) -> torch.Tensor:
    """MSE on the z-scored probes, plus `ranking_weight` times the pairwise ranking loss."""
    loss = F.mse_loss(pred, target)
    if ranking_weight > 0:
        loss = loss + ranking_weight * ranking_loss(pred, target, gen)
    return loss


class EarlyStopper:
    """Tracks the best validation score; higher Spearman wins, an equal Spearman is broken by lower loss.

    The loss tie-break is what makes degenerate validation work: constant predictions give Spearman 0
    every epoch, and the checkpoint with the lowest validation loss is kept instead of the first one.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_score = -math.inf
        self.best_loss = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def step(self, epoch: int, score: float, loss: float, module: nn.Module) -> bool:
        """Record one epoch; return True when training should stop."""
        better = score > self.best_score + 1e-9 or (
            abs(score - self.best_score) <= 1e-9 and loss < self.best_loss
        )
        if better:
            self.best_score, self.best_loss, self.best_epoch = score, loss, epoch
            self.best_state = copy.deepcopy(module.state_dict())
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience
