"""Proxy LM stage: a BPE tokenizer trained on the pool, and a GPTNeoX-style LM pretrained in stages.

Stage 0 trains from scratch on a seeded uniform sample of the pool (`select.token_budget` tokens); stage s
continues from stage s-1's checkpoint (weights and optimizer state) on the mixture selected at s-1, so the
probes that follow see the model the selected data produced (model-aware selection, as in MATES).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import torch
from prefect import task
from tokenizers import Tokenizer

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


@dataclass
class TokenizerStats:
    path: str
    vocab_size: int
    corpus_tokens: int
    reused: bool = False
    """The tokenizer came from `tokenizers` (an earlier run trained on the same sample) instead of training."""
    counts_reused: int = 0
    """Documents whose token count was in `token_counts` already."""
    counts_new: int = 0

    def as_metrics(self) -> dict[str, float]:
        return {"tokenizer_vocab_size": self.vocab_size, "corpus_tokens": self.corpus_tokens,
                "tokenizer_reused": int(self.reused), "token_counts_reused": self.counts_reused,
                "token_counts_new": self.counts_new}


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


TOKENIZER_RECIPE = "byte-level BPE, all 256 bytes, EOS id 0"
"""Part of a tokenizer's cache key: change it whenever `train_bpe_tokenizer` changes what it trains."""


def tokenizer_sample_key(sample: list[str], vocab_size: int) -> str:
    """What a trained tokenizer is a function of: the sample's exact texts in order, the vocabulary size,
    the recipe and the tokenizers version (BPE training is deterministic for a given input)."""
    digest = hashlib.sha256(json.dumps([TOKENIZER_RECIPE, vocab_size, metadata.version("tokenizers")]).encode())
    for text in sample:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()


def cached_tokenizer(con, sample: list[str], vocab_size: int, path: Path) -> tuple[Tokenizer, str, bool]:
    """(tokenizer, sha256 of its file, reused): the tokenizer an earlier run trained on this very sample,
    else a new one, stored by sample key. Either way its file is written to `path`."""
    key = tokenizer_sample_key(sample, vocab_size)
    stored = db.rows(con, "get_tokenizer", {"sample_key": key})
    if stored:
        tokenizer_hash, text = stored[0]
    else:
        save_tokenizer(train_bpe_tokenizer(sample, vocab_size), path)
        text = path.read_text(encoding="utf-8")
        tokenizer_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        db.run(con, "insert_tokenizer", {"sample_key": key, "tokenizer_hash": tokenizer_hash, "tokenizer_json": text})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return Tokenizer.from_str(text), tokenizer_hash, bool(stored)


def count_new_tokens(con, run_id: str, tokenizer: Tokenizer, tokenizer_hash: str) -> int:
    """Count the tokens of the run's documents whose exact text has no count under this tokenizer yet, add
    them to `token_counts`, and return how many were counted.

    One streamed query (a keyset page per call would rehash every remaining text per page); the small
    (text_hash, n_tokens) results are inserted once the stream is read, as DuckDB cannot write on a
    connection while it streams.
    """
    hashes, counts = [], []
    for batch in db.arrow_reader(con, "documents_to_count", {"run_id": run_id, "tokenizer_hash": tokenizer_hash},
                                 batch_rows=2_000):
        hashes.append(batch.column("text_hash"))
        counts.append(pa.array(count_tokens(tokenizer, batch.column("text").to_pylist()), pa.int32()))
    new = sum(len(c) for c in counts)
    if new:
        db.insert_arrow(con, "insert_token_counts", pa.table({
            "text_hash": pa.concat_arrays(hashes), "tokenizer_hash": pa.array([tokenizer_hash] * new),
            "n_tokens": pa.concat_arrays(counts)}))
    return new


def train_tokenizer(settings: Settings, run_id: str) -> TokenizerStats:
    """Train the proxy BPE on a sample of the pool and record every document's exact token count.

    Both are content-addressed: a run whose tokenizer sample some earlier run trained on gets that run's
    tokenizer (byte-identical file), and token counts are looked up by (exact text, tokenizer file hash),
    so only documents no earlier run counted under this tokenizer are tokenized.
    """
    cfg = settings.proxy
    path = tokenizer_path(settings, run_id)
    with db.connect(settings.database) as con:
        sample = [r[0] for r in db.rows(con, "tokenizer_sample",
                                        {"run_id": run_id, "seed": str(settings.seed), "limit": cfg.tokenizer_max_docs})]
        with db.transaction(con):
            tokenizer, tokenizer_hash, reused = cached_tokenizer(con, sample, cfg.vocab_size, path)
            new = count_new_tokens(con, run_id, tokenizer, tokenizer_hash)
            db.run(con, "update_token_counts_from_cache", {"run_id": run_id, "tokenizer_hash": tokenizer_hash})
        documents, total = db.rows(con, "run_token_total", {"run_id": run_id})[0]
    return TokenizerStats(str(path), tokenizer.get_vocab_size(), int(total or 0), reused, documents - new, new)


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
