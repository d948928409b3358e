"""How fast and how faithful are the cheap oracle probes? Exact MATES probes vs the estimators, measured.

Trains a proxy on the shared corpus, saves checkpoints at early/middle/late steps (models.trainer
.save_checkpoint), reloads each (so the optimizer state goes through the same round trip as in the flow)
and probes the SAME candidate documents exactly and with every estimator. Reported per checkpoint and
pooled: ms per probe, speedup over the sequential exact probe, Spearman and Pearson against it.

    python -m benchmarks.oracle_probes --docs 200 --steps 300 --checkpoints 50,150,300

Sizes are arguments so the tests can run it in seconds (`measure_probes` on a handful of documents).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from benchmarks import SHARED_CORPUS
from models.oracles import ProbeConfig, exact_probes, exact_probes_batched, fast_probes
from models.proxy_lm import build_proxy_lm, document_tensor, pack_sequences
from models.tokenizer import encode_documents, train_bpe_tokenizer
from models.trainer import TrainConfig, load_checkpoint, make_optimizer, save_checkpoint, train

CORPUS = SHARED_CORPUS
FAST_METHODS = ("first_order", "shifted", "first_order_loop")
"""Estimators timed by default; "second_order"/"shifted_second_order" cost more than the exact probe."""


def _correlations(estimate: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson of an estimate against the exact scores (nan when undefined)."""
    if len(exact) < 3 or np.std(estimate) == 0 or np.std(exact) == 0:
        return {"spearman_vs_exact": float("nan"), "pearson_vs_exact": float("nan")}
    return {"spearman_vs_exact": float(spearmanr(estimate, exact).statistic),
            "pearson_vs_exact": float(pearsonr(estimate, exact).statistic)}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure_probes(model: torch.nn.Module, optimizer_state: dict[str, Any] | None, docs: list[torch.Tensor],
                   ref: torch.Tensor, cfg: ProbeConfig, methods: tuple[str, ...] = FAST_METHODS,
                   exact_batch: int = 0) -> dict[str, Any]:
    """Exact probes (sequential loop) and each method in `methods` on the same docs, timed and compared.

    `methods` may include "exact_batched" (the vmapped exact probe, batch `exact_batch` or 8). Returns
    {"exact": {"probe_ms", "scores"}, method: {"probe_ms", "speedup_vs_exact", "spearman_vs_exact",
    "pearson_vs_exact", "scores"}}; scores are lists so the dict is JSON-ready.
    """
    n = max(len(docs), 1)
    exact, seconds = _timed(lambda: exact_probes(model, optimizer_state, docs, ref, cfg, progress=False, batch=0))
    exact_ms = 1000 * seconds / n
    out: dict[str, Any] = {"exact": {"probe_ms": exact_ms, "scores": exact.scores.tolist()}}
    for method in methods:
        if method == "exact_batched":
            call = lambda: exact_probes_batched(model, optimizer_state, docs, ref, cfg, exact_batch or 8).scores
        else:
            call = lambda m=method: fast_probes(model, optimizer_state, docs, ref, cfg, progress=False, method=m)
        scores, seconds = _timed(call)
        ms = 1000 * seconds / n
        out[method] = {"probe_ms": ms, "speedup_vs_exact": exact_ms / ms,
                       **_correlations(np.asarray(scores), exact.scores), "scores": np.asarray(scores).tolist()}
    return out


@dataclass
class BenchData:
    """Tokenised training rows, candidate documents and reference rows for one benchmark run."""

    train_rows: torch.Tensor
    docs: list[torch.Tensor]
    ref: torch.Tensor
    vocab_size: int
    seq_len: int


def _read_texts(path: Path, limit: int) -> list[str]:
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
            if len(texts) == limit:
                break
    return texts


def load_data(n_docs: int, seq_len: int = 128, vocab_size: int = 4096, ref_rows: int = 32,
              train_records: int = 6000, seed: int = 0, corpus: Path = CORPUS) -> BenchData:
    """Pool prefix for the tokenizer and training rows; `n_docs` other pool records (seeded) as candidates."""
    texts = _read_texts(corpus / "corpus.jsonl.gz", train_records + 20 * n_docs)
    train_texts, rest = texts[:train_records], texts[train_records:]
    tok = train_bpe_tokenizer(train_texts[:3000], vocab_size=vocab_size)
    rows, _ = pack_sequences(encode_documents(tok, train_texts), seq_len, eos_id=0)
    candidates = random.Random(seed).sample(rest, min(n_docs, len(rest)))
    docs = [document_tensor(ids, seq_len, eos_id=0) for ids in encode_documents(tok, candidates)]
    ref_texts = _read_texts(corpus / "reference.jsonl.gz", 10_000)
    ref, _ = pack_sequences(encode_documents(tok, ref_texts), seq_len, eos_id=0)
    return BenchData(rows, docs, ref[:ref_rows], tok.get_vocab_size(), seq_len)


