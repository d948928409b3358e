"""How well does the distilled influence model reproduce the exact MATES oracle, and what does it cost?

Three questions, measured on CPU at a moderate scale with every seed fixed:

1. Frozen-encoder head (`train_influence_head` on MiniLM embeddings) vs fine-tuned encoder
   (`train_influence_model`): held-out Spearman against EXACT probe labels on the same split, wall time;
   plus a sweep of head sizes and of the pairwise ranking term, a ridge regression and a length-only
   baseline as floors.
2. Label source for a fixed probing budget: N exact probes vs k*N first-order (fast) probes, k chosen so
   that both cost the same measured compute. The influence model is trained on each label set and scored
   against EXACT labels on the same exact-probed held-out documents.
3. Scoring throughput of the influence model: docs/s for the head on stored embeddings and for
   MiniLM + head from raw text, and the FLOPs per document of MiniLM-L6 at 128 tokens.

Protocol (why the numbers are not optimistic): the held-out (test) documents are never used for training
or for early stopping. Early stopping uses an inner validation split carved out of the TRAINING documents
(the pipeline's `distill_stage` early-stops on its held-out split and reports that same split's Spearman,
which is biased upward; `pipeline_style_val_spearman` measures by how much). Head results are averaged over
`n_repeats` random train/test splits; the expensive fine-tuned encoder runs on split 0 only, and the head
numbers on split 0 are reported next to it for a like-for-like comparison.

Run:  .venv/bin/python -m benchmarks.influence_study --n-exact 400 --seed 0 > influence_study.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import SHARED_CORPUS
from models import oracles
from models.influence import InfluenceConfig, predict, spearman, train_influence_head
from models.oracles import ProbeConfig, exact_probes, fast_probes, reference_loss
from models.proxy_lm import build_proxy_lm, count_params, document_tensor, pack_sequences
from models.tokenizer import EOS_TOKEN, encode_documents, train_bpe_tokenizer
from models.trainer import TrainConfig, make_optimizer, train

DEFAULT_CORPUS = SHARED_CORPUS / "corpus.jsonl.gz"
DEFAULT_REFERENCE = SHARED_CORPUS / "reference.jsonl.gz"
PROBE_TEXT_CHARS = 4_000  # a probe sees <= seq_len tokens (~450 chars at 128); longer text is wasted tokenizing
TRAIN_TEXT_CHARS = 20_000  # bounds tokenizer time on the few 100k-char records of the pool


def _log(msg: str, verbose: bool) -> None:
    if verbose:
        print(f"[influence_study {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _iter_texts(path: Path) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line).get("text") or ""
            if text.strip():
                yield text


def _take(it: Iterator[str], n: int, max_chars: int) -> list[str]:
    out = []
    for text in it:
        out.append(text[:max_chars])
        if len(out) == n:
            break
    return out


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def _split(n: int, test_fraction: float, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """(fit, val, test) index arrays: test is `test_fraction` of all, val is `val_fraction` of the rest."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_test = max(1, round(test_fraction * n))
    test, rest = order[:n_test], order[n_test:]
    n_val = max(1, round(val_fraction * len(rest)))
    return rest[n_val:], rest[:n_val], test


