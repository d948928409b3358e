"""Lexical influence model: a learned influence value for every token of the proxy LM's own vocabulary.

Why this exists: the probes of a small proxy LM are mostly lexical. First-order influence is
g_ref . P g_doc, and much of a small LM's gradient sits in the embedding and output rows of the tokens the
document contains, so its token frequencies carry most of what decides its probe. On the selection
benchmark's stage-0 probes (seed 0, the same probes for both students) this model predicted the held-out
exact probes with Spearman 0.85 where the MLP head on MiniLM embeddings reached 0.44
(benchmarks/results/selection_ablation.json).

The model: score(doc) = bias + the mean, over the document's first `seq_len` tokens (exactly what the
probe trains on), of a per-token weight, i.e. a ridge regression on the token-frequency vector. It is
stored as an `nn.EmbeddingBag(mode="mean")`, so scoring a document costs one lookup per token. The fit is
closed-form in the dual (n probes << vocabulary): one eigendecomposition of the n x n Gram matrix, then
every ridge strength on the grid is a cheap solve; the strength with the best validation Spearman wins
and the model is refitted on training and validation rows together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import sparse
from torch import nn

from models.ranking import spearman

TOKEN_WEIGHTS = "token_influence.safetensors"
TOKEN_META = "token_influence.json"
TOKENIZER_FILE = "tokenizer.json"
ALPHAS = tuple(float(a) for a in np.logspace(-7, 1, 17))
"""Ridge strengths tried. Rows are token frequencies (summing to 1), so Gram entries are ~1e-3..1e-1."""


class TokenInfluenceModel(nn.Module):
    """Per-token influence weights; a document's score is the mean weight of its tokens plus a bias."""

    def __init__(self, vocab_size: int, seq_len: int) -> None:
        super().__init__()
        self.vocab_size, self.seq_len = int(vocab_size), int(seq_len)
        self.bag = nn.EmbeddingBag(self.vocab_size, 1, mode="mean")
        self.bias = nn.Parameter(torch.zeros((), dtype=torch.float32))
        self.alpha = float("nan")
        self.val_spearman = float("nan")
        self.prior_weight = 0.0

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.bag(ids, offsets).squeeze(-1) + self.bias


@dataclass
class TokenFit:
    """What the ridge fit chose: the strength and the validation Spearman it reached (nan: no validation)."""

    alpha: float
    val_spearman: float
    train_spearman: float


def token_frequencies(docs: list[list[int]], vocab_size: int) -> sparse.csr_matrix:
    """Rows of token frequencies (each row sums to 1) of the documents' token ids."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    if (lengths == 0).any():
        raise ValueError("every document needs at least one token (use models.proxy_lm.document_tensor)")
    ids = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if docs else np.zeros(0, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    rows = np.repeat(np.arange(len(docs)), lengths)
    weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths)
    return sparse.csr_matrix((weights, (rows, ids)), shape=(len(docs), vocab_size))


def log_frequency_ratio(target: list[list[int]], raw: list[list[int]], vocab_size: int) -> np.ndarray:
    """Per token: log p_target(t) - log p_raw(t), add-one smoothed.

    DSIR's importance weight (Xie et al. 2023) with the proxy's own tokens as the features: a document's
    mean over its tokens is how much more likely the reference makes its words than the pool does.
    """
    def distribution(docs: list[list[int]]) -> np.ndarray:
        counts = np.bincount(np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if docs else
                             np.zeros(0, np.int64), minlength=vocab_size)[:vocab_size].astype(np.float64) + 1.0
        return counts / counts.sum()

    return np.log(distribution(target)) - np.log(distribution(raw))


def _ridge_dual(X: sparse.csr_matrix, y: np.ndarray):
    """A function alpha -> (weights, bias) of the centred ridge regression of y on X, via X X^T's eigenbasis."""
    mean_x = np.asarray(X.mean(axis=0)).ravel()
    mean_y = float(y.mean())
    xm = X @ mean_x
    gram = (X @ X.T).toarray() - xm[:, None] - xm[None, :] + float(mean_x @ mean_x)
    eigval, eigvec = np.linalg.eigh(gram)
    projected = eigvec.T @ (y - mean_y)

    def solve(alpha: float) -> tuple[np.ndarray, float]:
        dual = eigvec @ (projected / (np.maximum(eigval, 0.0) + alpha))
        weights = np.asarray(X.T @ dual).ravel() - mean_x * dual.sum()
        return weights, mean_y - float(mean_x @ weights)

    return solve


