"""Proxy LM stage: a BPE tokenizer trained on the pool, and a GPTNeoX-style LM pretrained in stages.

Stage 0 trains from scratch on a seeded uniform sample of the pool (`select.token_budget` tokens); stage s
continues from stage s-1's checkpoint (weights and optimizer state) on the mixture selected at s-1, so the
probes that follow see the model the selected data produced (model-aware selection, as in MATES).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from prefect import task

from core import db
from core.config import Settings
from models.oracles import reference_loss
from models.proxy_lm import build_proxy_lm, count_params, pack_sequences, use_attention
from models.tokenizer import (
    EOS_TOKEN,
    count_tokens,
    encode_documents,
    load_tokenizer,
    save_tokenizer,
    train_bpe_tokenizer,
)
from models.trainer import (
    TrainConfig,
    load_checkpoint,
    make_optimizer,
    resolve_device,
    save_checkpoint,
    train,
)
from runtime.policies import STAGE_CACHE
from tasks.embed import iter_document_pages


@dataclass
class TokenizerStats:
    path: str
    vocab_size: int
    corpus_tokens: int

    def as_metrics(self) -> dict[str, float]:
        return {"tokenizer_vocab_size": self.vocab_size, "corpus_tokens": self.corpus_tokens}


@dataclass
class StageCheckpoint:
    stage: int
    path: str
    n_params: int
    train_tokens: int
    steps: int
    final_train_loss: float
    reference_loss: float
    tokens_per_s: float
    losses: list[float]
    flops_per_token: float = 0.0
    model_flops_per_s: float = 0.0
    mfu: float | None = None

    def as_metrics(self) -> dict[str, float]:
        metrics = {"train_tokens": self.train_tokens, "final_train_loss": self.final_train_loss,
                   "reference_loss": self.reference_loss, "train_tokens_per_s": self.tokens_per_s,
                   "train_model_flops_per_s": self.model_flops_per_s}
        if self.mfu is not None:
            metrics["train_mfu"] = self.mfu
        return metrics


def tokenizer_path(settings: Settings, run_id: str) -> Path:
    return settings.stage_dir(run_id) / "tokenizer.json"


def train_tokenizer(settings: Settings, run_id: str) -> TokenizerStats:
    """Train the proxy BPE on a sample of the pool and record every document's exact token count."""
    cfg = settings.proxy
    path = tokenizer_path(settings, run_id)
    with db.connect(settings.database) as con:
        sample = [r[0] for r in db.rows(con, "tokenizer_sample",
                                        {"run_id": run_id, "seed": str(settings.seed), "limit": cfg.tokenizer_max_docs})]
        tokenizer = train_bpe_tokenizer(sample, cfg.vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tokenizer(tokenizer, path)
        total = 0
        with db.transaction(con):
            for doc_ids, texts in iter_document_pages(con, run_id, page_size=2_000):
                counts = count_tokens(tokenizer, texts)
                total += sum(counts)
                db.insert_arrow(con, "update_token_counts", pa.table(
                    {"run_id": [run_id] * len(doc_ids), "doc_id": doc_ids, "n_tokens": pa.array(counts, pa.int32())}))
    return TokenizerStats(str(path), tokenizer.get_vocab_size(), total)


def reference_tensor(settings: Settings, run_id: str, tokenizer) -> torch.Tensor:
    """The reference set packed into `probe.reference_sequences` rows of `proxy.seq_len` tokens."""
    with db.connect(settings.database) as con:
        texts = [r[1] for r in db.rows(con, "reference_texts", {"run_id": run_id})]
    eos = tokenizer.token_to_id(EOS_TOKEN)
    packed, _ = pack_sequences(encode_documents(tokenizer, texts), settings.proxy.seq_len, eos)
    if len(packed) == 0:
        raise ValueError("the reference set is shorter than one sequence of `proxy.seq_len` tokens")
    return packed[: settings.probe.reference_sequences]


def stage_training_texts(settings: Settings, run_id: str, stage: int) -> list[str]:
    with db.connect(settings.database) as con:
        if stage == 0:
            rows = db.rows(con, "warmup_sample", {"run_id": run_id, "seed": str(settings.seed),
                                                   "budget": settings.select.token_budget})
        else:
            rows = db.rows(con, "mixture_texts", {"run_id": run_id, "stage": stage - 1})
    return [r[1] for r in rows]


def train_config(settings: Settings) -> TrainConfig:
    p = settings.proxy
    return TrainConfig(
        steps=p.steps_per_stage, batch_size=p.batch_size, lr=p.lr, warmup_steps=p.warmup_steps,
        weight_decay=p.weight_decay, beta1=p.beta1, beta2=p.beta2, grad_clip=p.grad_clip,
        device=resolve_device(p.device), bf16=p.bf16, compile=p.compile, seed=settings.seed,
        total_steps=p.steps_per_stage * settings.stages,
    )


def pretrain_stage(settings: Settings, run_id: str, stage: int, progress: bool = True) -> StageCheckpoint:
    cfg = train_config(settings)
    tokenizer = load_tokenizer(tokenizer_path(settings, run_id))
    eos = tokenizer.token_to_id(EOS_TOKEN)
    texts = stage_training_texts(settings, run_id, stage)
    sequences, _ = pack_sequences(encode_documents(tokenizer, texts), settings.proxy.seq_len, eos)
    if len(sequences) == 0:
        raise ValueError(f"stage {stage} has too little training text for one sequence of {settings.proxy.seq_len} tokens")
    if stage == 0:
        model = build_proxy_lm(settings.proxy.preset, tokenizer.get_vocab_size(), settings.proxy.seq_len, settings.seed)
        model.to(cfg.device)
        optimizer = make_optimizer(model, cfg)
    else:
        model, optimizer_state, _ = load_checkpoint(settings.stage_dir(run_id, stage - 1) / "checkpoint", cfg.device)
        optimizer = make_optimizer(model, cfg)
        optimizer.load_state_dict(optimizer_state)
    use_attention(model, settings.proxy.train_attention)
    result = train(model, optimizer, sequences, cfg, step_offset=stage * cfg.steps, progress=progress)
    if settings.proxy.peak_flops:
        result.mfu = result.model_flops_per_s / settings.proxy.peak_flops
    use_attention(model, "eager")
    ref_loss = reference_loss(model, reference_tensor(settings, run_id, tokenizer).to(cfg.device))
    path = settings.stage_dir(run_id, stage) / "checkpoint"
    save_checkpoint(path, model, optimizer, {"stage": stage, "run_id": run_id, "train_tokens": result.tokens})
    info = StageCheckpoint(stage, str(path), count_params(model), int(result.tokens), result.steps,
                           float(result.losses[-1]), float(ref_loss), float(result.tokens_per_s),
                           [float(x) for x in result.losses], float(result.flops_per_token),
                           float(result.model_flops_per_s), result.mfu)
    with db.connect(settings.database) as con:
        db.run(con, "insert_checkpoint", {
            "run_id": run_id, "stage": stage, "path": info.path, "n_params": info.n_params,
            "train_tokens": info.train_tokens, "steps": info.steps, "final_train_loss": info.final_train_loss,
            "reference_loss": info.reference_loss, "tokens_per_s": info.tokens_per_s,
        })
    return info


tokenizer_task = task(train_tokenizer, name="tokenizer", cache_policy=STAGE_CACHE, persist_result=True)
pretrain_task = task(pretrain_stage, name="pretrain", task_run_name="pretrain[stage={stage}]", cache_policy=STAGE_CACHE, persist_result=True)
