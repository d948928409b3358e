"""Pretraining loop and checkpoints of the proxy LM.

Training runs in stages (MATES: select data, train a stage, probe the new checkpoint, select again). The
learning-rate schedule spans all stages, so a stage passes `step_offset` to continue where the last one
stopped, and a checkpoint keeps the optimizer state because the probe oracle needs Adam's moments.
Checkpoints are data only: weights and optimizer tensors in safetensors, everything else in JSON; nothing
is ever unpickled, so a checkpoint from elsewhere cannot run code when it is loaded.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model
from tqdm.auto import tqdm
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from models.flops import device_peak_flops, flops_per_token, mfu
from models.proxy_lm import lm_loss


@dataclass
class TrainConfig:
    """Hyperparameters of one training stage (defaults of the whole run live in core.config)."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    device: str = "cpu"
    bf16: bool = True
    compile: bool = False
    seed: int = 0
    total_steps: int | None = None  # length of the whole schedule over all stages; default `steps`


@dataclass
class TrainResult:
    """What one call of `train` did: per-step losses, throughput and model-FLOPs utilisation.

    `seconds` is the whole call's wall time; `tokens_per_s` is the steady-state throughput, which leaves
    out the first (compile) step when `cfg.compile` is on. `model_flops_per_s` = tokens_per_s *
    flops_per_token (see models.flops); `mfu` is per device and None where no peak is known (CPU).
    """

    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    steps: int = 0
    flops_per_token: float = 0.0
    model_flops_per_s: float = 0.0
    mfu: float | None = None


def resolve_device(name: str) -> str:
    """`auto` means CUDA when there is a GPU, else CPU; any other name is passed through."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `cfg.lr`, then cosine decay to 10% of it at `total_steps` (held there after)."""
    total = cfg.total_steps or cfg.steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: matrices (decayed) first, then biases and LayerNorm weights (not decayed).

    The oracles rebuild exactly this layout to load a saved optimizer state, so the order must not change.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the fused kernel only on CUDA (it is not faster, or not there, on CPU)."""
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
        fused=True if on_cuda else None,
    )


def _batch_indices(n_rows: int, n_needed: int, generator: torch.Generator) -> torch.Tensor:
    """Row indices for all steps: shuffled epochs over the rows, cycling when the stage needs more rows."""
    epochs = [torch.randperm(n_rows, generator=generator) for _ in range(math.ceil(n_needed / n_rows))]
    return torch.cat(epochs)[:n_needed]


def batch_order(n_rows: int, cfg: TrainConfig, step_offset: int = 0) -> torch.Tensor:
    """Row indices [steps, batch_size] of a stage, from a generator seeded by (seed, step_offset).

    A stage is reproducible and two stages do not replay the same order; data-parallel ranks call this
    with the same arguments, so they all see the same global batches and each takes its own slice.
    """
    if n_rows < 1:
        raise ValueError("sequences must be a non-empty [n, seq_len] tensor")
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step_offset)
    return _batch_indices(n_rows, cfg.steps * cfg.batch_size, generator).view(cfg.steps, cfg.batch_size)


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA kernels: without it the clock measures kernel launches, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compute_dtype(model: torch.nn.Module, use_bf16: bool, device: torch.device) -> str:
    """The matmul precision the peak must be taken for: float32 matmuls run as TF32 on CUDA if enabled."""
    if use_bf16:
        return "bf16"
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32 and device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return str(dtype)


def run_steps(
    model: torch.nn.Module,
    forward_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sequences: torch.Tensor,
    order: torch.Tensor,
    cfg: TrainConfig,
    step_offset: int = 0,
    progress: bool = True,
    world_size: int = 1,
) -> TrainResult:
    """The training loop shared by `train` and models.distributed.train_ddp.

    `forward_model` computes the loss (the model itself, or its compiled / DDP wrapper); `model` owns the
    parameters that are clipped. `order` [steps, rows] holds this process's rows of each step, so with
    `world_size` data-parallel ranks the tokens (and tokens/s) reported are rows * world_size per step.
    Losses are this process's per-step means. With `cfg.compile`, the first step (tracing + compilation,
    tens of seconds on a GPU) is left out of the throughput when there is more than one step.
    """
    device = torch.device(cfg.device)
    use_bf16 = cfg.bf16 and device.type == "cuda"  # bf16 autocast only on CUDA: on CPU it is slower
    losses: list[torch.Tensor] = []
    _sync(device)
    start = measure_from = time.perf_counter()
    warmup = 1 if cfg.compile and cfg.steps > 1 else 0
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=None if progress else True)
    for i in bar:
        lr = lr_at(step_offset + i, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sequences[order[i]].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = lm_loss(forward_model, batch)
        loss.backward()
        if cfg.grad_clip > 0:  # under DDP the grads are already all-reduced here: this clips the global grad
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if i + 1 == warmup:
            _sync(device)
            measure_from = time.perf_counter()
        if progress and (i % 10 == 0 or i == cfg.steps - 1):  # .item() syncs the GPU: not every step
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
    loss_values = torch.stack(losses).float().cpu().tolist() if losses else []
    _sync(device)
    end = time.perf_counter()
    tokens_per_step = order.shape[1] * sequences.shape[1] * world_size
    tokens_per_s = (cfg.steps - warmup) * tokens_per_step / max(end - measure_from, 1e-9)
    fpt = flops_per_token(model, sequences.shape[1])
    peak = device_peak_flops(cfg.device, _compute_dtype(model, use_bf16, device))
    return TrainResult(
        loss_values, cfg.steps * tokens_per_step, end - start, tokens_per_s, cfg.steps,
        fpt, fpt * tokens_per_s, mfu(tokens_per_s, fpt, peak * world_size if peak else None),
    )


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sequences: torch.Tensor,
    cfg: TrainConfig,
    step_offset: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train `model` for `cfg.steps` steps on rows of `sequences` [n, seq_len] (packed, see pack_sequences).

    Batches come from `batch_order` (seeded by (seed, step_offset)). bf16 autocast is used only on CUDA;
    the optimizer from `make_optimizer` is the fused AdamW there.
    """
    if sequences.ndim != 2 or len(sequences) == 0:
        raise ValueError("sequences must be a non-empty [n, seq_len] tensor")
    model.to(torch.device(cfg.device)).train()
    forward_model = torch.compile(model) if cfg.compile else model
    order = batch_order(len(sequences), cfg, step_offset)
    return run_steps(model, forward_model, optimizer, sequences, order, cfg, step_offset, progress)


OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"


def save_optimizer_state(state: dict[str, Any], directory: Path) -> None:
    """An optimizer `state_dict` as optimizer.safetensors (each parameter's state tensors, named
    `state.<index>.<name>`) plus optimizer.json (param_groups, and any non-tensor state values)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            key = f"state.{index}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().contiguous()
            else:
                scalars[key] = value
    save_file(tensors, str(directory / OPTIMIZER_TENSORS))
    meta = {"params": list(state["state"]), "scalars": scalars, "param_groups": state["param_groups"]}
    (directory / OPTIMIZER_JSON).write_text(json.dumps(meta, indent=1))


def load_optimizer_state(directory: Path, device: str = "cpu") -> dict[str, Any]:
    """The `state_dict` `save_optimizer_state` wrote: JSON lists in param_groups (betas) become tuples again."""
    if not (directory / OPTIMIZER_JSON).exists():
        old = " in the old pickle format (optimizer.pt), which is no longer read" if (
            directory / "optimizer.pt").exists() else ""
        raise FileNotFoundError(f"checkpoint {directory} has no {OPTIMIZER_JSON}{old}: re-run its pretrain "
                                "stage (reuse_stages = false)")
    meta = json.loads((directory / OPTIMIZER_JSON).read_text())
    state: dict[int, dict[str, Any]] = {int(index): {} for index in meta["params"]}
    for key, value in [*load_file(str(directory / OPTIMIZER_TENSORS), device=device).items(),
                       *meta["scalars"].items()]:
        _, index, name = key.split(".", 2)
        state[int(index)][name] = value
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
              for group in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: str | Path, model: GPTNeoXForCausalLM, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> Path:
    """Write model.safetensors, config.json, optimizer.safetensors/.json and meta.json into `directory`.

    meta.json is written last: a folder without it is an interrupted save, not a checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)
    (directory / "optimizer.pt").unlink(missing_ok=True)  # left by an older version: never read
    save_model(model, str(directory / "model.safetensors"))  # handles shared tensors if a config ties them
    model.config.to_json_file(str(directory / "config.json"))
    save_optimizer_state(optimizer.state_dict(), directory)
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return directory


def load_checkpoint(
    directory: str | Path, device: str = "cpu"
) -> tuple[GPTNeoXForCausalLM, dict[str, Any], dict[str, Any]]:
    """Rebuild (model, optimizer state dict, meta) from `save_checkpoint`'s folder.

    Everything is read from safetensors and JSON: a checkpoint is data, never code to unpickle.
    Pass the state to `make_optimizer(...).load_state_dict` to resume, or to the oracles to probe.
    """
    directory = Path(directory)
    if not (directory / "meta.json").exists():
        raise FileNotFoundError(f"no complete checkpoint in {directory} (meta.json missing)")
    config = GPTNeoXConfig.from_json_file(str(directory / "config.json"))
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG as is
        model = GPTNeoXForCausalLM(config)
    weights = load_file(str(directory / "model.safetensors"), device=device)
    model.to(device=device, dtype=next(iter(weights.values())).dtype)  # keep a float64/bf16 model's dtype
    model.load_state_dict(weights, strict=True)
    optimizer_state = load_optimizer_state(directory, device)
    meta = json.loads((directory / "meta.json").read_text())
    return model, optimizer_state, meta
