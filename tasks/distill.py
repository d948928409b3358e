"""Distil the oracle probes into a small influence model, then score every document with it.

Probing costs one optimizer step per document; the influence model (embedding encoder + regression head)
learns the probes of a few documents and predicts them for the whole pool at embedding cost. On the CPU
the default trains the head alone on the stored embeddings; `distill.finetune_encoder` trains end to end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from influmix import db
from influmix.config import Settings
from models.influence import InfluenceConfig, predict, save_head, train_influence_head
from models.influence_encoder import predict_texts, save_model, train_influence_model
from models.trainer import resolve_device
from tasks.embed import iter_document_pages, load_embedder, load_embeddings


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


def influence_config(settings: Settings) -> InfluenceConfig:
    d = settings.distill
    return InfluenceConfig(hidden_dim=d.hidden_dim, epochs=d.epochs, lr=d.lr, weight_decay=d.weight_decay,
                           ranking_weight=d.ranking_weight, patience=d.patience, seed=settings.seed,
                           finetune_encoder=d.finetune_encoder, max_seq_length=settings.embed.max_seq_length,
                           device=resolve_device(settings.embed.device))


def distill_stage(settings: Settings, run_id: str, stage: int) -> DistillStats:
    started = time.perf_counter()
    cfg = influence_config(settings)
    model_dir = settings.stage_dir(run_id, stage) / "influence"
    with db.connect(settings.database) as con:
        probes = db.rows(con, "load_probes", {"run_id": run_id, "stage": stage})
        doc_ids, X = load_embeddings(con, run_id)
        row_of = {d: i for i, d in enumerate(doc_ids)}
        train = [(row_of[p[0]], p[1], p[0]) for p in probes if p[3] == "train"]
        held = [(row_of[p[0]], p[1], p[0]) for p in probes if p[3] == "heldout"]
        if len(train) < 2 or not held:
            raise ValueError(f"stage {stage}: too few probes to distil ({len(train)} train, {len(held)} held out); "
                             "raise `probe.n_probes`")
        y_train = np.array([t[1] for t in train], dtype=np.float32)
        y_held = np.array([t[1] for t in held], dtype=np.float32)
        if cfg.finetune_encoder:
            texts = dict(db.rows(con, "document_texts", {"run_id": run_id, "doc_ids": [t[2] for t in train + held]}))
            encoder = load_embedder(settings.embed.model, settings.embed.device, settings.embed.max_seq_length)
            model, report = train_influence_model([texts[t[2]] for t in train], y_train,
                                                  [texts[t[2]] for t in held], y_held, encoder, cfg)
            save_model(model, model_dir, cfg)
            scores = np.concatenate([predict_texts(model, texts_page, batch_size=settings.embed.batch_size)
                                     for _, texts_page in iter_document_pages(con, run_id, 1024)])
        else:
            head, report = train_influence_head(X[[t[0] for t in train]], y_train, X[[t[0] for t in held]], y_held, cfg)
            save_head(head, model_dir, cfg)
            scores = predict(head, X)
        with db.transaction(con):
            db.run(con, "delete_influence_scores", {"run_id": run_id, "stage": stage})
            db.insert_arrow(con, "insert_influence_scores", pa.table({
                "run_id": [run_id] * len(doc_ids), "stage": [stage] * len(doc_ids), "doc_id": doc_ids,
                "score": np.asarray(scores, dtype=np.float64),
            }))
    return DistillStats(stage, len(train), len(held), float(report.val_spearman), float(report.val_pearson),
                        len(doc_ids), str(model_dir), cfg.finetune_encoder, time.perf_counter() - started)


distill_task = task(distill_stage, name="distill", task_run_name="distill[stage={stage}]", cache_policy=NO_CACHE)
