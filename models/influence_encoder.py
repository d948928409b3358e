"""Fine-tuned-encoder mode of the influence model: a SentenceTransformer and the head trained end to end.

Why a separate mode: with many probes, adapting the encoder to what the proxy LM finds useful beats a head
on frozen embeddings (MATES fine-tunes BERT). It shares the head, loss, early stopping and persistence
with `models/influence.py`; the encoder is saved with SentenceTransformer.save (safetensors), no pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from models.influence import InfluenceConfig, InfluenceHead, InfluenceReport, load_head, save_head
from models.ranking import EarlyStopper, influence_loss, spearman

if TYPE_CHECKING:  # sentence-transformers is heavy to import; loaded by the caller that owns the encoder.
    from sentence_transformers import SentenceTransformer

ENCODER_DIR = "encoder"


def embedding_dim(encoder: SentenceTransformer) -> int:
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
        dim = embedding_dim(encoder)
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
        stopper = EarlyStopper(cfg.patience)
        history: list[dict[str, float]] = []
        epochs_run = 0
        for epoch in range(cfg.epochs):
            model.train()
            order = torch.randperm(len(texts_train), generator=gen).tolist()
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = influence_loss(model([texts_train[i] for i in idx]), zt[idx], cfg.ranking_weight, gen)
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
    report = InfluenceReport.from_fit(pv, y_val, pt, y_train, stopper, epochs_run, history)
    return model, report


@torch.no_grad()
def embed_texts(
    model: InfluenceModel | SentenceTransformer, texts: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """Embeddings [n, d] float32 from the (possibly fine-tuned) encoder, same pooling as training.

    Batches are formed over texts sorted by length (rows come back in input order): a batch is padded to
    its longest text, and on mixed-length pools (tweets next to articles) sorting made scoring ~2x faster
    on CPU (benchmarks/influence_study.py), as in SentenceTransformer.encode.
    """
    encoder = model.encoder if isinstance(model, InfluenceModel) else model
    was_training = encoder.training
    encoder.eval()
    texts = list(texts)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    sorted_texts = [texts[i] for i in order]
    chunks = [
        _encode(encoder, sorted_texts[s : s + batch_size]).float().cpu().numpy()
        for s in range(0, len(sorted_texts), batch_size)
    ]
    encoder.train(was_training)
    if not chunks:
        return np.zeros((0, embedding_dim(encoder)), dtype=np.float32)
    out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(chunks)
    return out


def _predict_z(model: InfluenceModel, texts: Sequence[str], batch_size: int) -> np.ndarray:
    model.head.eval()
    X = embed_texts(model, texts, max(batch_size, 64))  # no activations kept: larger batches are cheaper
    with torch.no_grad():
        device = next(model.head.parameters()).device
        return model.head(torch.from_numpy(X).to(device)).double().cpu().numpy()


def predict_texts(model: InfluenceModel, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Score raw texts with a fine-tuned model; float64, original probe units (like `predict`)."""
    return model.head.unstandardise(_predict_z(model, texts, batch_size))



def save_model(model: InfluenceModel, directory: str | Path, cfg: InfluenceConfig | None = None) -> Path:
    """Fine-tuned model: `encoder/` (SentenceTransformer.save) next to the head files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.encoder.save(str(directory / ENCODER_DIR))
    return save_head(model.head, directory, cfg)


def load_model(directory: str | Path, device: str = "cpu") -> InfluenceModel:
    from sentence_transformers import SentenceTransformer

    directory = Path(directory)
    encoder = SentenceTransformer(str(directory / ENCODER_DIR), device=device, trust_remote_code=False,
                                  model_kwargs={"use_safetensors": True})  # never unpickle weights
    return InfluenceModel(encoder, load_head(directory, device)).to(device).eval()
