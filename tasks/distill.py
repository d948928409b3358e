"""Distil the oracle probes into a small influence model, then score every document with it.

Probing costs one optimizer step per document; the influence model (embedding encoder + regression head)
learns the probes of a few documents and predicts them for the whole pool at embedding cost. On the CPU
the default trains the head alone on the stored embeddings; `distill.finetune_encoder` trains end to end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from influmix import db
from influmix.config import Settings
from influmix.faults import failpoint
from models.influence import (
    InfluenceConfig,
    load_head,
    pearson,
    predict,
    save_head,
    spearman,
    train_influence_head,
)
from models.influence_encoder import load_model, predict_texts, save_model, train_influence_model
from models.trainer import resolve_device
from tasks import shards
from tasks.embed import embedding_matrix, iter_document_pages, load_embedder, load_embeddings
from tasks.policies import STAGE_CACHE


@dataclass
class DistillStats:
    stage: int
    train_probes: int
    heldout_probes: int
    heldout_spearman: float
    heldout_pearson: float
    scored_documents: int
    model_dir: str
    finetuned_encoder: bool
    seconds: float

    def as_metrics(self) -> dict[str, float]:
        return {"influence_heldout_spearman": self.heldout_spearman, "influence_heldout_pearson": self.heldout_pearson,
                "influence_train_probes": self.train_probes, "influence_scored_documents": self.scored_documents}


def finetune_by_default(choice: bool | None, device: str) -> bool:
    """Fine-tuning beat the frozen head in benchmarks/influence_study.py (0.31 vs 0.19 held-out Spearman, one
    split); it costs minutes per stage on a CPU, so the default fine-tunes on a GPU only."""
    return choice if choice is not None else resolve_device(device).startswith("cuda")


def influence_config(settings: Settings) -> InfluenceConfig:
    d = settings.distill
    return InfluenceConfig(hidden_dim=d.hidden_dim, epochs=d.epochs, lr=d.lr, weight_decay=d.weight_decay,
                           ranking_weight=d.ranking_weight, patience=d.patience, seed=settings.seed,
                           finetune_encoder=finetune_by_default(d.finetune_encoder, settings.embed.device),
                           max_seq_length=settings.embed.max_seq_length,
                           device=resolve_device(settings.embed.device))


def _label_column(labels: str) -> int:
    """Where the label sits in a `load_probes` / `load_probe_history` row (doc_id, exact, fast, split, ...)."""
    return 2 if labels == "fast" else 1


def training_rows(probes: list[tuple], labels: str, val_fraction: float, seed: int) -> tuple[list, list, list]:
    """(fit, early-stopping, held-out) probe rows as (doc_id, label).

    The held-out rows (exact probes the probe stage set aside) only judge the model; early stopping uses a
    seeded slice of the training rows, so the held-out Spearman reported is not selected on.
    """
    column = _label_column(labels)
    train = [(p[0], p[column]) for p in probes if p[3] == "train" and p[column] is not None]
    held = [(p[0], p[1]) for p in probes if p[3] == "heldout"]
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, round(val_fraction * len(train)))
    val = [train[i] for i in order[:n_val]]
    fit = [train[i] for i in order[n_val:]]
    if len(fit) < 2 or not held:
        raise ValueError(f"too few probes to distil ({len(fit)} to fit, {len(held)} held out); raise `probe.n_probes`")
    return fit, val, held


def _zscored(rows: list[tuple[str, float]]) -> list[tuple[str, float]]:
    labels = np.array([r[1] for r in rows], dtype=np.float64)
    std = labels.std() if len(labels) > 1 else 0.0
    z = (labels - labels.mean()) / (std if std > 0 else 1.0)
    return [(d, float(y)) for (d, _), y in zip(rows, z)]


def with_history(con, settings: Settings, run_id: str, stage: int, fit: list, val: list) -> tuple[list, list]:
    """Add the training probes of up to `distill.history_stages` earlier stages to the fit set.

    Why: one stage's few hundred probes leave the influence model noisy (in the selection benchmark its
    held-out Spearman fell from 0.44 at stage 0 to about 0 later), while what made a document useful to
    the earlier checkpoints mostly still holds. Probe scales shrink as the proxy trains, so every stage's
    labels (this one's included) are z-scored on their own before they are pooled; the held-out probes,
    and so the reported Spearman, stay this stage's own.
    """
    history = settings.distill.history_stages
    if history == 0 or stage == 0:
        return fit, val
    column = _label_column(settings.distill.labels)
    earlier: dict[int, list[tuple[str, float]]] = {}
    for row in db.rows(con, "load_probe_history", {"run_id": run_id, "stage": stage,
                                                    "first_stage": max(0, stage - history)}):
        if row[column] is not None and np.isfinite(row[column]):
            earlier.setdefault(row[4], []).append((row[0], float(row[column])))
    current = _zscored(fit + val)
    pooled = [r for rows in earlier.values() for r in _zscored(rows)]
    return current[:len(fit)] + pooled, current[len(fit):]


SCORE_PAGE = 1024
"""Documents per scoring call, and the unit score shards are cut in: the fine-tuned encoder sorts a page by
length before batching, so a page never straddles shards and scores do not depend on the runner."""


def score_shard(settings: Settings, model_dir: str, finetuned: bool, input_path: str, output_path: str,
                threads: int) -> dict[str, int]:
    """Shard worker: score (doc_id, text) or (doc_id, embedding) pages with the influence model saved in
    `model_dir`, loaded from disk here, into (doc_id, score) Parquet."""
    shards.use_threads(threads)
    device = resolve_device(settings.embed.device)
    table = pq.read_table(input_path)
    if finetuned:
        model = load_model(model_dir, device)

        def score_page(page: pa.Table) -> np.ndarray:
            return predict_texts(model, page.column("text").to_pylist(), batch_size=settings.embed.batch_size)
    else:
        head = load_head(model_dir, device)

        def score_page(page: pa.Table) -> np.ndarray:
            return predict(head, embedding_matrix(page), batch_size=SCORE_PAGE)
    scores = []
    for page in shards.pages_of(table, SCORE_PAGE):
        failpoint("distill.page")
        scores.append(score_page(page))
    shards.write_table(Path(output_path), pa.table({
        "doc_id": table.column("doc_id"), "score": pa.array(np.concatenate(scores or [np.zeros(0)]), pa.float64())}))
    return {"documents": table.num_rows}


score_shard_task = task(score_shard, name="shard-score", cache_policy=NO_CACHE)


def distill_stage(settings: Settings, run_id: str, stage: int) -> DistillStats:
    started = time.perf_counter()
    cfg = influence_config(settings)
    model_dir = settings.stage_dir(run_id, stage) / "influence"
    with db.connect(settings.database) as con:
        probes = db.rows(con, "load_probes", {"run_id": run_id, "stage": stage})
        fit, val, held = training_rows(probes, settings.distill.labels, settings.distill.val_fraction,
                                       settings.seed + stage)
        fit, val = with_history(con, settings, run_id, stage, fit, val)
        y_fit, y_val, y_held = (np.array([r[1] for r in rows], dtype=np.float32) for rows in (fit, val, held))
        doc_ids, X = load_embeddings(con, run_id)
        if cfg.finetune_encoder:
            texts = dict(db.rows(con, "document_texts", {"run_id": run_id, "doc_ids": [r[0] for r in fit + val + held]}))
            encoder = load_embedder(settings.embed.model, settings.embed.device, settings.embed.max_seq_length)
            model, _ = train_influence_model([texts[r[0]] for r in fit], y_fit, [texts[r[0]] for r in val], y_val,
                                             encoder, cfg)
            save_model(model, model_dir, cfg)
            held_pred = predict_texts(model, [texts[r[0]] for r in held], batch_size=settings.embed.batch_size)
            pages = (pa.table({"doc_id": ids, "text": page}) for ids, page in iter_document_pages(con, run_id, SCORE_PAGE))
            tagged = shards.tag_pages(pages, -(-len(doc_ids) // SCORE_PAGE), settings.runner.shards)
        else:
            row_of = {d: i for i, d in enumerate(doc_ids)}
            X_fit, X_val, X_held = (X[[row_of[r[0]] for r in part]] for part in (fit, val, held))
            head, _ = train_influence_head(X_fit, y_fit, X_val, y_val, cfg)
            save_head(head, model_dir, cfg)
            held_pred = predict(head, X_held)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1]) if len(X) else []
            tagged = shards.split_table(pa.table({"doc_id": pa.array(doc_ids, pa.string()),
                                                  "embedding": pa.array(vectors, pa.list_(pa.float32(), -1)
                                                                        if not len(X) else vectors.type)}),
                                        settings.runner.shards, SCORE_PAGE)
        params = {"settings": settings, "model_dir": str(model_dir.resolve()), "finetuned": cfg.finetune_encoder}
        with shards.sharded(settings, run_id, f"score-{stage}", score_shard_task, tagged, params) as results, \
                db.transaction(con):
            db.run(con, "delete_influence_scores", {"run_id": run_id, "stage": stage})
            for result in results:
                out = shards.read_output(result)
                db.insert_arrow(con, "insert_influence_scores", out.append_column("run_id", pa.array(
                    [run_id] * out.num_rows)).append_column("stage", pa.array([stage] * out.num_rows, pa.int32())))
    return DistillStats(stage, len(fit) + len(val), len(held), spearman(held_pred, y_held), pearson(held_pred, y_held),
                        len(doc_ids), str(model_dir), cfg.finetune_encoder, time.perf_counter() - started)


distill_task = task(distill_stage, name="distill", task_run_name="distill[stage={stage}]", cache_policy=STAGE_CACHE, persist_result=True)
