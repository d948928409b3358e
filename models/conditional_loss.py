"""CoLoR-Filter's conditional loss reduction (Brandfonbrener et al. 2024, arXiv 2406.10670), cross-fitted.

A document's score is its loss under the prior proxy minus its loss under the same proxy briefly fine-tuned
on the target (the visible reference): high when seeing the target makes the document much more likely,
i.e. the document looks like the target AND is learnable from it, where a token log-ratio (DSIR) rewards
vocabulary alone. Two forward passes per document, no gradients, no probes.

Cross-fit: the visible reference is split in two halves (by source document, so no passage of one half
is a neighbour of the other's). The conditional model is fine-tuned on one half, its number of steps is
chosen on the other half's loss (early stopping), and that other half stays free to measure rewards on
(rollouts, probes) without the reward being the signal's own fitting data. With `folds=2` the roles swap
and the two reductions are averaged ("vice versa"): one more forward pass per document, less dependence
on which passages one half happens to hold.

Scores are per token: (sum of prior token losses - sum of conditional token losses) / (tokens + shrink).
`shrink_tokens` > 0 is a length prior: a 5-token tweet's mean reduction is mostly noise, and shrinking
it toward 0 by 32 pseudo-tokens leaves long documents' scores almost unchanged.

Why not a library: CoLoR-Filter's released code is a JAX/LLM-Foundry pipeline around OLMo checkpoints;
the part needed here (two batched forward passes and a short fine-tune) is a few dozen lines of torch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.oracles import reference_loss
from models.proxy_lm import lm_loss
from models.trainer import param_groups

MAX_BATCH_TOKENS = 8192
"""Padded tokens per forward pass when scoring documents: 64 rows of 128, where one CPU core peaks."""


@dataclass
class TokenLosses:
    """Per document: the sum of its next-token losses and how many tokens were predicted."""

    sums: np.ndarray
    counts: np.ndarray


def length_batches(docs: Sequence[Sequence[int]], max_batch_tokens: int = MAX_BATCH_TOKENS
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (document indices, right-padded ids, mask of predicted positions), batched by length.

    Documents are sorted by length and cut into batches of at most `max_batch_tokens` padded tokens; padding
    goes on the right and is masked out, and attention is causal, so a padded row's losses are the
    unpadded document's (to float rounding).
    """
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    if len(docs) and lengths.min() < 2:
        raise ValueError("every document needs at least 2 tokens (use models.proxy_lm.document_tensor)")
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        width = int(lengths[order[start]])
        end = start
        while end < len(order) and (end - start + 1) * int(lengths[order[end]]) <= max(max_batch_tokens, width):
            end += 1
        idx = order[start:end]
        width = int(lengths[idx].max())
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :lengths[i]] = torch.as_tensor(docs[i], dtype=torch.long)
        mask = torch.arange(width - 1)[None] < torch.as_tensor(lengths[idx] - 1)[:, None]
        yield idx, ids, mask
        start = end


