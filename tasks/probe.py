"""Oracle probes: what one optimizer step on a document does to the proxy LM's reference loss.

For a cluster-stratified sample of the documents still available, the exact MATES probe (one AdamW step
from the stage checkpoint's weights and optimizer state, then the reference loss) and, optionally, the
fast first-order estimate of the same quantity. The probes are the influence model's training labels.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy.stats import spearmanr

from core import db, store
from core.artifacts import Checkpoint, Probes, Tokenized
from core.config import Settings
from core.faults import failpoint
from core.seeds import rng
from models.oracles import EXACT_GPU_BATCH, FAST_BATCH, ProbeScores, exact_probes, fast_probes
from models.proxy_lm import load_token_rows, probe_inputs
from models.tokenizer import load_tokenizer
from models.trainer import load_checkpoint, resolve_device
from runtime import shards
from runtime.configs import probe_config
from runtime.policies import STAGE_CACHE


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


def probe_shards(settings: Settings, checkpoint: Checkpoint, doc_ids: list[str], tokens: list[list[int]],
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
    params = {"settings": settings, "checkpoint": str(Path(checkpoint.path).resolve()),
              "exact_batch": exact_batch, "fast_batch": fast_batch}
    shared = {"reference": pa.table({"tokens": pa.array(ref.tolist(), pa.list_(pa.int64()))})}
    columns: dict[str, dict[str, float]] = {c: {} for c in ("exact_score", "fast_score", "loss_before", "loss_after")}
    with shards.sharded(settings, checkpoint.run_id, f"probe-{checkpoint.stage}", probe_shard_task, sorted(tagged, key=lambda t: t[0]),
                        params, shared) as results:
        for row in pa.concat_tables([shards.read_output(r) for r in results]).to_pylist():
            for name, values in columns.items():
                if row[name] is not None:
                    values[row["doc_id"]] = row[name]
    return (columns, sum(r.info["exact_seconds"] for r in results), sum(r.info["fast_seconds"] for r in results))


def probe_stage(settings: Settings, checkpoint: Checkpoint, tokenized: Tokenized, progress: bool = True) -> Probes:
    """Exact probes on `n_probes` documents; fast probes on those and `fast_label_multiplier` times as many.

    The candidates, the held-out split and the statistics are the driver's; the probes run in shards.
    """
    cfg_p, run_id, stage = settings.probe, checkpoint.run_id, checkpoint.stage
    tokenizer = load_tokenizer(tokenized.tokenizer_path)
    n_fast = int(cfg_p.n_probes * cfg_p.fast_label_multiplier) if cfg_p.fast else cfg_p.n_probes
    with db.connect(settings.database) as con:
        pool = store.candidates(con, run_id, stage, settings.seed, settings.select.exclude_previous)
        doc_ids = pool.doc_ids[:n_fast]  # stratified order: the first n_probes are exact-probed too
        texts = store.texts_of(con, run_id, doc_ids)
    tokens = probe_inputs(tokenizer, [texts[d] for d in doc_ids], settings.proxy.seq_len)
    n_exact = min(cfg_p.n_probes, len(doc_ids))
    ref = load_token_rows(tokenized.reference_path, cfg_p.reference_sequences)
    columns, exact_total_s, fast_total_s = probe_shards(settings, checkpoint, doc_ids, tokens, n_exact, ref)
    column = {name: np.array([values.get(d, np.nan) for d in doc_ids], dtype=np.float64)
              for name, values in columns.items()}
    exact_scores = column["exact_score"][:n_exact]
    exact_s = exact_total_s / max(n_exact, 1)
    fast_s = fast_rho = None
    if cfg_p.fast:
        fast_s = fast_total_s / max(len(doc_ids), 1)
        fast_rho = float(spearmanr(column["fast_score"][:n_exact], exact_scores).statistic) if n_exact > 2 else None

    split = rng(settings.seed, "probe_split", stage)
    heldout = np.zeros(len(doc_ids), dtype=bool)
    heldout[:n_exact] = split.random(n_exact) < cfg_p.heldout_fraction
    heldout[split.integers(n_exact)] = True  # at least one held-out exact probe to judge the influence model on
    batch = pa.table({
        "run_id": [run_id] * len(doc_ids), "stage": [stage] * len(doc_ids), "doc_id": doc_ids,
        **{name: pa.array(values, from_pandas=True) for name, values in column.items()},
        "split": np.where(heldout, "heldout", "train"),
    })
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_probes", {"run_id": run_id, "stage": stage})
        db.insert_arrow(con, "insert_probes", batch)
    return Probes(run_id, stage, n_exact, len(doc_ids) if cfg_p.fast else 0, float(np.mean(exact_scores)),
                      float(np.std(exact_scores)), fast_rho, exact_s, fast_s)


probe_task = task(probe_stage, name="probe", task_run_name="probe[stage={checkpoint.stage}]", cache_policy=STAGE_CACHE, persist_result=True)
