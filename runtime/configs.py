"""The one place where the run's settings become the plain configs of `models/` (which know no settings).

Stages and benchmarks both build their trainer, probe, influence-model and bandit configs here, so a
setting means the same thing wherever it is read, and every seed comes from `core.seeds`.
"""

from __future__ import annotations

from core.config import Settings, is_static_embed_name
from core.seeds import int_seed
from models.influence import InfluenceConfig
from models.oracles import ProbeConfig
from models.trainer import TrainConfig, resolve_device


def train_config(settings: Settings) -> TrainConfig:
    """The proxy LM's training hyperparameters for one stage; the schedule spans all `stages`."""
    p = settings.proxy
    return TrainConfig(
        steps=p.steps_per_stage, batch_size=p.batch_size, lr=p.lr, warmup_steps=p.warmup_steps,
        weight_decay=p.weight_decay, beta1=p.beta1, beta2=p.beta2, grad_clip=p.grad_clip,
        device=resolve_device(p.device), bf16=p.bf16, compile=p.compile, seed=int_seed(settings.seed, "proxy"),
        total_steps=p.steps_per_stage * settings.stages,
    )


def probe_config(settings: Settings) -> ProbeConfig:
    """The probe's optimizer step: the trainer's AdamW, at `probe.probe_lr` (default the trainer's peak lr)."""
    p = settings.proxy
    return ProbeConfig(lr=settings.probe.probe_lr or p.lr, weight_decay=p.weight_decay, beta1=p.beta1,
                       beta2=p.beta2, grad_clip=p.grad_clip)


def finetune_by_default(choice: bool | None, device: str, embed_model: str = "") -> bool:
    """Fine-tuning beat the frozen head in benchmarks/influence_study.py (0.31 vs 0.19 held-out Spearman, one
    split); it costs minutes per stage on a CPU, so the default fine-tunes on a GPU only, and never a static
    embedding model (it has no encoder to tune; an explicit request is refused by the settings)."""
    if choice is not None:
        return choice
    return resolve_device(device).startswith("cuda") and not is_static_embed_name(embed_model)


def influence_config(settings: Settings, stage: int) -> InfluenceConfig:
    d = settings.distill
    return InfluenceConfig(hidden_dim=d.hidden_dim, epochs=d.epochs, lr=d.lr, weight_decay=d.weight_decay,
                           ranking_weight=d.ranking_weight, patience=d.patience,
                           seed=int_seed(settings.seed, "distill", stage),
                           finetune_encoder=finetune_by_default(d.finetune_encoder, settings.embed.device,
                                                                settings.embed.model),
                           max_seq_length=settings.embed.max_seq_length,
                           device=resolve_device(settings.embed.device))
