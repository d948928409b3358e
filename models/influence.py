"""Distilled data influence model (MATES-style).

Why this exists: an oracle probe (one optimizer step on a document, then the change in reference loss)
costs about a second per document, so only a few hundred documents per stage can be probed. A small
regressor on document embeddings learns those probe scores and then scores the whole pool cheaply.

Two modes:
  * frozen encoder (default): an MLP head (`InfluenceHead`) on stored embeddings (`train_influence_head`).
    Seconds on CPU, the right choice for a few hundred probes.
  * fine-tuned encoder (`finetune_encoder=True`, in `models/influence_encoder.py`): the SentenceTransformer
    and the head are trained end to end on raw texts, as MATES does with BERT. Worth it with many probes.

Targets are z-scored before training because probe scores are tiny loss differences (~1e-3) whose scale
drifts between stages; the mean/std are kept as buffers of the head so `predict` returns scores in the
probe's own units (comparable to the oracle). Model selection uses validation Spearman, as in MATES,
because downstream selection only consumes the ranking.

Persistence is pickle-free: safetensors for weights, JSON for dimensions, target statistics and config.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from models.ranking import EarlyStopper, influence_loss, pearson, spearman

HEAD_WEIGHTS = "influence_head.safetensors"
HEAD_META = "influence_head.json"


@dataclass
class InfluenceConfig:
    """Hyperparameters of the influence model; mirrors `core.config.DistillSettings`."""

    hidden_dim: int = 128
    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-2
    ranking_weight: float = 0.0  # weight of the pairwise logistic ranking loss added to the MSE
    patience: int = 30  # epochs without a better validation score before stopping
    batch_size: int = 64
    seed: int = 0
    finetune_encoder: bool = False
    encoder_lr: float = 2e-5
    max_seq_length: int = 128
    device: str = "cpu"
    dropout: float = 0.1
    freeze_token_embeddings: bool = True  # fine-tune mode only; see `_freeze_token_embeddings`


@dataclass
class InfluenceReport:
    """What training achieved; `history` holds one dict per epoch (for MLflow step metrics)."""

    val_spearman: float
    val_pearson: float
    train_spearman: float
    best_epoch: int
    epochs_run: int
    val_loss: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fit(cls, pred_val, y_val, pred_train, y_train, stopper: EarlyStopper, epochs_run: int,
                 history: list[dict[str, float]]) -> InfluenceReport:
        """The report of a finished fit: correlations of the kept (best) model's predictions."""
        return cls(
            val_spearman=spearman(pred_val, y_val),
            val_pearson=pearson(pred_val, y_val),
            train_spearman=spearman(pred_train, y_train),
            best_epoch=stopper.best_epoch,
            epochs_run=epochs_run,
            val_loss=stopper.best_loss,
            history=history,
        )


