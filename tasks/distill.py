"""Distil the oracle probes into a small influence model, then score every document with it.

Probing costs one optimizer step per document; the influence model learns the probes of a few documents
and predicts them for the whole pool cheaply. Three students (`distill.features`, `distill.finetune_encoder`):
per-token weights on the proxy's own tokens (models/token_influence.py: the probes are mostly lexical), an
MLP head on the stored embeddings (the CPU default), or the embedding encoder fine-tuned end to end.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from core import db
from core.config import Settings
from core.faults import failpoint
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
from models.proxy_lm import probe_inputs
from models.token_influence import (
    TOKENIZER_FILE,
    fit_token_influence,
    load_token_model,
    log_frequency_ratio,
    predict_tokens,
    save_token_model,
)
from models.tokenizer import load_tokenizer
from models.trainer import resolve_device
from runtime import shards
from runtime.policies import STAGE_CACHE
from tasks.embed import embedding_matrix, is_static_model, iter_document_pages, load_embedder, load_embeddings
from tasks.pretrain import tokenizer_path


@dataclass
class DistillStats:
    stage: int
    train_probes: int
    heldout_probes: int
    heldout_spearman: float
    heldout_pearson: float
    scored_documents: int
    model_dir: str
    student: str  # tokens | finetuned | head: see `student_kind`
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
                           finetune_encoder=finetune_by_default(d.finetune_encoder, settings.embed.device)
                           and not is_static_model(settings.embed.model),  # a static model has no encoder to tune
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

Student = Literal["tokens", "finetuned", "head"]


def student_kind(settings: Settings, cfg: InfluenceConfig) -> Student:
    """Which influence model this stage distils into: see `distill.features` and `distill.finetune_encoder`."""
    if settings.distill.features == "tokens":
        return "tokens"
    return "finetuned" if cfg.finetune_encoder else "head"


def score_shard(settings: Settings, model_dir: str, kind: Student, input_path: str, output_path: str,
                threads: int) -> dict[str, int]:
    """Shard worker: score (doc_id, text) or (doc_id, embedding) pages with the influence model saved in
    `model_dir`, loaded from disk here, into (doc_id, score) Parquet."""
    shards.use_threads(threads)
    device = resolve_device(settings.embed.device)
    table = pq.read_table(input_path)
    if kind == "tokens":
        model, tokenizer = load_token_model(model_dir), load_tokenizer(Path(model_dir) / TOKENIZER_FILE)

        def score_page(page: pa.Table) -> np.ndarray:
            return predict_tokens(model, probe_inputs(tokenizer, page.column("text").to_pylist(), model.seq_len))
    elif kind == "finetuned":
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


@dataclass
class Probed:
    """A stage's distillation data: (doc_id, label) rows for fitting, early stopping and judging."""

    fit: list[tuple[str, float]]
    val: list[tuple[str, float]]
    held: list[tuple[str, float]]

    def labels(self, part: str) -> np.ndarray:
        return np.array([r[1] for r in getattr(self, part)], dtype=np.float32)

    def ids(self, part: str) -> list[str]:
        return [r[0] for r in getattr(self, part)]


