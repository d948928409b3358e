"""The selection benchmark's evaluator: a fresh LM trained on a method's mixtures, measured on held-out text.

The evaluator is not the selection proxy: its own (by default larger) GPTNeoX is built from scratch for
every (method, seed), with the same initialisation, data order seed, schedule and step count for every
method of a seed, and trains on the method's per-stage mixtures in stage order. Every `eval_every` steps it
measures the loss on held-out reference rows (the curve), per reference domain and per pool domain (held-out
pool documents), and every `cloze_every`-th time a LAMBADA-style cloze accuracy (and the target word's loss);
at the end it measures the loss on up to `final_rows` held-out reference rows and the cloze on all items.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from benchmarks.selection_data import cloze_items
from models.flops import flops_per_token
from models.oracles import reference_loss
from models.proxy_lm import build_proxy_lm, count_params, pack_sequences, use_attention
from models.tokenizer import EOS_TOKEN, encode_documents
from models.trainer import TrainConfig, batch_order, make_optimizer, resolve_device, run_steps


@dataclass
class EvalConfig:
    """The evaluator LM and its measurements (the `[eval]` table of the benchmark config)."""

    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # GPTNeoXConfig overrides, e.g. hidden_size
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    device: str = "auto"
    eval_every: int = 32
    eval_rows: int = 64
    domain_rows: int = 8
    cloze_items: int = 256
    cloze_every: int = 4
    final_rows: int = 1024


@dataclass
class EvalSets:
    """Token rows and cloze items the evaluator is measured on (built per seed: the tokenizer is per seed)."""

    reference: torch.Tensor
    reference_final: torch.Tensor
    reference_domains: dict[str, torch.Tensor]
    pool_domains: dict[str, torch.Tensor]
    cloze: list[tuple[list[int], list[int]]]


def _spread(rows: torch.Tensor, k: int) -> torch.Tensor:
    """`k` rows spaced evenly over `rows` (all of them when k is 0 or larger): a sample of every document."""
    if k <= 0 or k >= len(rows):
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, k).round().astype(int))]


def _rows(tokenizer: Tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    rows, _ = pack_sequences(encode_documents(tokenizer, texts), seq_len, tokenizer.token_to_id(EOS_TOKEN))
    return rows


def _by_domain(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {d: [r["text"] for r in records if r.get("domain") == d] for d in sorted({r.get("domain") for r in records})}


def build_eval_sets(tokenizer: Tokenizer, heldout: list[dict[str, Any]], pool_heldout: list[dict[str, Any]],
                    cfg: EvalConfig, seed: int) -> EvalSets:
    """Pack the held-out reference (whole and per domain) and held-out pool documents; tokenise cloze items."""
    texts = [r["text"] for r in heldout]
    rows = _rows(tokenizer, texts, cfg.seq_len)
    reference_domains = {d: _spread(_rows(tokenizer, t, cfg.seq_len), cfg.domain_rows)
                         for d, t in _by_domain(heldout).items()}
    pool_domains = {d: _spread(_rows(tokenizer, t, cfg.seq_len), cfg.domain_rows)
                    for d, t in _by_domain(pool_heldout).items()}
    items = []
    for context, target in cloze_items(texts, cfg.cloze_items, seed):
        (ctx, tgt) = encode_documents(tokenizer, [context, " " + target])
        if 0 < len(tgt) < cfg.seq_len:
            items.append((ctx[-(cfg.seq_len - len(tgt)):], tgt))
    return EvalSets(_spread(rows, cfg.eval_rows), _spread(rows, cfg.final_rows),
                    {d: r for d, r in reference_domains.items() if len(r)},
                    {d: r for d, r in pool_domains.items() if len(r)}, items)


@torch.no_grad()
def cloze_scores(model: torch.nn.Module, items: list[tuple[list[int], list[int]]], batch: int = 32
                 ) -> tuple[float, float]:
    """(accuracy, target loss) on cloze items. Accuracy: the share of items whose target word the model
    completes exactly by greedy (argmax) decoding given the context, every target token the argmax at its
    position, as in LAMBADA. Target loss: mean negative log-likelihood per target token, which still moves
    while a small model's accuracy sits near zero."""
    if not items:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, nll, n_tokens = 0, 0.0, 0
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        width = max(len(c) + len(t) for c, t in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)  # padded on the right: causal, never attended to
        for i, (c, t) in enumerate(chunk):
            ids[i, :len(c) + len(t)] = torch.tensor(c + t)
        logp = torch.log_softmax(model(input_ids=ids.to(device)).logits.float(), -1).cpu()
        for i, (c, t) in enumerate(chunk):
            at = logp[i, len(c) - 1:len(c) + len(t) - 1]
            target = torch.tensor(t)
            correct += bool((at.argmax(-1) == target).all())
            nll -= float(at.gather(1, target[:, None]).sum())
            n_tokens += len(t)
    model.train(was_training)
    return correct / len(items), nll / n_tokens


