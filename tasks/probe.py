"""Oracle probes: what one optimizer step on a document does to the proxy LM's reference loss.

For a cluster-stratified sample of the documents still available, the exact MATES probe (one AdamW step
from the stage checkpoint's weights and optimizer state, then the reference loss) and, optionally, the
fast first-order estimate of the same quantity. The probes are the influence model's training labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy.stats import spearmanr

from influmix import db
from influmix.config import Settings
from models.oracles import ProbeConfig, exact_probes, fast_probes
from models.proxy_lm import document_tensor
from models.tokenizer import EOS_TOKEN, encode_documents, load_tokenizer
from models.trainer import load_checkpoint, resolve_device
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


def probe_stage(settings: Settings, run_id: str, stage: int, progress: bool = True) -> ProbeStats:
    """Exact probes on `n_probes` documents; fast probes on those and `fast_label_multiplier` times as many."""
    cfg_p = settings.probe
    device = resolve_device(settings.proxy.device)
    tokenizer = load_tokenizer(tokenizer_path(settings, run_id))
    eos = tokenizer.token_to_id(EOS_TOKEN)
    model, optimizer_state, _ = load_checkpoint(settings.stage_dir(run_id, stage) / "checkpoint", device)
    ref = reference_tensor(settings, run_id, tokenizer).to(device)
    n_fast = int(cfg_p.n_probes * cfg_p.fast_label_multiplier) if cfg_p.fast else cfg_p.n_probes
    with db.connect(settings.database) as con:
        candidates = available_documents(con, settings, run_id, stage)[:n_fast]
        doc_ids = [c[0] for c in candidates]  # stratified order: the first n_probes are exact-probed too
        texts = dict(db.rows(con, "document_texts", {"run_id": run_id, "doc_ids": doc_ids}))
    docs = [document_tensor(ids, settings.proxy.seq_len, eos).to(device)
            for ids in encode_documents(tokenizer, [texts[d] for d in doc_ids])]
    n_exact = min(cfg_p.n_probes, len(docs))
    cfg = probe_config(settings)

    started = time.perf_counter()
    exact = exact_probes(model, optimizer_state, docs[:n_exact], ref, cfg, progress=progress)
    exact_s = (time.perf_counter() - started) / max(n_exact, 1)
    fast = fast_s = fast_rho = None
    if cfg_p.fast:
        started = time.perf_counter()
        fast = np.asarray(fast_probes(model, optimizer_state, docs, ref, cfg, progress=progress), dtype=np.float64)
        fast_s = (time.perf_counter() - started) / max(len(docs), 1)
        fast_rho = float(spearmanr(fast[:n_exact], exact.scores).statistic) if n_exact > 2 else None

    rng = np.random.default_rng(settings.seed + 1000 * stage)
    heldout = np.zeros(len(doc_ids), dtype=bool)
    heldout[:n_exact] = rng.random(n_exact) < cfg_p.heldout_fraction
    heldout[rng.integers(n_exact)] = True  # at least one held-out exact probe to judge the influence model on
    missing = np.full(len(doc_ids) - n_exact, np.nan)
    batch = pa.table({
        "run_id": [run_id] * len(doc_ids), "stage": [stage] * len(doc_ids), "doc_id": doc_ids,
        "exact_score": pa.array(np.concatenate([exact.scores, missing]), from_pandas=True),
        "fast_score": pa.array(fast, pa.float64()) if fast is not None else pa.nulls(len(doc_ids), pa.float64()),
        "loss_before": pa.array(np.concatenate([exact.loss_before, missing]), from_pandas=True),
        "loss_after": pa.array(np.concatenate([exact.loss_after, missing]), from_pandas=True),
        "split": np.where(heldout, "heldout", "train"),
    })
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_probes", {"run_id": run_id, "stage": stage})
        db.insert_arrow(con, "insert_probes", batch)
    return ProbeStats(stage, n_exact, len(doc_ids) if fast is not None else 0, float(np.mean(exact.scores)),
                      float(np.std(exact.scores)), fast_rho, exact_s, fast_s)


probe_task = task(probe_stage, name="probe", task_run_name="probe[stage={stage}]", cache_policy=NO_CACHE)