def _text_pages(con, run_id: str, settings: Settings) -> Iterator[tuple[int, pa.Table]]:
    n_docs = db.rows(con, "count_documents", {"run_id": run_id})[0][0]
    pages = (pa.table({"doc_id": ids, "text": page}) for ids, page in iter_document_pages(con, run_id, SCORE_PAGE))
    return shards.tag_pages(pages, -(-n_docs // SCORE_PAGE), settings.runner.shards)


def reference_token_prior(con, settings: Settings, run_id: str, tokenizer) -> np.ndarray:
    """Per proxy token, log p_reference - log p_pool over what probes see (the first `proxy.seq_len` tokens);
    the pool side is the tokenizer's seeded sample of documents."""
    seq_len = settings.proxy.seq_len
    reference = [r[1] for r in db.rows(con, "reference_texts", {"run_id": run_id})]
    pool = [r[0] for r in db.rows(con, "tokenizer_sample", {"run_id": run_id, "seed": str(settings.seed),
                                                              "limit": settings.proxy.tokenizer_max_docs})]
    return log_frequency_ratio(probe_inputs(tokenizer, reference, seq_len), probe_inputs(tokenizer, pool, seq_len),
                               tokenizer.get_vocab_size())


def fit_student(con, settings: Settings, run_id: str, kind: Student, cfg: InfluenceConfig, data: Probed,
                model_dir: Path):
    """Train the stage's influence model and save it to `model_dir`.

    Returns its predictions for the held-out probes and the tagged pages the score shards read.
    """
    if kind == "head":
        doc_ids, X = load_embeddings(con, run_id)
        row_of = {d: i for i, d in enumerate(doc_ids)}
        X_fit, X_val, X_held = (X[[row_of[d] for d in data.ids(part)]] for part in ("fit", "val", "held"))
        head, _ = train_influence_head(X_fit, data.labels("fit"), X_val, data.labels("val"), cfg)
        save_head(head, model_dir, cfg)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1]) if len(X) else []
        return predict(head, X_held), shards.split_table(pa.table({
            "doc_id": pa.array(doc_ids, pa.string()),
            "embedding": pa.array(vectors, pa.list_(pa.float32(), -1) if not len(X) else vectors.type)}),
            settings.runner.shards, SCORE_PAGE)
    texts = dict(db.rows(con, "document_texts", {"run_id": run_id, "doc_ids": data.ids("fit") + data.ids("val")
                                                  + data.ids("held")}))
    text_of = {part: [texts[d] for d in data.ids(part)] for part in ("fit", "val", "held")}
    if kind == "tokens":
        tokenizer_file = tokenizer_path(settings, run_id)
        tokenizer, seq_len = load_tokenizer(tokenizer_file), settings.proxy.seq_len
        view = {part: probe_inputs(tokenizer, text_of[part], seq_len) for part in text_of}
        prior = reference_token_prior(con, settings, run_id, tokenizer) if settings.distill.reference_prior else None
        model, _ = fit_token_influence(view["fit"], data.labels("fit"), view["val"], data.labels("val"),
                                       tokenizer.get_vocab_size(), seq_len, prior=prior,
                                       prior_weight=settings.distill.reference_prior)
        save_token_model(model, model_dir, tokenizer_file)
        return predict_tokens(model, view["held"]), _text_pages(con, run_id, settings)
    encoder = load_embedder(settings.embed.model, settings.embed.device, settings.embed.max_seq_length)
    model, _ = train_influence_model(text_of["fit"], data.labels("fit"), text_of["val"], data.labels("val"), encoder, cfg)
    save_model(model, model_dir, cfg)
    return predict_texts(model, text_of["held"], batch_size=settings.embed.batch_size), _text_pages(con, run_id, settings)


def distill_stage(settings: Settings, run_id: str, stage: int) -> DistillStats:
    started = time.perf_counter()
    cfg = influence_config(settings)
    kind = student_kind(settings, cfg)
    model_dir = settings.stage_dir(run_id, stage) / "influence"
    shutil.rmtree(model_dir, ignore_errors=True)  # a re-run with another student leaves no stale model files
    with db.connect(settings.database) as con:
        probes = db.rows(con, "load_probes", {"run_id": run_id, "stage": stage})
        fit, val, held = training_rows(probes, settings.distill.labels, settings.distill.val_fraction,
                                       settings.seed + stage)
        data = Probed(*with_history(con, settings, run_id, stage, fit, val), held)
        held_pred, tagged = fit_student(con, settings, run_id, kind, cfg, data, model_dir)
        params = {"settings": settings, "model_dir": str(model_dir.resolve()), "kind": kind}
        scored = 0
        with shards.sharded(settings, run_id, f"score-{stage}", score_shard_task, tagged, params) as results, \
                db.transaction(con):
            db.run(con, "delete_influence_scores", {"run_id": run_id, "stage": stage})
            for result in results:
                out = shards.read_output(result)
                scored += out.num_rows
                db.insert_arrow(con, "insert_influence_scores", out.append_column("run_id", pa.array(
                    [run_id] * out.num_rows)).append_column("stage", pa.array([stage] * out.num_rows, pa.int32())))
    y_held = data.labels("held")
    return DistillStats(stage, len(data.fit) + len(data.val), len(held), spearman(held_pred, y_held),
                        pearson(held_pred, y_held), scored, str(model_dir), kind, time.perf_counter() - started)


distill_task = task(distill_stage, name="distill", task_run_name="distill[stage={stage}]", cache_policy=STAGE_CACHE, persist_result=True)