def _inner_split(idx: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(idx)
    n_val = max(1, round(val_fraction * len(order)))
    return order[n_val:], order[:n_val]


def _fit_head(X: np.ndarray, y: np.ndarray, fit: np.ndarray, val: np.ndarray, X_test: np.ndarray,
              y_test: np.ndarray, cfg: InfluenceConfig) -> dict[str, Any]:
    started = time.perf_counter()
    head, report = train_influence_head(X[fit], y[fit], X[val], y[val], cfg)
    seconds = time.perf_counter() - started
    return {
        "test_spearman": spearman(predict(head, X_test), y_test),
        "val_spearman": report.val_spearman,
        "best_epoch": report.best_epoch,
        "epochs_run": report.epochs_run,
        "seconds": seconds,
        "head": head,
    }


def _fit_ridge(X: np.ndarray, y: np.ndarray, fit: np.ndarray, val: np.ndarray, X_test: np.ndarray,
               y_test: np.ndarray) -> dict[str, Any]:
    """Closed-form ridge on z-scored targets; alpha chosen on the inner validation split."""
    Xf = X[fit].astype(np.float64)
    mu, yf = Xf.mean(0), y[fit]
    ym, ys = yf.mean(), yf.std() or 1.0
    A = Xf - mu
    z = (yf - ym) / ys
    best = (-math.inf, None, None)
    for alpha in (0.01, 0.1, 1.0, 10.0, 100.0):
        w = np.linalg.solve(A.T @ A + alpha * np.eye(A.shape[1]), A.T @ z)
        rho = spearman((X[val] - mu) @ w, y[val])
        if rho > best[0]:
            best = (rho, alpha, w)
    _, alpha, w = best
    return {"test_spearman": spearman((X_test - mu) @ w, y_test), "alpha": alpha}


# --------------------------------------------------------------------------------------------- setup


def _train_proxy(texts: list[str], vocab_size: int, seq_len: int, preset: str, overrides: dict | None,
                 steps: int, batch_size: int, lr: float, warmup: int, seed: int):
    tok = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    eos = tok.token_to_id(EOS_TOKEN)
    rows, n_tokens = pack_sequences(encode_documents(tok, texts), seq_len, eos)
    model = build_proxy_lm(preset, tok.get_vocab_size(), seq_len, seed, overrides)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, weight_decay=0.1,
                      beta1=0.9, beta2=0.95, grad_clip=1.0, device="cpu", bf16=False, seed=seed)
    optimizer = make_optimizer(model, cfg)
    result = train(model, optimizer, rows, cfg, progress=False)
    return tok, model, optimizer.state_dict(), cfg, result, n_tokens


def _embed(encoder, texts: list[str], batch_size: int) -> np.ndarray:
    """What the pipeline stores (tasks/embed.py): normalised MiniLM embeddings, length-sorted batches."""
    return encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                          convert_to_numpy=True).astype(np.float32)