def evaluate(model: torch.nn.Module, sets: EvalSets, final: bool, cloze: bool) -> dict[str, Any]:
    """Held-out losses (and cloze accuracy when asked) of the model as it is now."""
    device = next(model.parameters()).device
    out: dict[str, Any] = {
        "heldout_reference_loss": reference_loss(model, (sets.reference_final if final else sets.reference).to(device)),
        "reference_domain_loss": {d: reference_loss(model, r.to(device)) for d, r in sets.reference_domains.items()},
        "pool_domain_loss": {d: reference_loss(model, r.to(device)) for d, r in sets.pool_domains.items()},
    }
    if cloze:
        out["cloze_accuracy"], out["cloze_target_loss"] = cloze_scores(model, sets.cloze)
    return out


def train_and_evaluate(stages: list[torch.Tensor], vocab_size: int, sets: EvalSets, cfg: EvalConfig, seed: int,
                       steps_per_stage: int) -> dict[str, Any]:
    """Train a fresh evaluator on `stages` (packed rows of each stage's mixture, in order) and measure it.

    Each stage runs `steps_per_stage` steps over its rows in a seeded shuffled order (cycling if a mixture
    packs into fewer rows than the steps need); the learning-rate schedule spans all stages.
    """
    device = resolve_device(cfg.device)
    model = build_proxy_lm(cfg.preset, vocab_size, cfg.seq_len, seed, cfg.model).to(device)
    use_attention(model, "sdpa")
    total = steps_per_stage * len(stages)
    tc = TrainConfig(steps=steps_per_stage, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                     weight_decay=cfg.weight_decay, beta1=cfg.beta1, beta2=cfg.beta2, grad_clip=cfg.grad_clip,
                     device=device, bf16=device.startswith("cuda"), seed=seed, total_steps=total)
    optimizer = make_optimizer(model, tc)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    curve: list[dict[str, Any]] = []
    train_seconds = eval_seconds = 0.0
    step = 0
    for s, rows in enumerate(stages):
        order = batch_order(len(rows), tc, step_offset=s * steps_per_stage)
        done = 0
        while done < steps_per_stage:
            n = min(cfg.eval_every - step % cfg.eval_every, steps_per_stage - done)
            model.train()
            result = run_steps(model, model, optimizer, rows, order[done:done + n], replace(tc, steps=n),
                               step_offset=step, progress=False)
            train_seconds += result.seconds
            done, step = done + n, step + n
            if step % cfg.eval_every == 0 or step == total:
                started = time.perf_counter()
                with_cloze = (len(curve) + 1) % max(cfg.cloze_every, 1) == 0 or step == total
                point = {"step": step, "tokens": step * tokens_per_step, "stage": s,
                         "train_loss": float(np.mean(result.losses)), **evaluate(model, sets, False, with_cloze)}
                curve.append(point)
                eval_seconds += time.perf_counter() - started
    started = time.perf_counter()
    final = evaluate(model, sets, final=True, cloze=True)
    eval_seconds += time.perf_counter() - started
    fpt = flops_per_token(model, cfg.seq_len)
    return {"final": final, "curve": curve, "params": count_params(model), "steps": total,
            "tokens": total * tokens_per_step, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
            "tokens_per_s": total * tokens_per_step / max(train_seconds, 1e-9),
            "train_flops": fpt * total * tokens_per_step, "flops_per_token": fpt,
            "stage_rows": [len(r) for r in stages]}


def tokens_to_reach(curve: list[dict[str, Any]], target: float, key: str = "heldout_reference_loss") -> float | None:
    """Training tokens at which the curve first reaches `target` loss (linear between evaluations), or None."""
    previous = None
    for point in curve:
        if point[key] <= target:
            if previous is None or previous[key] == point[key]:
                return float(point["tokens"])
            frac = (previous[key] - target) / (previous[key] - point[key])
            return float(previous["tokens"] + frac * (point["tokens"] - previous["tokens"]))
        previous = point
    return None
