"""Distil the oracle probes into a small influence model (a "student"), then score every document with it.

Probing costs one optimizer step per document; the student learns the probes of a few documents and
predicts them for the whole pool cheaply. Which student (models/students.py) follows `distill.features`
and `distill.finetune_encoder`: ridge weights on the proxy's own tokens (`tokens`), an MLP head on the
stored embeddings (`head`, the CPU default), or the encoder fine-tuned end to end (`finetuned`). This
stage only sees the student interface: fit, save, load (in the score shards), score.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from core import db, store
from core.artifacts import Embedded, Influence, Probes, Tokenized
from core.config import Settings, encoder_to_finetune
from core.faults import failpoint
from core.seeds import rng
from core.store import ProbeRow
from models.embedder import load_sentence_encoder
from models.proxy_lm import probe_inputs
from models.ranking import pearson, spearman
from models.students import Student, StudentInputs, load_student, make_student
from models.token_influence import log_frequency_ratio
from models.tokenizer import load_tokenizer
from models.trainer import resolve_device
from runtime import shards
from runtime.configs import influence_config
from runtime.policies import STAGE_CACHE

SCORE_PAGE = 1024
"""Documents per scoring call, and the unit score shards are cut in: the fine-tuned encoder sorts a page by
length before batching, so a page never straddles shards and scores do not depend on the runner."""


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def training_rows(probes: list[ProbeRow], val_fraction: float, split: np.random.Generator) -> tuple[list, list, list]:
    """(fit, early-stopping, held-out) rows as (doc_id, oracle value).

    The held-out rows (measured documents the probe stage set aside) only judge the model; early stopping
    uses a seeded slice of the training rows, so the held-out Spearman reported is not selected on.
    """
    train = [(p.doc_id, p.label) for p in probes if p.split == "train" and _finite(p.label)]
    held = [(p.doc_id, p.label) for p in probes if p.split == "heldout" and _finite(p.label)]
    order = split.permutation(len(train))
    n_val = max(1, round(val_fraction * len(train)))
    val = [train[i] for i in order[:n_val]]
    fit = [train[i] for i in order[n_val:]]
    if len(fit) < 2 or not held:
        raise ValueError(f"too few measured documents to distil ({len(fit)} to fit, {len(held)} held out); "
                         "raise `probe.budget`")
    return fit, val, held


def _zscored(rows: list[tuple[str, float]]) -> list[tuple[str, float]]:
    labels = np.array([r[1] for r in rows], dtype=np.float64)
    std = labels.std() if len(labels) > 1 else 0.0
    z = (labels - labels.mean()) / (std if std > 0 else 1.0)
    return [(d, float(y)) for (d, _), y in zip(rows, z, strict=True)]


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
    earlier: dict[int, list[tuple[str, float]]] = {}
    for row in store.probe_history(con, run_id, stage, max(0, stage - history)):
        if _finite(row.label):
            earlier.setdefault(row.stage, []).append((row.doc_id, float(row.label)))
    current = _zscored(fit + val)
    pooled = [r for rows in earlier.values() for r in _zscored(rows)]
    return current[:len(fit)] + pooled, current[len(fit):]


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

    def all_ids(self) -> list[str]:
        return self.ids("fit") + self.ids("val") + self.ids("held")


def student_name(settings: Settings) -> str:
    """Which registered student `distill.features` / `distill.finetune_encoder` choose."""
    if settings.distill.features == "tokens":
        return "tokens"
    return "finetuned" if influence_config(settings, 0).finetune_encoder else "head"


def reference_token_prior(con, settings: Settings, run_id: str, tokenizer) -> np.ndarray:
    """Per proxy token, log p_reference - log p_pool over what probes see (the first `proxy.seq_len` tokens);
    the pool side is the tokenizer's seeded sample of documents."""
    seq_len = settings.proxy.seq_len
    reference = store.reference_texts(con, run_id)
    pool = store.tokenizer_sample(con, run_id, settings.seed, settings.proxy.tokenizer_max_docs)
    return log_frequency_ratio(probe_inputs(tokenizer, reference, seq_len), probe_inputs(tokenizer, pool, seq_len),
                               tokenizer.get_vocab_size())


def new_student(con, settings: Settings, tokenized: Tokenized, stage: int) -> Student:
    """A fresh student of the configured kind, with what it needs to start from."""
    name, cfg = student_name(settings), influence_config(settings, stage)
    if name == "tokens":
        prior = None
        if settings.distill.reference_prior:
            prior = reference_token_prior(con, settings, tokenized.run_id, load_tokenizer(tokenized.tokenizer_path))
        return make_student("tokens", tokenizer_file=tokenized.tokenizer_path, seq_len=settings.proxy.seq_len,
                            prior=prior, prior_weight=settings.distill.reference_prior)
    if name == "finetuned":
        encoder = load_sentence_encoder(encoder_to_finetune(settings.embed.model), settings.embed.device,
                                        settings.embed.max_seq_length)
        return make_student("finetuned", config=cfg, encoder=encoder, batch_size=settings.embed.batch_size)
    return make_student("head", config=cfg)