def token_losses(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token losses of a padded batch, (rows, width - 1), back on the CPU in float32."""
    ids = ids.to(next(model.parameters()).device)
    logits = model(input_ids=ids).logits[:, :-1].float()
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    return losses.view(ids.size(0), -1).cpu()


def predicted_tokens(docs: Sequence[Sequence[int]]) -> np.ndarray:
    return np.array([len(d) - 1 for d in docs], dtype=np.int64)


@torch.no_grad()
def document_losses(model: torch.nn.Module, docs: Sequence[Sequence[int]], max_batch_tokens: int = MAX_BATCH_TOKENS
                    ) -> TokenLosses:
    """Next-token loss sums of every document (ids, 2 to the model's context length), batched by length."""
    was_training = model.training
    model.eval()
    sums = np.zeros(len(docs), dtype=np.float64)
    for idx, ids, mask in length_batches(docs, max_batch_tokens):
        sums[idx] = (token_losses(model, ids) * mask).sum(1).double().numpy()
    model.train(was_training)
    return TokenLosses(sums, predicted_tokens(docs))


@dataclass
class TokenDrops:
    """Per document: both models' loss sums and the within-document variance of the per-token drop.

    `drop_variance` (unbiased; NaN for a document with a single predicted token) says how noisy a
    document's mean drop is: the mean over few tokens of a wide spread is mostly noise."""

    prior: TokenLosses
    conditional: TokenLosses
    drop_variance: np.ndarray


@torch.no_grad()
def document_drops(prior: torch.nn.Module, conditional: torch.nn.Module | Sequence[torch.nn.Module],
                   docs: Sequence[Sequence[int]], max_batch_tokens: int = MAX_BATCH_TOKENS) -> TokenDrops:
    """Both models' token losses on the same batches, and the spread of their per-token difference.

    The same forward passes per document as one `document_losses` call per model; the per-token drops exist only
    while both models' losses of a batch are in hand, hence one pass over the batches for both. Several
    conditional models (the cross-fit's folds) count as one whose token losses are their mean, so the drop,
    its spread and the conditional sums are those of the fold-averaged reduction."""
    conditionals = [conditional] if isinstance(conditional, torch.nn.Module) else list(conditional)
    states = prior.training, [c.training for c in conditionals]
    prior.eval()
    for c in conditionals:
        c.eval()
    n = len(docs)
    prior_sums, conditional_sums, variance = np.zeros(n), np.zeros(n), np.full(n, np.nan)
    for idx, ids, mask in length_batches(docs, max_batch_tokens):
        before = (token_losses(prior, ids) * mask).double()
        after = torch.stack([(token_losses(c, ids) * mask).double() for c in conditionals]).mean(0)
        drops, counts = before - after, mask.sum(1).double()
        prior_sums[idx], conditional_sums[idx] = before.sum(1).numpy(), after.sum(1).numpy()
        squares = (drops ** 2).sum(1) - drops.sum(1) ** 2 / counts
        variance[idx] = torch.where(counts > 1, squares.clamp(min=0) / (counts - 1).clamp(min=1), torch.nan).numpy()
    prior.train(states[0])
    for c, was in zip(conditionals, states[1], strict=True):
        c.train(was)
    counts = predicted_tokens(docs)
    return TokenDrops(TokenLosses(prior_sums, counts), TokenLosses(conditional_sums, counts), variance)


@dataclass(frozen=True)
class FinetuneConfig:
    """The conditional model's fine-tune on one reference half; steps chosen on the other half's loss."""

    max_steps: int = 256
    eval_every: int = 16
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    max_val_rows: int = 256  # evenly spaced rows of the other half: enough to pick a step, cheap to evaluate


@dataclass
class FinetuneTrace:
    """Validation loss after every `eval_every` steps (index 0 = the prior) and the step that was kept."""

    steps: list[int]
    val_losses: list[float]
    best_step: int


def finetune_on_reference(prior: torch.nn.Module, optimizer_state: dict[str, Any] | None, fit_rows: torch.Tensor,
                          val_rows: torch.Tensor, cfg: FinetuneConfig) -> tuple[torch.nn.Module, FinetuneTrace]:
    """A copy of `prior` fine-tuned on `fit_rows` [n, L], at the step with the lowest loss on `val_rows`
    (at most `cfg.max_val_rows` of them, evenly spaced).

    The copy continues from a deep copy of the prior's Adam moments when given (the prior itself and its
    saved state are never touched) at a constant `cfg.lr`; rows are drawn in seeded shuffled epochs.
    """
    model = copy.deepcopy(prior)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay)
    if optimizer_state and optimizer_state.get("state"):
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        for group in optimizer.param_groups:
            group.update(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=group["weight_decay"])
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.cat([torch.randperm(len(fit_rows), generator=generator)
                       for _ in range(-(-cfg.max_steps * cfg.batch_size // len(fit_rows)))])
    device = next(model.parameters()).device
    if len(val_rows) > cfg.max_val_rows:
        val_rows = val_rows[np.unique(np.linspace(0, len(val_rows) - 1, cfg.max_val_rows).round().astype(int))]
    steps, losses = [0], [reference_loss(model, val_rows)]
    best = copy.deepcopy(model.state_dict())
    for step in range(1, cfg.max_steps + 1):
        model.train()
        batch = fit_rows[order[(step - 1) * cfg.batch_size:step * cfg.batch_size]].to(device)
        optimizer.zero_grad(set_to_none=True)
        lm_loss(model, batch).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            steps.append(step)
            losses.append(reference_loss(model, val_rows))
            if losses[-1] == min(losses):
                best = copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    return model.eval(), FinetuneTrace(steps, losses, steps[int(np.argmin(losses))])


FOLD_FOLDER = "fold-{k}"
"""Where `save_conditional` puts fold k >= 1 inside the folder; fold 0 is the folder itself (the one-fold layout)."""


def save_conditional(directory: str | Path, models: torch.nn.Module | Sequence[torch.nn.Module],
                     traces: FinetuneTrace | Sequence[FinetuneTrace]) -> Path:
    """Write fine-tuned conditional models (model.safetensors) and their traces (trace.json) so later steps
    measure with them without fine-tuning again: fold 0 in `directory`, fold k in `directory/fold-k`.
    Fold 0's trace.json is written last: a folder without it is an interrupted save."""
    from safetensors.torch import save_model

    models = [models] if isinstance(models, torch.nn.Module) else list(models)
    traces = [traces] if isinstance(traces, FinetuneTrace) else list(traces)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trace.json").unlink(missing_ok=True)
    for stale in directory.glob(FOLD_FOLDER.format(k="*")):  # a save with more folds before this one
        shutil.rmtree(stale)
    for k, (model, trace) in reversed(list(enumerate(zip(models, traces, strict=True)))):
        folder = directory if k == 0 else directory / FOLD_FOLDER.format(k=k)
        folder.mkdir(exist_ok=True)
        save_model(model, str(folder / "model.safetensors"))
        (folder / "trace.json").write_text(json.dumps(dataclasses.asdict(trace)))
    return directory


def load_conditional(directory: str | Path, prior: torch.nn.Module
                     ) -> tuple[list[torch.nn.Module], list[FinetuneTrace]]:
    """`save_conditional`'s models (every fold), each rebuilt as a copy of `prior` with the saved weights."""
    from safetensors.torch import load_model

    directory = Path(directory)
    if not (directory / "trace.json").exists():
        raise FileNotFoundError(f"no complete conditional model in {directory} (trace.json missing)")
    models, traces, k = [], [], 0
    while (folder := directory if k == 0 else directory / FOLD_FOLDER.format(k=k)).joinpath("trace.json").exists():
        model = copy.deepcopy(prior)
        load_model(model, str(folder / "model.safetensors"), device=str(next(prior.parameters()).device))
        models.append(model.eval())
        traces.append(FinetuneTrace(**json.loads((folder / "trace.json").read_text())))
        k += 1
    return models, traces


@dataclass
class ConditionalLosses:
    """The prior's token losses and each fold's conditional token losses over the same documents."""

    prior: TokenLosses
    conditional: list[TokenLosses]
    traces: list[FinetuneTrace] = field(default_factory=list)

    def reduction(self, shrink_tokens: float = 0.0, folds: Sequence[int] | None = None) -> np.ndarray:
        """Per document: mean over `folds` (default all) of (prior - conditional loss sum) / (tokens + shrink)."""
        chosen = range(len(self.conditional)) if folds is None else folds
        drops = np.mean([self.prior.sums - self.conditional[k].sums for k in chosen], axis=0)
        return drops / (self.prior.counts + shrink_tokens)


def split_halves(groups: Sequence[str], seed: int) -> np.ndarray:
    """A boolean mask (True = half A) putting each group (e.g. a source document) wholly in one half.

    Groups are ranked by a seeded permutation of their sorted names; the first half of them go to A.
    """
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    in_a = {names[i] for i in order[: (len(names) + 1) // 2]}
    return np.array([g in in_a for g in groups])


def finetune_folds(prior: torch.nn.Module, optimizer_state: dict[str, Any] | None,
                   halves: tuple[torch.Tensor, torch.Tensor], cfg: FinetuneConfig,
                   folds: int = 2) -> tuple[list[torch.nn.Module], list[FinetuneTrace]]:
    """The cross-fit's conditional models and traces: fold 0 fits half A and validates on B; fold 1 (with
    `folds=2`) fits B and validates on A."""
    if folds not in (1, 2):
        raise ValueError(f"the conditional loss has 1 or 2 folds (fine-tune on half A, or on A and B averaged), "
                         f"not {folds}")
    fitted = [finetune_on_reference(prior, optimizer_state, fit, val, cfg)
              for fit, val in [(halves[0], halves[1]), (halves[1], halves[0])][:folds]]
    return [model for model, _ in fitted], [trace for _, trace in fitted]


def cross_fit_conditional_losses(prior: torch.nn.Module, optimizer_state: dict[str, Any] | None,
                                 halves: tuple[torch.Tensor, torch.Tensor], docs: Sequence[Sequence[int]],
                                 cfg: FinetuneConfig, folds: int = 2,
                                 max_batch_tokens: int = MAX_BATCH_TOKENS) -> ConditionalLosses:
    """Prior losses once, then per fold: fine-tune on one half (stopped on the other), score every document.

    The folds are `finetune_folds`'s.
    """
    models, traces = finetune_folds(prior, optimizer_state, halves, cfg, folds)
    return ConditionalLosses(document_losses(prior, docs, max_batch_tokens),
                             [document_losses(model, docs, max_batch_tokens) for model in models], traces)
