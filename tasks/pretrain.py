"""Pretrain stage: a GPTNeoX-style proxy LM trained in stages on the proxy tokenizer's tokens.

Stage 0 trains from scratch on a seeded uniform sample of the pool (`select.token_budget` tokens); stage s
continues from stage s-1's checkpoint (weights and optimizer state) on the mixture selected at s-1, so the
probes that follow see the model the selected data produced (model-aware selection, as in MATES).
"""

from __future__ import annotations

from prefect import task

from core import db, store
from core.artifacts import Checkpoint, Mixture, Tokenized
from core.config import Settings
from core.seeds import int_seed
from models.oracles import reference_loss
from models.proxy_lm import build_proxy_lm, count_params, load_token_rows, pack_sequences, use_attention
from models.tokenizer import EOS_TOKEN, encode_documents, load_tokenizer
from models.trainer import load_checkpoint, make_optimizer, save_checkpoint, train
from runtime.configs import train_config
from runtime.policies import STAGE_CACHE


def stage_training_texts(settings: Settings, run_id: str, stage: int, mixture: Mixture | None) -> list[str]:
    """Stage 0: the seeded warm-up sample of the pool; stage s: the mixture stage s-1 selected."""
    with db.connect(settings.database) as con:
        if mixture is None:
            return store.warmup_texts(con, run_id, settings.seed, settings.select.token_budget)
        return store.mixture_texts(con, run_id, mixture.stage)


def pretrain_stage(settings: Settings, tokenized: Tokenized, stage: int, previous: Checkpoint | None = None,
                   mixture: Mixture | None = None, progress: bool = True) -> Checkpoint:
    """Train stage `stage`: from scratch (stage 0), else from `previous` on `mixture` (stage s-1's)."""
    if (stage == 0) != (previous is None) or (previous is None) != (mixture is None):
        raise ValueError(f"stage {stage}: stage 0 starts from scratch, a later stage needs the previous "
                         "stage's checkpoint and mixture")
    if previous is not None and (previous.stage, mixture.stage) != (stage - 1, stage - 1):
        raise ValueError(f"stage {stage} must continue from stage {stage - 1} (got checkpoint {previous.stage}, "
                         f"mixture {mixture.stage})")
    cfg, run_id = train_config(settings), tokenized.run_id
    tokenizer = load_tokenizer(tokenized.tokenizer_path)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    texts = stage_training_texts(settings, run_id, stage, mixture)
    sequences, _ = pack_sequences(encode_documents(tokenizer, texts), settings.proxy.seq_len, eos)
    if len(sequences) == 0:
        raise ValueError(f"stage {stage} has too little training text for one sequence of {settings.proxy.seq_len} tokens")
    if previous is None:
        model = build_proxy_lm(settings.proxy.preset, tokenizer.get_vocab_size(), settings.proxy.seq_len,
                               int_seed(settings.seed, "proxy"))
        model.to(cfg.device)
        optimizer = make_optimizer(model, cfg)
    else:
        model, optimizer_state, _ = load_checkpoint(previous.path, cfg.device)
        optimizer = make_optimizer(model, cfg)
        optimizer.load_state_dict(optimizer_state)
    use_attention(model, settings.proxy.train_attention)
    result = train(model, optimizer, sequences, cfg, step_offset=stage * cfg.steps, progress=progress)
    if settings.proxy.peak_flops:
        result.mfu = result.model_flops_per_s / settings.proxy.peak_flops
    use_attention(model, "eager")
    reference = load_token_rows(tokenized.reference_path, settings.probe.reference_sequences)
    ref_loss = reference_loss(model, reference.to(cfg.device))
    path = settings.stage_dir(run_id, stage) / "checkpoint"
    save_checkpoint(path, model, optimizer, {"stage": stage, "run_id": run_id, "train_tokens": result.tokens})
    info = Checkpoint(run_id, stage, str(path), count_params(model), int(result.tokens), result.steps,
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


pretrain_task = task(pretrain_stage, name="pretrain", task_run_name="pretrain[stage={stage}]", cache_policy=STAGE_CACHE, persist_result=True)
