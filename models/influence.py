"""Distilled data influence model (MATES-style).

Why this exists: an oracle probe (one optimizer step on a document, then the change in reference loss)
costs about a second per document, so only a few hundred documents per stage can be probed. A small
regressor on document embeddings learns those probe scores and then scores the whole pool cheaply.

Two modes:
  * frozen encoder (default): an MLP head (`InfluenceHead`) on stored embeddings (`train_influence_head`).
    Seconds on CPU, the right choice for a few hundred probes.
  * fine-tuned encoder (`finetune_encoder=True`): the SentenceTransformer and the head are trained end to
    end on raw texts (`train_influence_model`), as MATES does with BERT. Worth it with many probes.

Targets are z-scored before training because probe scores are tiny loss differences (~1e-3) whose scale
drifts between stages; the mean/std are kept as buffers of the head so `predict` returns scores in the
probe's own units (comparable to the oracle). Model selection uses validation Spearman, as in MATES,
because downstream selection only consumes the ranking.

Persistence is pickle-free: safetensors for weights, JSON for dimensions, target statistics and config.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy.stats import pearsonr, spearmanr
from torch import nn

if TYPE_CHECKING:  # sentence-transformers is heavy to import; only the fine-tune path needs it at runtime.
    from sentence_transformers import SentenceTransformer

HEAD_WEIGHTS = "influence_head.safetensors"
HEAD_META = "influence_head.json"
ENCODER_DIR = "encoder"


@dataclass
class InfluenceConfig:
    """Hyperparameters of the influence model; mirrors `influmix.config.DistillSettings`."""

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


def _embedding_dim(encoder: SentenceTransformer) -> int:
    """sentence-transformers renamed get_sentence_embedding_dimension -> get_embedding_dimension."""
    fn = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(fn())


def _encode(encoder: SentenceTransformer, texts: Sequence[str]) -> torch.Tensor:
    """Pooled sentence embeddings WITH gradients (ST's `encode` runs under no_grad, so it can't train).

    sentence-transformers >= 6 renamed `tokenize` to `preprocess` (the old name still works but warns).
    """
    tokenize = getattr(encoder, "preprocess", None) or encoder.tokenize
    features = tokenize(list(texts))
    device = next(encoder.parameters()).device
    features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
    return encoder(features)["sentence_embedding"]


def _freeze_token_embeddings(encoder: nn.Module) -> int:
    """Stop training the encoder's token-embedding table; returns how many parameters were frozen.

    Why: it is half of MiniLM's 22.7M parameters, yet a few hundred probe documents touch only a few
    thousand of its 30k rows, while AdamW's weight decay would still shrink every row (drifting tokens
    never seen in training) and its update costs as much as the rest of the model together.
    """
    frozen = 0
    for module in encoder.modules():
        get = getattr(module, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        if isinstance(emb, nn.Embedding) and emb.weight.requires_grad:
            emb.weight.requires_grad_(False)
            frozen += emb.weight.numel()
    return frozen


class InfluenceModel(nn.Module):
    """SentenceTransformer encoder + `InfluenceHead`, trained end to end in `finetune_encoder` mode."""

    def __init__(self, encoder: SentenceTransformer, head: InfluenceHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        return _encode(self.encoder, texts)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.head(self.embed(texts))

    def save(self, directory: str | Path, cfg: InfluenceConfig | None = None) -> Path:
        """Same as `save_model(self, ...)`: `encoder/` plus the head files."""
        return save_model(self, directory, cfg)


# ----------------------------------------------------------------------------------------------- metrics


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


def _ranking_loss(pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
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


def _loss(
    pred: torch.Tensor, target: torch.Tensor, cfg: InfluenceConfig, gen: torch.Generator
) -> torch.Tensor:
    loss = F.mse_loss(pred, target)
    if cfg.ranking_weight > 0:
        loss = loss + cfg.ranking_weight * _ranking_loss(pred, target, gen)
    return loss


class _EarlyStopper:
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
        stopper = _EarlyStopper(cfg.patience)
        history: list[dict[str, float]] = []
        epochs_run = 0
        for epoch in range(cfg.epochs):
            head.train()
            order = torch.randperm(len(xt), generator=gen).to(device)
            total, seen = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = _loss(head(xt[idx]), zt[idx], cfg, gen)
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
    report = InfluenceReport(
        val_spearman=spearman(pv, y_val),
        val_pearson=pearson(pv, y_val),
        train_spearman=spearman(pt, y_train),
        best_epoch=stopper.best_epoch,
        epochs_run=epochs_run,
        val_loss=stopper.best_loss,
        history=history,
    )
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


# ------------------------------------------------------------------------------------ fine-tuned mode


def train_influence_model(
    texts_train: Sequence[str],
    y_train: np.ndarray,
    texts_val: Sequence[str] | None,
    y_val: np.ndarray | None,
    encoder: SentenceTransformer,
    cfg: InfluenceConfig | None = None,
) -> tuple[InfluenceModel, InfluenceReport]:
    """Fine-tune `encoder` + a fresh head end to end on texts (MATES setup); same early stopping.

    The encoder is modified in place (it becomes `model.encoder`); pass a copy if the caller needs the
    original. Two learning rates: a small one for the pretrained encoder, the head's `cfg.lr` for the head.
    """
    cfg = cfg or InfluenceConfig(finetune_encoder=True)
    texts_train = list(texts_train)
    y_train = np.asarray(y_train, dtype=np.float64).reshape(-1)
    if len(texts_train) != len(y_train) or not np.isfinite(y_train).all():
        raise ValueError("texts_train and y_train must have the same length and finite targets")
    if texts_val is None or y_val is None or len(y_val) == 0:
        texts_val, y_val = texts_train, y_train
    texts_val = list(texts_val)
    y_val = np.asarray(y_val, dtype=np.float64).reshape(-1)
    device = torch.device(cfg.device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        encoder.max_seq_length = cfg.max_seq_length
        dim = _embedding_dim(encoder)
        head = InfluenceHead(int(dim), cfg.hidden_dim, cfg.dropout)
        head.set_target_stats(y_train)
        head.config = asdict(cfg)
        if cfg.freeze_token_embeddings:
            _freeze_token_embeddings(encoder)
        model = InfluenceModel(encoder, head).to(device)
        zt = torch.from_numpy(head.standardise(y_train)).to(device)
        opt = torch.optim.AdamW(
            [
                {"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.encoder_lr},
                {"params": model.head.parameters(), "lr": cfg.lr},
            ],
            weight_decay=cfg.weight_decay,
            foreach=True,  # one fused pass over ~100 tensors; the per-tensor loop is the CPU default
        )
        stopper = _EarlyStopper(cfg.patience)
        history: list[dict[str, float]] = []
        epochs_run = 0
        for epoch in range(cfg.epochs):
            model.train()
            order = torch.randperm(len(texts_train), generator=gen).tolist()
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = _loss(model([texts_train[i] for i in idx]), zt[idx], cfg, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            pv = _predict_z(model, texts_val, cfg.batch_size)
            val_loss = float(np.mean((pv - head.standardise(y_val)) ** 2))
            val_rho = spearman(pv, y_val)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": total / max(len(order), 1),
                    "val_loss": val_loss,
                    "val_spearman": val_rho,
                }
            )
            epochs_run = epoch + 1
            if stopper.step(epoch, val_rho, val_loss, model):
                break
        if stopper.best_state is not None:
            model.load_state_dict(stopper.best_state)
        model.eval()
        pv = _predict_z(model, texts_val, cfg.batch_size)
        pt = _predict_z(model, texts_train, cfg.batch_size)
    report = InfluenceReport(
        val_spearman=spearman(pv, y_val),
        val_pearson=pearson(pv, y_val),
        train_spearman=spearman(pt, y_train),
        best_epoch=stopper.best_epoch,
        epochs_run=epochs_run,
        val_loss=stopper.best_loss,
        history=history,
    )
    return model, report


@torch.no_grad()
def embed_texts(
    model: InfluenceModel | SentenceTransformer, texts: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """Embeddings [n, d] float32 from the (possibly fine-tuned) encoder, same pooling as training."""
    encoder = model.encoder if isinstance(model, InfluenceModel) else model
    was_training = encoder.training
    encoder.eval()
    texts = list(texts)
    chunks = [
        _encode(encoder, texts[s : s + batch_size]).float().cpu().numpy()
        for s in range(0, len(texts), batch_size)
    ]
    encoder.train(was_training)
    if not chunks:
        return np.zeros((0, _embedding_dim(encoder)), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


def _predict_z(model: InfluenceModel, texts: Sequence[str], batch_size: int) -> np.ndarray:
    model.head.eval()
    X = embed_texts(model, texts, max(batch_size, 64))  # no activations kept: larger batches are cheaper
    with torch.no_grad():
        device = next(model.head.parameters()).device
        return model.head(torch.from_numpy(X).to(device)).double().cpu().numpy()


def predict_texts(model: InfluenceModel, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Score raw texts with a fine-tuned model; float64, original probe units (like `predict`)."""
    return model.head.unstandardise(_predict_z(model, texts, batch_size))


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


def save_model(model: InfluenceModel, directory: str | Path, cfg: InfluenceConfig | None = None) -> Path:
    """Fine-tuned model: `encoder/` (SentenceTransformer.save) next to the head files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.encoder.save(str(directory / ENCODER_DIR))
    return save_head(model.head, directory, cfg)


def load_model(directory: str | Path, device: str = "cpu") -> InfluenceModel:
    from sentence_transformers import SentenceTransformer

    directory = Path(directory)
    encoder = SentenceTransformer(str(directory / ENCODER_DIR), device=device)
    return InfluenceModel(encoder, load_head(directory, device)).to(device).eval()