class InfluenceHead(nn.Module):
    """MLP regressor on a document embedding: LayerNorm -> Linear -> GELU -> Dropout -> Linear(1).

    `forward` returns standardised scores (z); `target_mean`/`target_std` buffers map them back to probe
    units. LayerNorm first makes the head indifferent to the encoder's embedding scale (MiniLM output is
    unit-normalised, other encoders are not).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.hidden_dim = int(hidden_dim)
        self.dropout = float(dropout)
        self.net = nn.Sequential(
            nn.LayerNorm(self.in_dim),
            nn.Linear(self.in_dim, self.hidden_dim),
            nn.GELU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden_dim, 1),
        )
        self.register_buffer("target_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("target_std", torch.ones((), dtype=torch.float64))
        self.config: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def set_target_stats(self, y: np.ndarray) -> None:
        """Remember mean/std of the training targets; a constant target gets std 1 (no division by 0)."""
        y = np.asarray(y, dtype=np.float64)
        mean = float(y.mean()) if y.size else 0.0
        std = float(y.std()) if y.size > 1 else 0.0
        if not math.isfinite(std) or std < 1e-12:
            std = 1.0
        self.target_mean.fill_(mean)
        self.target_std.fill_(std)

    def standardise(self, y: np.ndarray) -> np.ndarray:
        return ((np.asarray(y, dtype=np.float64) - float(self.target_mean)) / float(self.target_std)).astype(
            np.float32
        )

    def unstandardise(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * float(self.target_std) + float(self.target_mean)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run the tiny head on one intra-op thread, then restore the caller's setting.

    Why: a 384x128 MLP on batches of 64 gains nothing from intra-op parallelism, and on a busy 2-core
    machine thread synchronisation made head training ~18x slower (9 s vs 0.5 s for 400 steps).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_xy(X: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: X must be [n, d] with one target per row, got {X.shape} and {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name}: targets contain nan/inf")
    return X, y


# ------------------------------------------------------------------------------------ frozen-encoder mode


def train_influence_head(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray | None,
    y_val: np.ndarray | None,
    cfg: InfluenceConfig | None = None,
) -> tuple[InfluenceHead, InfluenceReport]:
    """Fit an `InfluenceHead` on stored embeddings; early stopping on validation Spearman.

    An empty/missing validation split falls back to the training split (only sensible for smoke runs).
    The global torch RNG is forked, so training is deterministic for `cfg.seed` and leaves callers' RNG
    state untouched.
    """
    cfg = cfg or InfluenceConfig()
    X_train, y_train = _check_xy(X_train, y_train, "train")
    if X_val is None or y_val is None or len(y_val) == 0:
        X_val, y_val = X_train, y_train
    X_val, y_val = _check_xy(X_val, y_val, "val")
    device = torch.device(cfg.device)

    with torch.random.fork_rng(devices=[]), _single_thread():
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        head = InfluenceHead(X_train.shape[1], cfg.hidden_dim, cfg.dropout)
        head.set_target_stats(y_train)
        head.config = asdict(cfg)
        head.to(device)
        xt = torch.from_numpy(X_train).to(device)
        zt = torch.from_numpy(head.standardise(y_train)).to(device)
        xv = torch.from_numpy(X_val).to(device)
        zv = torch.from_numpy(head.standardise(y_val)).to(device)
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        stopper = EarlyStopper(cfg.patience)
        history: list[dict[str, float]] = []
        epochs_run = 0
        for epoch in range(cfg.epochs):
            head.train()
            order = torch.randperm(len(xt), generator=gen).to(device)
            total, seen = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = influence_loss(head(xt[idx]), zt[idx], cfg.ranking_weight, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            head.eval()
            with torch.no_grad():
                pv = head(xv)
                val_loss = float(F.mse_loss(pv, zv))
            val_rho = spearman(pv.cpu().numpy(), y_val)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": total / max(seen, 1),
                    "val_loss": val_loss,
                    "val_spearman": val_rho,
                }
            )
            epochs_run = epoch + 1
            if stopper.step(epoch, val_rho, val_loss, head):
                break

        if stopper.best_state is not None:
            head.load_state_dict(stopper.best_state)
        head.eval()
        with torch.no_grad():
            pv = head(xv).cpu().numpy()
            pt = head(xt).cpu().numpy()
    report = InfluenceReport.from_fit(pv, y_val, pt, y_train, stopper, epochs_run, history)
    return head, report


@torch.no_grad()
def predict(head: InfluenceHead, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Score embeddings; returns float64 scores in the ORIGINAL probe units (un-standardised).

    Probe units keep predictions directly comparable with oracle scores (and across logging); selectors
    that need z-scores standardise over their own candidate pool anyway.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be [n, d], got {X.shape}")
    head.eval()
    device = next(head.parameters()).device
    out = np.empty(len(X), dtype=np.float64)
    for start in range(0, len(X), batch_size):
        chunk = torch.from_numpy(X[start : start + batch_size]).to(device)
        out[start : start + len(chunk)] = head(chunk).double().cpu().numpy()
    return head.unstandardise(out)


# ----------------------------------------------------------------------------------------- persistence


def save_head(head: InfluenceHead, directory: str | Path, cfg: InfluenceConfig | None = None) -> Path:
    """Write `influence_head.safetensors` (weights + target stats) and `influence_head.json` (metadata)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(directory / HEAD_WEIGHTS))
    meta = {
        "format": "influmix-influence-head/1",
        "in_dim": head.in_dim,
        "hidden_dim": head.hidden_dim,
        "dropout": head.dropout,
        "target_mean": float(head.target_mean),
        "target_std": float(head.target_std),
        "config": asdict(cfg) if cfg is not None else head.config,
    }
    (directory / HEAD_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def load_head(directory: str | Path, device: str = "cpu") -> InfluenceHead:
    directory = Path(directory)
    meta = json.loads((directory / HEAD_META).read_text())
    head = InfluenceHead(meta["in_dim"], meta["hidden_dim"], meta.get("dropout", 0.1))
    head.load_state_dict(load_file(str(directory / HEAD_WEIGHTS)))
    head.config = meta.get("config") or {}
    return head.to(device).eval()
