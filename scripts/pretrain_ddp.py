#!/usr/bin/env python3
"""Pretrain a proxy LM data-parallel over N processes (DDP), or in one process for comparison.

    torchrun --standalone --nproc_per_node=8 scripts/pretrain_ddp.py --preset 410m --vocab-size 8192 \\
        --seq-len 1024 --steps 2000 --global-batch 256 --data rows.safetensors --out runs/ddp
    python scripts/pretrain_ddp.py ...same flags...            # one process, no torchrun

Data (every rank loads all of it and keeps its slice of each global batch, see models.distributed):
* --data rows.safetensors|rows.pt : packed int64 rows [n, seq_len] (tensor "input_ids" in safetensors);
* --texts corpus.jsonl[.gz] --tokenizer tokenizer.json : documents ("text" field), encoded and packed here;
* neither: --synthetic-rows random rows, for throughput measurements only.
Rank 0 prints and writes <out>/checkpoint (trainer.save_checkpoint) and <out>/result.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repo importable

from models.distributed import cleanup_distributed, init_distributed, train_ddp
from models.proxy_lm import build_proxy_lm, count_params, pack_sequences
from models.trainer import TrainConfig, make_optimizer, save_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--model-overrides", default="{}", help="JSON of GPTNeoXConfig fields (smaller test models)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--global-batch", type=int, default=8, help="rows per step over ALL ranks")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 on CUDA too")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path)
    p.add_argument("--texts", type=Path)
    p.add_argument("--tokenizer", type=Path)
    p.add_argument("--synthetic-rows", type=int, default=1024)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backend", choices=["nccl", "gloo"], default=None, help="default: nccl on CUDA, else gloo")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: leave as is)")
    p.add_argument("--no-checkpoint", dest="checkpoint", action="store_false")
    p.add_argument("--progress", action="store_true")
    return p.parse_args(argv)


def load_rows(args: argparse.Namespace) -> torch.Tensor:
    """Packed training rows [n, seq_len] from --data, --texts/--tokenizer, or random tokens."""
    if args.data is not None:
        if args.data.suffix == ".safetensors":
            from safetensors.torch import load_file

            rows = load_file(str(args.data))["input_ids"]
        else:
            rows = torch.load(args.data, weights_only=True)
        if rows.ndim != 2 or rows.shape[1] != args.seq_len:
            raise SystemExit(f"--data rows have shape {tuple(rows.shape)}, expected [n, {args.seq_len}]")
        return rows.long()
    if args.texts is not None:
        from models.tokenizer import EOS_TOKEN, encode_documents, load_tokenizer

        if args.tokenizer is None:
            raise SystemExit("--texts needs --tokenizer")
        opener = gzip.open if args.texts.suffix == ".gz" else open
        with opener(args.texts, "rt", encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in fh if line.strip()]
        tok = load_tokenizer(args.tokenizer)
        rows, _ = pack_sequences(encode_documents(tok, texts), args.seq_len, tok.token_to_id(EOS_TOKEN))
        return rows
    generator = torch.Generator().manual_seed(args.seed)
    return torch.randint(0, args.vocab_size, (args.synthetic_rows, args.seq_len), generator=generator)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.backend)
    try:
        rows = load_rows(args)
        cfg = TrainConfig(
            steps=args.steps, batch_size=args.global_batch, lr=args.lr, warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay, beta1=args.beta1, beta2=args.beta2, grad_clip=args.grad_clip,
            device=info.device, bf16=args.bf16, compile=args.compile, seed=args.seed,
        )
        model = build_proxy_lm(args.preset, args.vocab_size, args.seq_len, args.seed,
                               json.loads(args.model_overrides))
        model.to(info.device)  # before the optimizer, so make_optimizer sees CUDA and picks fused AdamW
        optimizer = make_optimizer(model, cfg)
        result = train_ddp(model, optimizer, rows, cfg, info, progress=args.progress)
        if info.is_main:
            summary = dataclasses.asdict(result) | {
                "world_size": info.world_size, "device": info.device, "n_params": count_params(model),
                "rows": len(rows), "threads": torch.get_num_threads(),
            }
            args.out.mkdir(parents=True, exist_ok=True)
            if args.checkpoint:
                save_checkpoint(args.out / "checkpoint", model, optimizer,
                                {"steps": args.steps, "world_size": info.world_size, "tokens": result.tokens})
            (args.out / "result.json").write_text(json.dumps(summary, indent=2))
            mfu = "n/a" if result.mfu is None else f"{result.mfu:.1%}"
            print(f"world={info.world_size} device={info.device} final_loss={result.losses[-1]:.4f} "
                  f"tokens/s={result.tokens_per_s:,.0f} model_TFLOP/s={result.model_flops_per_s / 1e12:.3f} "
                  f"mfu={mfu}", flush=True)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
