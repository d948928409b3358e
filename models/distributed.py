"""Data-parallel (DDP) pretraining of the proxy LM, launched by torchrun.

Bigger proxies (125m, 410m) need more tokens per stage than one GPU pushes in reasonable time, so a stage
can run on N GPUs. The design goal is that N ranks reproduce single-process training *exactly* (up to
float rounding): every rank draws the same global batch order from the same seeded generator and keeps
its contiguous 1/N slice; DDP averages the gradients of the per-rank mean losses, which equals the
gradient of the mean over the global batch because every rank holds the same number of rows. So a stage's
data, schedule and checkpoint do not depend on how many GPUs ran it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from models.trainer import TrainConfig, TrainResult, batch_order, run_steps


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, number of ranks, rank on this node, and its torch device."""

    rank: int
    world_size: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints and writes files, so N ranks do not race on one checkpoint."""
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, ...).

    `backend` None picks nccl when CUDA is available (one GPU per local rank) and gloo on CPU; the device
    is CUDA exactly when the backend is nccl. Run without torchrun (no WORLD_SIZE), this is a single
    process with no process group, so the same script serves as the 1-process baseline.
    """
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("backend nccl needs CUDA; use gloo on CPU")
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if backend == "nccl" else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)  # before init: NCCL binds each rank to its current device
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    """Leave the process group (a no-op in a single process), so torchrun sees a clean exit."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_batch(global_batch_indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous slice of the last dimension of `global_batch_indices` ([B] or [steps, B]).

    Equal slices are required: DDP averages per-rank gradients with equal weights, which is the global
    mean only if every rank's loss averages over the same number of rows.
    """
    size = global_batch_indices.shape[-1]
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    if size % world_size:
        raise ValueError(f"global batch {size} is not divisible by world size {world_size}")
    per_rank = size // world_size
    return global_batch_indices[..., rank * per_rank : (rank + 1) * per_rank]


def train_ddp(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sequences: torch.Tensor,
    cfg: TrainConfig,
    dist_info: DistInfo,
    step_offset: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Data-parallel `trainer.train`: `cfg.batch_size` is the GLOBAL batch, split evenly over the ranks.

    `cfg.device` is ignored in favour of `dist_info.device`. Every rank must hold the same `sequences`
    and a model built with the same seed (DDP also broadcasts rank 0's weights at wrap time). The returned
    losses are the global-batch means (per-rank means averaged over ranks, one all-reduce at the end, not
    per step), tokens and tokens/s are global, and `mfu` is per device. Grad clipping in the shared loop
    runs after backward, when DDP has already averaged the gradients, so every rank clips the same global
    gradient by the same global norm and the replicas stay identical.
    """
    if sequences.ndim != 2 or len(sequences) == 0:
        raise ValueError("sequences must be a non-empty [n, seq_len] tensor")
    cfg = dataclasses.replace(cfg, device=dist_info.device)
    device = torch.device(dist_info.device)
    model.to(device).train()
    order = shard_batch(batch_order(len(sequences), cfg, step_offset), dist_info.rank, dist_info.world_size)
    distributed = dist.is_initialized() and dist_info.world_size > 1
    wrapped: torch.nn.Module = model
    if distributed:
        wrapped = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
        )
    forward_model = torch.compile(wrapped) if cfg.compile else wrapped  # compile the DDP wrapper (DDPOptimizer)
    result = run_steps(model, forward_model, optimizer, sequences, order, cfg, step_offset,
                       progress and dist_info.is_main, world_size=dist_info.world_size)
    if distributed and result.losses:
        losses = torch.tensor(result.losses, dtype=torch.float64, device=device)
        dist.all_reduce(losses, op=dist.ReduceOp.SUM)
        result.losses = (losses / dist_info.world_size).cpu().tolist()
    return result