def _minilm_flops(encoder, seq_len: int) -> dict[str, float]:
    """FLOPs of one MiniLM forward on one document of exactly `seq_len` tokens (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    transformer = encoder[0].auto_model
    ids = torch.full((1, seq_len), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        transformer(input_ids=ids, attention_mask=mask)
    total = sum(p.numel() for p in transformer.parameters())
    emb = sum(p.numel() for n, p in transformer.named_parameters() if "embeddings" in n)
    return {
        "flops_per_doc_counted": float(counter.get_total_flops()),
        "flops_per_doc_2NT_all_params": 2.0 * total * seq_len,
        "flops_per_doc_2NT_non_embedding": 2.0 * (total - emb) * seq_len,
        "encoder_params": float(total),
        "encoder_non_embedding_params": float(total - emb),
    }


# ----------------------------------------------------------------------------------------------- study


def run_influence_study(
    n_exact: int = 400,
    *,
    heldout_fraction: float = 0.25,
    val_fraction: float = 0.2,
    n_repeats: int = 3,
    corpus: str | Path = DEFAULT_CORPUS,
    reference: str | Path = DEFAULT_REFERENCE,
    proxy_docs: int = 3000,
    vocab_size: int = 4096,
    seq_len: int = 128,
    proxy_preset: str = "tiny",
    proxy_overrides: dict[str, Any] | None = None,
    proxy_steps: int = 300,
    proxy_batch_size: int = 8,
    proxy_lr: float = 1e-3,
    proxy_warmup: int = 10,
    reference_rows: int = 32,
    hidden_dims: Sequence[int] = (64, 128, 256),
    ranking_weights: Sequence[float] = (0.0, 1.0),
    head_epochs: int = 200,
    head_patience: int = 30,
    finetune: bool = True,
    finetune_epochs: int = 4,
    finetune_patience: int = 2,
    finetune_batch_size: int = 16,
    encoder_lr: float = 2e-5,
    fast_per_exact: float | None = None,
    fast_method: str | None = None,
    max_fast_docs: int = 4000,
    scoring_docs: int = 1024,
    scoring_batch_size: int = 64,
    head_scoring_rows: int = 200_000,
    embed_model: str = "all-MiniLM-L6-v2",
    max_seq_length: int = 128,
    threads: int = 1,
    seed: int = 0,
    verbose: bool = True,
    save_arrays: str | Path | None = None,
) -> dict[str, Any]:
    """Run the three measurements; returns a JSON-ready dict (see module docstring for the protocol).

    `fast_per_exact` fixes k (fast labels per exact label); None measures both probe costs and sets k to
    their ratio (capped so that at most `max_fast_docs` documents are fast-probed). `fast_method` is the
    estimator of `fast_probes` (None: the pipeline's default, `models.oracles.DEFAULT_ESTIMATOR`). `save_arrays` names an
    .npz file for the per-document labels, embeddings and token counts (for analyses without re-probing).
    """
    from models.influence_encoder import predict_texts, train_influence_model
    from tasks.embed import load_embedder

    t_start = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    out: dict[str, Any] = {}
    try:
        # ---- data: disjoint slices of the (pre-shuffled) pool
        t0 = time.perf_counter()
        it = _iter_texts(Path(corpus))
        proxy_texts = _take(it, proxy_docs, TRAIN_TEXT_CHARS)
        exact_texts = _take(it, n_exact, PROBE_TEXT_CHARS)
        scoring_texts = _take(it, scoring_docs, PROBE_TEXT_CHARS)
        extra_texts = _take(it, max(0, max_fast_docs - n_exact), PROBE_TEXT_CHARS)
        ref_texts = list(_iter_texts(Path(reference)))
        if len(exact_texts) < n_exact:
            raise ValueError(f"the corpus has too few documents for n_exact={n_exact}")
        timings["load_s"] = time.perf_counter() - t0

        # ---- proxy LM, reference rows, probe inputs
        t0 = time.perf_counter()
        tok, model, opt_state, tcfg, tres, n_train_tokens = _train_proxy(
            proxy_texts, vocab_size, seq_len, proxy_preset, proxy_overrides, proxy_steps, proxy_batch_size,
            proxy_lr, proxy_warmup, seed)
        timings["proxy_train_s"] = time.perf_counter() - t0
        eos = tok.token_to_id(EOS_TOKEN)
        ref, _ = pack_sequences(encode_documents(tok, ref_texts), seq_len, eos)
        ref = ref[:reference_rows]
        exact_ids = encode_documents(tok, exact_texts)
        extra_ids = encode_documents(tok, extra_texts)
        exact_docs = [document_tensor(x, seq_len, eos) for x in exact_ids]
        n_tokens = np.array([min(len(x), seq_len) for x in exact_ids], dtype=np.float64)
        fast_kwargs = {"method": fast_method} if fast_method else {}
        pcfg = ProbeConfig(lr=proxy_lr, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0)
        out["proxy"] = {
            "preset": proxy_preset, "overrides": proxy_overrides, "params": count_params(model),
            "vocab_size": tok.get_vocab_size(), "seq_len": seq_len, "steps": proxy_steps,
            "batch_size": proxy_batch_size, "lr": proxy_lr, "train_docs": len(proxy_texts),
            "train_rows_available": n_train_tokens // seq_len, "final_train_loss": tres.losses[-1],
            "reference_rows": len(ref), "reference_loss": reference_loss(model, ref),
        }
        _log(f"proxy {out['proxy']['params']} params, loss {tres.losses[-1]:.3f}, "
             f"ref loss {out['proxy']['reference_loss']:.3f} ({timings['proxy_train_s']:.0f}s)", verbose)

        # ---- exact and fast probes of the exact set (measures the per-probe costs)
        t0 = time.perf_counter()
        y_exact = exact_probes(model, opt_state, exact_docs, ref, pcfg, progress=False).scores
        exact_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        y_fast_exactset = fast_probes(model, opt_state, exact_docs, ref, pcfg, progress=False, **fast_kwargs)
        fast_s = time.perf_counter() - t0
        c_exact, c_fast = exact_s / n_exact, fast_s / n_exact
        timings["exact_probes_s"], timings["fast_probes_exactset_s"] = exact_s, fast_s
        out["probes"] = {
            "fast_method": fast_method or getattr(oracles, "DEFAULT_ESTIMATOR", "first_order"),
            "exact_s_per_probe": c_exact, "fast_s_per_probe": c_fast, "cost_ratio_exact_over_fast": c_exact / c_fast,
            "fast_vs_exact_spearman_all": spearman(y_fast_exactset, y_exact),
            "exact_score_mean": float(y_exact.mean()), "exact_score_std": float(y_exact.std()),
            "length_vs_exact_spearman_all": spearman(n_tokens, y_exact),
        }
        _log(f"{n_exact} exact probes {c_exact:.3f}s each, fast {c_fast:.3f}s each "
             f"(x{c_exact / c_fast:.1f}), fast-vs-exact rho {out['probes']['fast_vs_exact_spearman_all']:.3f}",
             verbose)

        # ---- embeddings of the exact set (as stored by the pipeline)
        encoder = load_embedder(embed_model, "cpu", max_seq_length)
        t0 = time.perf_counter()
        X_exact = _embed(encoder, exact_texts, scoring_batch_size)
        timings["embed_exact_s"] = time.perf_counter() - t0

        # ---- Q1: head sweep (repeated splits) + ridge + length floor
        base = InfluenceConfig(epochs=head_epochs, patience=head_patience, seed=seed)
        grid = [replace(base, hidden_dim=h, ranking_weight=r) for h in hidden_dims for r in ranking_weights]
        splits = [_split(n_exact, heldout_fraction, val_fraction, seed + 1000 * i) for i in range(n_repeats)]
        sweep = []
        t0 = time.perf_counter()
        for cfg in grid:
            runs = []
            for i, (fit, val, test) in enumerate(splits):
                r = _fit_head(X_exact, y_exact, fit, val, X_exact[test], y_exact[test], replace(cfg, seed=seed + i))
                runs.append({k: v for k, v in r.items() if k != "head"})
            sweep.append({
                "hidden_dim": cfg.hidden_dim, "ranking_weight": cfg.ranking_weight,
                "test_spearman": _mean_std([r["test_spearman"] for r in runs]),
                "split0_test_spearman": runs[0]["test_spearman"],
                "val_spearman": _mean_std([r["val_spearman"] for r in runs]),
                "best_epoch": _mean_std([r["best_epoch"] for r in runs]),
                "seconds": _mean_std([r["seconds"] for r in runs]),
            })
            _log(f"head h={cfg.hidden_dim} rank={cfg.ranking_weight}: test rho "
                 f"{sweep[-1]['test_spearman']['mean']:.3f} +- {sweep[-1]['test_spearman']['std']:.3f}", verbose)
        timings["head_sweep_s"] = time.perf_counter() - t0
        best_i = int(np.argmax([s["test_spearman"]["mean"] for s in sweep]))
        best_cfg = grid[best_i]
        default_i = next((i for i, c in enumerate(grid)
                          if c.hidden_dim == InfluenceConfig.hidden_dim and c.ranking_weight == 0.0), best_i)
        ridge = [_fit_ridge(X_exact, y_exact, fit, val, X_exact[test], y_exact[test]) for fit, val, test in splits]
        length_floor = [spearman(n_tokens[test], y_exact[test]) for _, _, test in splits]
        # the pipeline's protocol: early stopping on the held-out split, whose Spearman is then reported
        biased = []
        for i, (fit, val, test) in enumerate(splits):
            trainval = np.concatenate([fit, val])
            head, report = train_influence_head(X_exact[trainval], y_exact[trainval], X_exact[test], y_exact[test],
                                                replace(best_cfg, seed=seed + i))
            biased.append(report.val_spearman)
        out["q1_heads"] = {
            "sweep": sweep, "best": {"hidden_dim": best_cfg.hidden_dim, "ranking_weight": best_cfg.ranking_weight},
            "default_config_test_spearman": sweep[default_i]["test_spearman"],
            "ridge_test_spearman": _mean_std([r["test_spearman"] for r in ridge]),
            "ridge_alphas": [r["alpha"] for r in ridge],
            "length_only_test_spearman": _mean_std(length_floor),
            "pipeline_style_val_spearman": _mean_std(biased),
            "splits": {"n_fit": len(splits[0][0]), "n_val": len(splits[0][1]), "n_test": len(splits[0][2])},
        }
        frozen_split0 = sweep[best_i]["split0_test_spearman"]
        fit0, val0, test0 = splits[0]
        t0 = time.perf_counter()
        head0 = _fit_head(X_exact, y_exact, fit0, val0, X_exact[test0], y_exact[test0], best_cfg)
        frozen_time = time.perf_counter() - t0

        # ---- Q1: fine-tuned encoder on split 0 (same fit/val/test, same labels)
        finetune_res: dict[str, Any] = {"ran": False}
        if finetune:
            ft_cfg = replace(best_cfg, finetune_encoder=True, epochs=finetune_epochs, patience=finetune_patience,
                             batch_size=finetune_batch_size, encoder_lr=encoder_lr, max_seq_length=max_seq_length)
            ft_encoder = load_embedder(embed_model, "cpu", max_seq_length)
            t0 = time.perf_counter()
            ft_model, ft_report = train_influence_model(
                [exact_texts[i] for i in fit0], y_exact[fit0], [exact_texts[i] for i in val0], y_exact[val0],
                ft_encoder, ft_cfg)
            ft_time = time.perf_counter() - t0
            ft_pred = predict_texts(ft_model, [exact_texts[i] for i in test0], batch_size=scoring_batch_size)
            finetune_res = {
                "ran": True, "test_spearman": spearman(ft_pred, y_exact[test0]),
                "val_spearman": ft_report.val_spearman, "best_epoch": ft_report.best_epoch,
                "epochs_run": ft_report.epochs_run, "seconds": ft_time,
                "config": {k: v for k, v in asdict(ft_cfg).items()},
                "history": ft_report.history,
            }
            _log(f"fine-tuned encoder: test rho {finetune_res['test_spearman']:.3f} ({ft_time:.0f}s); "
                 f"frozen head split0 {frozen_split0:.3f}", verbose)
            del ft_model, ft_encoder
        out["q1"] = {
            "split": "split 0", "frozen_head_test_spearman": frozen_split0, "frozen_head_seconds": frozen_time,
            "frozen_head_embed_seconds": timings["embed_exact_s"], "finetuned": finetune_res,
        }

        # ---- Q2: N exact labels vs k*N fast labels at equal measured compute
        n_train = len(fit0) + len(val0)
        k = fast_per_exact if fast_per_exact is not None else c_exact / c_fast
        n_fast_train = int(min(round(k * n_train), max_fast_docs - len(test0), n_train + len(extra_ids)))
        n_extra = max(0, n_fast_train - n_train)
        extra_docs = [document_tensor(x, seq_len, eos) for x in extra_ids[:n_extra]]
        t0 = time.perf_counter()
        y_fast_extra = (fast_probes(model, opt_state, extra_docs, ref, pcfg, progress=False, **fast_kwargs)
                        if extra_docs else np.zeros(0))
        fast_extra_s = time.perf_counter() - t0
        timings["fast_probes_extra_s"] = fast_extra_s
        t0 = time.perf_counter()
        X_extra = _embed(encoder, extra_texts[:n_extra], scoring_batch_size) if n_extra else np.zeros((0, X_exact.shape[1]), np.float32)
        timings["embed_extra_s"] = time.perf_counter() - t0
        fast_cost = (fast_s / n_exact) * n_train + fast_extra_s
        exact_cost = c_exact * n_train
        X_all = np.concatenate([X_exact, X_extra])
        y_fast_all = np.concatenate([y_fast_exactset, y_fast_extra])
        arms: dict[str, list[float]] = {"exact": [], "fast_kN": [], "fast_sameN": [], "fast_probe_direct": []}
        for i, (fit, val, test) in enumerate(splits):
            cfg_i = replace(best_cfg, seed=seed + i)
            trainval = np.concatenate([fit, val])
            arms["exact"].append(_fit_head(X_exact, y_exact, fit, val, X_exact[test], y_exact[test], cfg_i)["test_spearman"])
            f_fit, f_val = _inner_split(trainval, val_fraction, seed + i)
            arms["fast_sameN"].append(
                _fit_head(X_exact, y_fast_exactset, f_fit, f_val, X_exact[test], y_exact[test], cfg_i)["test_spearman"])
            pool = np.concatenate([trainval, n_exact + np.arange(n_extra)])
            k_fit, k_val = _inner_split(pool, val_fraction, seed + i)
            arms["fast_kN"].append(
                _fit_head(X_all, y_fast_all, k_fit, k_val, X_exact[test], y_exact[test], cfg_i)["test_spearman"])
            arms["fast_probe_direct"].append(spearman(y_fast_exactset[test], y_exact[test]))
        out["q2"] = {
            "n_exact_train": n_train, "n_fast_train": n_train + n_extra, "n_test": len(test0),
            "k_target": k, "fast_labels_per_exact_budget": (n_train + n_extra) / n_train,
            "compute_exact_s": exact_cost, "compute_fast_s": fast_cost, "compute_ratio_fast_over_exact": fast_cost / exact_cost,
            "arms_test_spearman": {a: _mean_std(v) for a, v in arms.items()},
            "arms_per_split": arms,
            "note": "fast_probe_direct = the fast probe itself on the test docs (not a model: needs a probe per doc)",
        }
        _log("q2: " + ", ".join(f"{a} {np.mean(v):.3f}" for a, v in arms.items())
             + f" (k={n_train + n_extra}/{n_train}, compute ratio {fast_cost / exact_cost:.2f})", verbose)

        if save_arrays:
            np.savez_compressed(save_arrays, X_exact=X_exact, y_exact=y_exact, y_fast_exactset=y_fast_exactset,
                                X_extra=X_extra, y_fast_extra=y_fast_extra, n_tokens=n_tokens,
                                n_tokens_extra=np.array([min(len(x), seq_len) for x in extra_ids[:n_extra]]))

        # ---- Q3: scoring throughput
        head = head0["head"]
        rows = np.resize(X_all, (head_scoring_rows, X_all.shape[1])).astype(np.float32)
        predict(head, rows[:4096])
        t0 = time.perf_counter()
        predict(head, rows)
        head_s = time.perf_counter() - t0
        _embed(encoder, scoring_texts[:scoring_batch_size], scoring_batch_size)  # warm-up
        t0 = time.perf_counter()
        predict(head, _embed(encoder, scoring_texts, scoring_batch_size))
        text_s = time.perf_counter() - t0
        wp = encoder.tokenizer(scoring_texts, truncation=True, max_length=max_seq_length)["input_ids"]
        mean_tokens = float(np.mean([len(x) for x in wp]))
        flops = _minilm_flops(encoder, max_seq_length)
        flops_mean_doc = _minilm_flops(encoder, max(2, round(mean_tokens)))["flops_per_doc_counted"]
        out["q3"] = {
            "head_docs_per_s": head_scoring_rows / head_s, "head_rows": head_scoring_rows,
            "text_docs_per_s": len(scoring_texts) / text_s, "text_docs": len(scoring_texts),
            "text_batch_size": scoring_batch_size, "max_seq_length": max_seq_length,
            "mean_wordpiece_tokens_per_doc": mean_tokens,
            "share_docs_truncated_at_max": float(np.mean([len(x) >= max_seq_length for x in wp])),
            **flops, "flops_per_doc_at_mean_tokens": flops_mean_doc,
            "achieved_gflops_per_s": len(scoring_texts) * flops_mean_doc / text_s / 1e9,
            "threads": threads,
        }
        _log(f"q3: head {out['q3']['head_docs_per_s']:.0f} docs/s, text {out['q3']['text_docs_per_s']:.1f} docs/s, "
             f"{flops['flops_per_doc_counted'] / 1e9:.2f} GFLOP/doc at {max_seq_length} tokens", verbose)

        # ---- flat summary keys
        best_frozen = sweep[best_i]["test_spearman"]["mean"]
        ft = finetune_res.get("test_spearman", float("nan"))
        out.update({
            "influence_model_spearman": max(frozen_split0, ft) if finetune else frozen_split0,
            "influence_model_best": "finetuned_encoder" if finetune and ft > frozen_split0 else "frozen_head",
            "frozen_head_spearman": frozen_split0,
            "frozen_head_spearman_mean_over_splits": best_frozen,
            "finetuned_encoder_spearman": ft,
            "labels_exact_spearman": float(np.mean(arms["exact"])),
            "labels_fast_spearman": float(np.mean(arms["fast_kN"])),
            "fast_labels_per_exact_budget": (n_train + n_extra) / n_train,
            "scoring_docs_per_s_head": out["q3"]["head_docs_per_s"],
            "scoring_docs_per_s_text": out["q3"]["text_docs_per_s"],
            "flops_per_doc_text": flops["flops_per_doc_counted"],
            "best_head_config": asdict(best_cfg),
        })
        timings["total_s"] = time.perf_counter() - t_start
        out["timings"] = timings
        out["config"] = {
            "n_exact": n_exact, "heldout_fraction": heldout_fraction, "val_fraction": val_fraction,
            "n_repeats": n_repeats, "corpus": str(corpus), "reference": str(reference), "proxy_docs": proxy_docs,
            "head_epochs": head_epochs, "head_patience": head_patience, "hidden_dims": list(hidden_dims),
            "ranking_weights": list(ranking_weights), "finetune": finetune, "finetune_epochs": finetune_epochs,
            "finetune_patience": finetune_patience, "finetune_batch_size": finetune_batch_size,
            "encoder_lr": encoder_lr, "fast_per_exact": fast_per_exact, "fast_method": fast_method, "max_fast_docs": max_fast_docs,
            "scoring_docs": scoring_docs, "embed_model": embed_model, "threads": threads, "seed": seed,
            "probe": asdict(pcfg), "proxy_train": asdict(tcfg),
        }
        return out
    finally:
        torch.set_num_threads(threads_before)


def _parse_overrides(value: str | None) -> dict[str, Any] | None:
    return json.loads(value) if value else None


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-exact", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--heldout-fraction", type=float, default=0.25)
    p.add_argument("--proxy-docs", type=int, default=3000)
    p.add_argument("--proxy-steps", type=int, default=300)
    p.add_argument("--proxy-overrides", type=str, default=None, help="JSON of GPTNeoXConfig fields")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--reference-rows", type=int, default=32)
    p.add_argument("--hidden-dims", type=str, default="64,128,256")
    p.add_argument("--ranking-weights", type=str, default="0,1")
    p.add_argument("--head-epochs", type=int, default=200)
    p.add_argument("--head-patience", type=int, default=30)
    p.add_argument("--no-finetune", action="store_true")
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--finetune-patience", type=int, default=2)
    p.add_argument("--finetune-batch-size", type=int, default=16)
    p.add_argument("--encoder-lr", type=float, default=2e-5)
    p.add_argument("--fast-per-exact", type=float, default=None, help="default: the measured cost ratio")
    p.add_argument("--fast-method", type=str, default=None, help="fast_probes estimator (default: the pipeline's)")
    p.add_argument("--max-fast-docs", type=int, default=4000)
    p.add_argument("--scoring-docs", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-arrays", type=str, default=None, help="write per-document labels/embeddings (.npz)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    result = run_influence_study(
        a.n_exact, seed=a.seed, n_repeats=a.repeats, heldout_fraction=a.heldout_fraction, proxy_docs=a.proxy_docs,
        proxy_steps=a.proxy_steps, proxy_overrides=_parse_overrides(a.proxy_overrides), vocab_size=a.vocab_size,
        seq_len=a.seq_len, reference_rows=a.reference_rows,
        hidden_dims=[int(x) for x in a.hidden_dims.split(",")],
        ranking_weights=[float(x) for x in a.ranking_weights.split(",")],
        head_epochs=a.head_epochs, head_patience=a.head_patience, finetune=not a.no_finetune,
        finetune_epochs=a.finetune_epochs, finetune_patience=a.finetune_patience,
        finetune_batch_size=a.finetune_batch_size, encoder_lr=a.encoder_lr, fast_per_exact=a.fast_per_exact, fast_method=a.fast_method,
        max_fast_docs=a.max_fast_docs, scoring_docs=a.scoring_docs, threads=a.threads, verbose=not a.quiet,
        save_arrays=a.save_arrays,
    )
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