def student_inputs(con, run_id: str, data: Probed, embeddings: pa.Table | None) -> dict[str, StudentInputs]:
    """The fit / val / held parts as what the student reads: texts, or rows of the stored `embeddings`."""
    if embeddings is None:
        texts = store.texts_of(con, run_id, data.all_ids())
        return {part: StudentInputs(texts=[texts[d] for d in data.ids(part)]) for part in ("fit", "val", "held")}
    row_of = {d: i for i, d in enumerate(embeddings.column("doc_id").to_pylist())}
    X = store.embedding_matrix(embeddings)
    return {part: StudentInputs(embeddings=X[[row_of[d] for d in data.ids(part)]]) for part in ("fit", "val", "held")}


def score_pages(con, settings: Settings, run_id: str, embeddings: pa.Table | None) -> Iterator[tuple[int, pa.Table]]:
    """(shard, page) of what the score shards read: (doc_id, text) or (doc_id, embedding), SCORE_PAGE rows."""
    if embeddings is not None:
        return shards.split_table(embeddings, settings.runner.shards, SCORE_PAGE)
    n_docs = store.count_documents(con, run_id)
    pages = (pa.table({"doc_id": ids, "text": page}) for ids, page in store.document_pages(con, run_id, SCORE_PAGE))
    return shards.tag_pages(pages, -(-n_docs // SCORE_PAGE), settings.runner.shards)


def score_shard(settings: Settings, model_dir: str, input_path: str, output_path: str, threads: int) -> dict[str, int]:
    """Shard worker: score (doc_id, text | embedding) pages with the student saved in `model_dir`."""
    shards.use_threads(threads)
    student = load_student(model_dir, resolve_device(settings.embed.device))
    table = pq.read_table(input_path)
    scores = []
    for page in shards.pages_of(table, SCORE_PAGE):
        failpoint("distill.page")
        inputs = (StudentInputs(texts=page.column("text").to_pylist()) if student.reads == "text"
                  else StudentInputs(embeddings=store.embedding_matrix(page)))
        scores.append(student.score(inputs))
    shards.write_table(Path(output_path), pa.table({
        "doc_id": table.column("doc_id"), "score": pa.array(np.concatenate(scores or [np.zeros(0)]), pa.float64())}))
    return {"documents": table.num_rows}


score_shard_task = task(score_shard, name="shard-score", cache_policy=NO_CACHE)


def distill_stage(settings: Settings, probes: Probes, tokenized: Tokenized, embedded: Embedded) -> Influence:
    """Fit the stage's student on its probes, judge it on the held-out exact probes, score every document."""
    started = time.perf_counter()
    run_id, stage = probes.run_id, probes.stage
    model_dir = settings.stage_dir(run_id, stage) / "influence"
    shutil.rmtree(model_dir, ignore_errors=True)  # a re-run with another student leaves no stale model files
    with db.connect(settings.database) as con:
        fit, val, held = training_rows(store.stage_probes(con, run_id, stage), settings.distill.val_fraction,
                                       rng(settings.seed, "distill", stage))
        data = Probed(*with_history(con, settings, run_id, stage, fit, val), held)
        student = new_student(con, settings, tokenized, stage)
        embeddings = db.arrow(con, "load_embeddings", {"run_id": run_id}) if student.reads == "embedding" else None
        parts = student_inputs(con, run_id, data, embeddings)
        student.fit(parts["fit"], data.labels("fit"), parts["val"], data.labels("val"))
        student.save(model_dir)
        held_pred = student.score(parts["held"])
        params = {"settings": settings, "model_dir": str(model_dir.resolve())}
        scored = 0
        with shards.sharded(settings, run_id, f"score-{stage}", score_shard_task,
                            score_pages(con, settings, run_id, embeddings), params) as results, \
                db.transaction(con):
            db.run(con, "delete_influence_scores", {"run_id": run_id, "stage": stage})
            for result in results:
                out = shards.read_output(result)
                scored += out.num_rows
                db.insert_arrow(con, "insert_influence_scores", out.append_column("run_id", pa.array(
                    [run_id] * out.num_rows)).append_column("stage", pa.array([stage] * out.num_rows, pa.int32())))
    y_held = data.labels("held")
    return Influence(run_id, stage, len(data.fit) + len(data.val), len(held), spearman(held_pred, y_held),
                     pearson(held_pred, y_held), scored, str(model_dir), student.name, time.perf_counter() - started)


distill_task = task(distill_stage, name="distill", task_run_name="distill[stage={probes.stage}]",
                    cache_policy=STAGE_CACHE, persist_result=True)
