"""Oracle probes: what one optimizer step on a document does to the proxy LM's reference loss.

For a cluster-stratified sample of the documents still available, the exact MATES probe (one AdamW step
from the stage checkpoint's weights and optimizer state, then the reference loss) and, optionally, the
fast first-order estimate of the same quantity. The probes are the influence model's training labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy.stats import spearmanr

from core import db
from core.config import Settings
from core.faults import failpoint
from models.oracles import EXACT_GPU_BATCH, FAST_BATCH, ProbeConfig, ProbeScores, exact_probes, fast_probes
from models.proxy_lm import probe_inputs
from models.tokenizer import load_tokenizer
from models.trainer import load_checkpoint, resolve_device
from runtime import shards
from runtime.policies import STAGE_CACHE
from tasks.pretrain import reference_tensor, tokenizer_path


@dataclass
class ProbeStats:
    stage: int
    probes: int
    fast_probes: int
    exact_mean: float
    exact_std: float
    fast_spearman: float | None
    exact_seconds_per_probe: float
    fast_seconds_per_probe: float | None

    def as_metrics(self) -> dict[str, float]:
        metrics = {"probes": self.probes, "fast_probes": self.fast_probes, "probe_exact_mean": self.exact_mean, "probe_exact_std": self.exact_std,
                   "probe_exact_s": self.exact_seconds_per_probe,
                   "exact_probes_per_s": 1.0 / max(self.exact_seconds_per_probe, 1e-12)}
        if self.fast_spearman is not None:
            metrics["probe_fast_spearman"] = self.fast_spearman
            metrics["probe_fast_s"] = self.fast_seconds_per_probe or 0.0
            metrics["fast_probes_per_s"] = 1.0 / max(self.fast_seconds_per_probe or 0.0, 1e-12)
        return metrics


def available_documents(con, settings: Settings, run_id: str, stage: int) -> list[tuple[str, int, int]]:
    """(doc_id, cluster_id, n_tokens) the stage may probe or select, in cluster-stratified order."""
    return db.rows(con, "available_documents", {
        "run_id": run_id, "stage": stage, "seed": f"{settings.seed}/{stage}",
        "exclude_previous": settings.select.exclude_previous,
    })


def probe_config(settings: Settings) -> ProbeConfig:
    p = settings.proxy
    return ProbeConfig(lr=settings.probe.probe_lr or p.lr, weight_decay=p.weight_decay, beta1=p.beta1,
                       beta2=p.beta2, grad_clip=p.grad_clip)


def _token_table(doc_ids: list[str], tokens: list[list[int]], exact: bool) -> pa.Table:
    return pa.table({"doc_id": doc_ids, "tokens": pa.array(tokens, pa.list_(pa.int64())),
                     "exact": [exact] * len(doc_ids)})


def _tensors(table: pa.Table, device: str) -> list[torch.Tensor]:
    return [torch.tensor([ids], dtype=torch.long, device=device) for ids in table.column("tokens").to_pylist()]


def probe_shard(settings: Settings, checkpoint: str, reference: str, exact_batch: int, fast_batch: int,
                input_path: str, output_path: str, threads: int) -> dict[str, float]:
    """Shard worker: exact probes on its `exact` rows, fast probes on the others, from files only.

    Each worker loads the stage checkpoint and the reference rows itself; rows come length-sorted and
    batch-aligned (see `probe_shards`), so the batched estimators see the same batches on any runner.
    """
    shards.use_threads(threads)
    device = resolve_device(settings.proxy.device)
    model, optimizer_state, _ = load_checkpoint(checkpoint, device)
    ref = torch.tensor(pq.read_table(reference).column("tokens").to_pylist(), dtype=torch.long, device=device)
    table = pq.read_table(input_path)
    exact_rows = table.filter(table.column("exact"))
    fast_rows = table.filter(pc.invert(table.column("exact")))
    cfg = probe_config(settings)
    started = time.perf_counter()
    exact = exact_probes(model, optimizer_state, _tensors(exact_rows, device), ref, cfg, progress=False,
                         batch=exact_batch) if exact_rows.num_rows else ProbeScores(*(np.zeros(0),) * 3)
    exact_s = time.perf_counter() - started
    failpoint("probe.shard")
    started = time.perf_counter()
    fast = fast_probes(model, optimizer_state, _tensors(fast_rows, device), ref, cfg, progress=False,
                       method=settings.probe.fast_estimator, batch=fast_batch) if fast_rows.num_rows else np.zeros(0)
    fast_s = time.perf_counter() - started
    nulls = np.full(fast_rows.num_rows, np.nan)
    shards.write_table(Path(output_path), pa.table({
        "doc_id": pa.concat_arrays([exact_rows.column("doc_id").combine_chunks(),
                                    fast_rows.column("doc_id").combine_chunks()]),
        **{name: pa.array(np.concatenate([values, nulls]), from_pandas=True) for name, values in
           (("exact_score", exact.scores), ("loss_before", exact.loss_before), ("loss_after", exact.loss_after))},
        "fast_score": pa.array(np.concatenate([np.full(exact_rows.num_rows, np.nan), fast]), from_pandas=True),
    }))
    return {"exact_seconds": exact_s, "fast_seconds": fast_s}


probe_shard_task = task(probe_shard, name="shard-probe", cache_policy=NO_CACHE)


def probe_shards(settings: Settings, run_id: str, stage: int, doc_ids: list[str], tokens: list[list[int]],
                 n_exact: int, ref: torch.Tensor) -> tuple[dict[str, dict[str, float]], float, float]:
    """Probe scores by column and doc id, plus total exact and fast seconds, computed over `runner` shards.

    The estimators batch documents by length (oracles.FAST_BATCH; EXACT_GPU_BATCH on CUDA), so each
    document set is sorted by length here and cut at batch multiples: every shard then forms exactly the
    batches one call over all documents would. Shard k probes the k-th slice of the exact set and of the
    fast set; what the estimators compute once per call (reference loss, shared step) is deterministic.
    """
    on_cuda = resolve_device(settings.proxy.device).startswith("cuda")
    exact_batch, fast_batch = (EXACT_GPU_BATCH if on_cuda else 0), FAST_BATCH["cuda" if on_cuda else "cpu"]
    by_length = sorted(range(len(doc_ids)), key=lambda i: len(tokens[i]))  # stable, as length_buckets sorts
    exact_order = [i for i in by_length if i < n_exact]
    fast_order = by_length if settings.probe.fast else []
    tagged = [*shards.split_table(_token_table([doc_ids[i] for i in exact_order], [tokens[i] for i in exact_order],
                                               True), settings.runner.shards, max(exact_batch, 1)),
              *shards.split_table(_token_table([doc_ids[i] for i in fast_order], [tokens[i] for i in fast_order],
                                               False), settings.runner.shards, fast_batch)]
    params = {"settings": settings, "checkpoint": str((settings.stage_dir(run_id, stage) / "checkpoint").resolve()),
              "exact_batch": exact_batch, "fast_batch": fast_batch}
    shared = {"reference": pa.table({"tokens": pa.array(ref.tolist(), pa.list_(pa.int64()))})}
    columns: dict[str, dict[str, float]] = {c: {} for c in ("exact_score", "fast_score", "loss_before", "loss_after")}
    with shards.sharded(settings, run_id, f"probe-{stage}", probe_shard_task, sorted(tagged, key=lambda t: t[0]),
                        params, shared) as results:
        for row in pa.concat_tables([shards.read_output(r) for r in results]).to_pylist():
            for name, values in columns.items():
                if row[name] is not None:
                    values[row["doc_id"]] = row[name]
    return (columns, sum(r.info["exact_seconds"] for r in results), sum(r.info["fast_seconds"] for r in results))


def probe_stage(settings: Settings, run_id: str, stage: int, progress: bool = True) -> ProbeStats:
    """Exact probes on `n_probes` documents; fast probes on those and `fast_label_multiplier` times as many.

    The candidates, the held-out split and the statistics are the driver's; the probes run in shards.
    """
    cfg_p = settings.probe
    tokenizer = load_tokenizer(tokenizer_path(settings, run_id))
    n_fast = int(cfg_p.n_probes * cfg_p.fast_label_multiplier) if cfg_p.fast else cfg_p.n_probes
    with db.connect(settings.database) as con:
        candidates = available_documents(con, settings, run_id, stage)[:n_fast]
        doc_ids = [c[0] for c in candidates]  # stratified order: the first n_probes are exact-probed too
        texts = dict(db.rows(con, "document_texts", {"run_id": run_id, "doc_ids": doc_ids}))
    tokens = probe_inputs(tokenizer, [texts[d] for d in doc_ids], settings.proxy.seq_len)
    n_exact = min(cfg_p.n_probes, len(doc_ids))
    ref = reference_tensor(settings, run_id, tokenizer)
    columns, exact_total_s, fast_total_s = probe_shards(settings, run_id, stage, doc_ids, tokens, n_exact, ref)
    column = {name: np.array([values.get(d, np.nan) for d in doc_ids], dtype=np.float64)
              for name, values in columns.items()}
    exact_scores = column["exact_score"][:n_exact]
    exact_s = exact_total_s / max(n_exact, 1)
    fast_s = fast_rho = None
    if cfg_p.fast:
        fast_s = fast_total_s / max(len(doc_ids), 1)
        fast_rho = float(spearmanr(column["fast_score"][:n_exact], exact_scores).statistic) if n_exact > 2 else None

    rng = np.random.default_rng(settings.seed + 1000 * stage)
    heldout = np.zeros(len(doc_ids), dtype=bool)
    heldout[:n_exact] = rng.random(n_exact) < cfg_p.heldout_fraction
    heldout[rng.integers(n_exact)] = True  # at least one held-out exact probe to judge the influence model on
    batch = pa.table({
        "run_id": [run_id] * len(doc_ids), "stage": [stage] * len(doc_ids), "doc_id": doc_ids,
        **{name: pa.array(values, from_pandas=True) for name, values in column.items()},
        "split": np.where(heldout, "heldout", "train"),
    })
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_probes", {"run_id": run_id, "stage": stage})
        db.insert_arrow(con, "insert_probes", batch)
    return ProbeStats(stage, n_exact, len(doc_ids) if cfg_p.fast else 0, float(np.mean(exact_scores)),
                      float(np.std(exact_scores)), fast_rho, exact_s, fast_s)


probe_task = task(probe_stage, name="probe", task_run_name="probe[stage={stage}]", cache_policy=STAGE_CACHE, persist_result=True)