def fit_token_influence(fit_docs: list[list[int]], y_fit: np.ndarray, val_docs: list[list[int]], y_val: np.ndarray,
                        vocab_size: int, seq_len: int, alphas: tuple[float, ...] = ALPHAS,
                        prior: np.ndarray | None = None, prior_weight: float = 0.0
                        ) -> tuple[TokenInfluenceModel, TokenFit]:
    """Ridge on token frequencies; the strength is chosen by Spearman on the validation rows.

    `prior` (per-token values, e.g. `log_frequency_ratio` toward the reference) is added to the fitted
    weights, scaled so that over the probed documents its scores have `prior_weight` times the labels'
    standard deviation and zero mean: `prior_weight` 1 means "as much say as the probes' own spread".
    """
    y_fit, y_val = np.asarray(y_fit, dtype=np.float64), np.asarray(y_val, dtype=np.float64)
    if len(fit_docs) != len(y_fit) or len(val_docs) != len(y_val):
        raise ValueError("each probe document needs exactly one label")
    if len(y_fit) < 2 or not np.isfinite(y_fit).all() or not np.isfinite(y_val).all():
        raise ValueError("the token influence model needs at least 2 finite training labels")
    scale = float(y_fit.std()) or 1.0  # fit in z units: the ridge grid then means the same at every stage
    X_fit, X_val = token_frequencies(fit_docs, vocab_size), token_frequencies(val_docs, vocab_size)
    X_probed = sparse.vstack([X_fit, X_val]).tocsr()
    solve = _ridge_dual(X_fit, y_fit / scale)
    alpha, best = alphas[len(alphas) // 2], float("nan")
    if len(y_val) >= 3:
        scores = []
        for a in alphas:
            weights, bias = solve(a)
            scores.append(spearman(X_val @ weights + bias, y_val))
        best_index = int(np.argmax(scores))
        alpha, best = alphas[best_index], scores[best_index]
        solve = _ridge_dual(X_probed, np.concatenate([y_fit, y_val]) / scale)
    weights, bias = solve(alpha)
    if prior is not None and prior_weight > 0:
        on_probes = X_probed @ np.asarray(prior, np.float64)
        spread = float(on_probes.std())
        if spread > 0:
            to_z = prior_weight / spread  # z units, like the ridge's own weights here
            weights, bias = weights + to_z * prior, bias - to_z * float(on_probes.mean())
    model = TokenInfluenceModel(vocab_size, seq_len)
    with torch.no_grad():
        model.bag.weight.copy_(torch.from_numpy(weights * scale).float()[:, None])
        model.bias.fill_(bias * scale)
    model.alpha, model.val_spearman, model.prior_weight = alpha, best, float(prior_weight if prior is not None else 0.0)
    fit = TokenFit(alpha, best, spearman(predict_tokens(model, fit_docs), y_fit))
    return model.eval(), fit


@torch.no_grad()
def predict_tokens(model: TokenInfluenceModel, docs: list[list[int]], batch_size: int = 4096) -> np.ndarray:
    """Scores in probe units for documents given as token ids (already cut to `model.seq_len`)."""
    out = np.empty(len(docs), dtype=np.float64)
    for start in range(0, len(docs), batch_size):
        chunk = docs[start:start + batch_size]
        if any(len(d) == 0 for d in chunk):
            raise ValueError("every document needs at least one token (use models.proxy_lm.document_tensor)")
        ids = torch.tensor([t for d in chunk for t in d], dtype=torch.long)
        offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(d) for d in chunk])[:-1]]), dtype=torch.long)
        out[start:start + len(chunk)] = model(ids, offsets).double().numpy()
    return out


def save_token_model(model: TokenInfluenceModel, directory: str | Path, tokenizer_file: str | Path) -> Path:
    """Weights (safetensors), metadata (JSON) and a copy of the tokenizer: text in, score out, no pickle."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"weight": model.bag.weight.detach().contiguous(), "bias": model.bias.detach().reshape(1)},
              str(directory / TOKEN_WEIGHTS))
    (directory / TOKENIZER_FILE).write_bytes(Path(tokenizer_file).read_bytes())
    meta = {"format": "influmix-token-influence/1", "vocab_size": model.vocab_size, "seq_len": model.seq_len,
            "alpha": model.alpha, "val_spearman": model.val_spearman, "prior_weight": model.prior_weight}
    (directory / TOKEN_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def load_token_model(directory: str | Path) -> TokenInfluenceModel:
    directory = Path(directory)
    meta = json.loads((directory / TOKEN_META).read_text())
    model = TokenInfluenceModel(meta["vocab_size"], meta["seq_len"])
    state = load_file(str(directory / TOKEN_WEIGHTS))
    with torch.no_grad():
        model.bag.weight.copy_(state["weight"])
        model.bias.fill_(float(state["bias"][0]))
    model.alpha, model.val_spearman = meta["alpha"], meta["val_spearman"]
    model.prior_weight = meta.get("prior_weight", 0.0)
    return model.eval()


def is_token_model(directory: str | Path) -> bool:
    return (Path(directory) / TOKEN_META).exists()
