"""The stage's oracle, built from the run's settings: by the probe stage, which spends it, and rebuilt by
the rerank stage, which measures the head of the selection ranking with the very same oracle."""

from __future__ import annotations

from pathlib import Path

from core.artifacts import Checkpoint, Probes, Tokenized
from core.config import Settings
from core.seeds import int_seed
from models.conditional_loss import FinetuneConfig, load_conditional
from models.proxy_lm import load_token_rows
from models.stage_oracles import ConditionalOracle, OneStepOracle
from models.trainer import load_checkpoint, resolve_device
from runtime.configs import probe_config


def make_oracle(settings: Settings, model, optimizer_state, tokenized: Tokenized,
                stage: int) -> ConditionalOracle | OneStepOracle:
    """`probe.oracle` from a checkpoint: the conditional oracle fine-tunes on the reference's fit half here (and on
    the measure half too with `probe.conditional_folds = 2`)."""
    cfg, proxy = settings.probe, settings.proxy
    measure_rows = load_token_rows(tokenized.reference_path, cfg.reference_sequences, "measure")
    if cfg.oracle == "one_step":
        return OneStepOracle(model, optimizer_state, measure_rows, probe_config(settings), cfg.fast_estimator,
                             cfg.exact_fraction)
    finetune = FinetuneConfig(max_steps=cfg.finetune_steps, eval_every=cfg.finetune_eval_every,
                              batch_size=proxy.batch_size, lr=cfg.finetune_lr or proxy.lr,
                              weight_decay=proxy.weight_decay, beta1=proxy.beta1, beta2=proxy.beta2,
                              grad_clip=proxy.grad_clip, seed=int_seed(settings.seed, "reference_split", stage))
    return ConditionalOracle(model, optimizer_state, load_token_rows(tokenized.reference_path, part="fit"),
                             load_token_rows(tokenized.reference_path, part="measure"), finetune, cfg.shrink_tokens,
                             folds=cfg.conditional_folds)


def spent_oracle(settings: Settings, checkpoint: Checkpoint, tokenized: Tokenized,
                 probes: Probes) -> ConditionalOracle | OneStepOracle:
    """The oracle the probe stage spent: its saved conditional model when there is one (nothing is
    fine-tuned twice), else built again from the checkpoint (the one-step oracle has nothing to save)."""
    model, optimizer_state, _ = load_checkpoint(checkpoint.path, resolve_device(settings.proxy.device))
    saved = probes.conditional_path
    if probes.oracle == "conditional" and saved and (Path(saved) / "trace.json").exists():
        conditionals, traces = load_conditional(saved, model)
        return ConditionalOracle.restored(model, conditionals, traces, settings.probe.shrink_tokens)
    return make_oracle(settings, model, optimizer_state, tokenized, checkpoint.stage)