def train_checkpoints(data: BenchData, checkpoints: list[int], out_dir: Path, preset: str = "tiny",
                      lr: float = 1e-3, seed: int = 0, overrides: dict[str, Any] | None = None) -> list[Path]:
    """Train one proxy through all `checkpoints` (one cosine schedule over the last) and save each."""
    model = build_proxy_lm(preset, data.vocab_size, data.seq_len, seed, overrides)
    total = max(checkpoints)
    optimizer = None
    done, paths = 0, []
    for stop in sorted(checkpoints):
        cfg = TrainConfig(steps=stop - done, batch_size=8, lr=lr, warmup_steps=10, weight_decay=0.1, beta1=0.9,
                          beta2=0.95, grad_clip=1.0, seed=seed, total_steps=total)
        optimizer = optimizer or make_optimizer(model, cfg)
        if stop > done:
            train(model, optimizer, data.train_rows, cfg, step_offset=done, progress=False)
        done = stop
        paths.append(save_checkpoint(out_dir / f"step-{stop}", model, optimizer, {"step": stop}))
    return paths


def run(n_docs: int, checkpoints: list[int], out_dir: Path, probe_lr: float = 1e-3,
        methods: tuple[str, ...] = FAST_METHODS, ref_rows: int = 32, seq_len: int = 128,
        vocab_size: int = 4096, preset: str = "tiny", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole benchmark: data, training with checkpoints, `measure_probes` at each, pooled summary."""
    data = load_data(n_docs, seq_len, vocab_size, ref_rows)
    cfg = ProbeConfig(lr=probe_lr, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0)
    result: dict[str, Any] = {"settings": {"docs": len(data.docs), "checkpoints": checkpoints, "probe_lr": probe_lr,
                                           "ref_rows": len(data.ref), "seq_len": seq_len, "preset": preset,
                                           "torch_threads": torch.get_num_threads()}, "checkpoints": {}}
    for path, step in zip(train_checkpoints(data, checkpoints, out_dir, preset, overrides=overrides),
                          sorted(checkpoints)):
        model, state, _ = load_checkpoint(path)
        result["checkpoints"][step] = measure_probes(model, state, data.docs, data.ref, cfg, methods)
    result["pooled"] = _pooled(result["checkpoints"], methods)
    return result


def _pooled(per_checkpoint: dict[int, dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    """Per method: Spearman/Pearson over all checkpoints' probes together, and the mean of per-checkpoint ones.

    Scores are standardised within a checkpoint before pooling: the scale of the step's effect changes
    with training, and a pooled rank should compare documents, not checkpoints.
    """
    def z(x: list[float]) -> np.ndarray:
        a = np.asarray(x)
        return (a - a.mean()) / (a.std() or 1.0)

    exact = np.concatenate([z(r["exact"]["scores"]) for r in per_checkpoint.values()])
    pooled = {}
    for m in methods:
        est = np.concatenate([z(r[m]["scores"]) for r in per_checkpoint.values()])
        per = [r[m] for r in per_checkpoint.values()]
        pooled[m] = {**_correlations(est, exact),
                     "mean_spearman_per_checkpoint": float(np.mean([p["spearman_vs_exact"] for p in per])),
                     "speedup_vs_exact": float(np.mean([p["speedup_vs_exact"] for p in per]))}
    return pooled


def summary_table(result: dict[str, Any]) -> str:
    """Plain-text table of the per-checkpoint numbers (no score lists)."""
    lines = [f"{'ckpt':>6} {'method':>22} {'ms/probe':>9} {'speedup':>8} {'spearman':>9} {'pearson':>8}"]
    for step, r in result["checkpoints"].items():
        lines.append(f"{step:>6} {'exact':>22} {r['exact']['probe_ms']:9.1f}")
        for m, v in r.items():
            if m != "exact":
                lines.append(f"{step:>6} {m:>22} {v['probe_ms']:9.1f} {v['speedup_vs_exact']:8.1f} "
                             f"{v['spearman_vs_exact']:9.3f} {v['pearson_vs_exact']:8.3f}")
    for m, v in result["pooled"].items():
        lines.append(f"{'pooled':>6} {m:>22} {'':>9} {v['speedup_vs_exact']:8.1f} {v['spearman_vs_exact']:9.3f} "
                     f"{v['pearson_vs_exact']:8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=300, help="last checkpoint (the schedule's length)")
    parser.add_argument("--checkpoints", default="", help="comma-separated steps; default steps/6, steps/2, steps")
    parser.add_argument("--probe-lr", type=float, default=1e-3)
    parser.add_argument("--ref-rows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--methods", default=",".join(FAST_METHODS))
    parser.add_argument("--out", default="runs/bench-oracle", help="checkpoint folder")
    parser.add_argument("--json", default="", help="also write the full result (scores included) here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoints = ([int(s) for s in args.checkpoints.split(",")] if args.checkpoints
                   else [max(1, args.steps // 6), max(1, args.steps // 2), args.steps])
    result = run(args.docs, checkpoints, Path(args.out), args.probe_lr, tuple(args.methods.split(",")),
                 args.ref_rows, args.seq_len, args.vocab, args.preset)
    print(summary_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
