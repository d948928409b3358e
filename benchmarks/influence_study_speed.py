"""The influence study's scoring cost: documents per second for every student, FLOPs of the text encoder.

Each student is saved and loaded back through the student interface (what the distil stage's score shards
do), then times `score` on pool documents from what it reads: raw texts, or stored embeddings. A student
on embeddings is also timed from raw text (the embed stage's `encode_page`, then the student), since a new
document has to be embedded first. The encoder's FLOPs per document are counted by torch's
FlopCounterMode at the window (`embed.max_seq_length`) and at the pool's mean length.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.influence_study_config import RUN_ID, StudyConfig
from benchmarks.influence_study_data import StudyData
from core import db, store
from core.seeds import document_keys
from models.students import Student, StudentInputs, load_student

WARMUP_DOCS = 16


def _timed(fn, *args) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def pool_sample(data: StudyData, n_docs: int) -> tuple[list[str], np.ndarray]:
    """A seeded sample of `n_docs` pool texts (doc_id order would favour one source's documents) and all
    stored embeddings (rows)."""
    with db.connect(data.settings.database, read_only=True) as con:
        ids = [m.doc_id for m in store.documents_metadata(con, RUN_ID)]
        chosen = [ids[i] for i in np.argsort(document_keys(ids, data.settings.seed, "benchmark"), kind="stable")[:n_docs]]
        texts = store.texts_of(con, RUN_ID, chosen)
        _, X = store.load_embeddings(con, RUN_ID)
    return [texts[d] for d in chosen], X


def encoder_flops(encoder, tokens: int) -> float | None:
    """FLOPs of one forward of a SentenceTransformer's transformer on one document of `tokens` tokens (None
    for a static model: a lookup and a mean, no matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    transformer = getattr(encoder[0], "auto_model", None) if hasattr(encoder, "__getitem__") else None
    if transformer is None:
        return None
    ids = torch.full((1, max(2, tokens)), 1000, dtype=torch.long, device=transformer.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        transformer(input_ids=ids, attention_mask=torch.ones_like(ids))
    return float(counter.get_total_flops())


def student_speed(student: Student, folder: Path, texts: list[str], X: np.ndarray, rows: int) -> dict[str, Any]:
    """docs/s of the reloaded student on its own input; and whether reloading changed its scores."""
    loaded = load_student(student.save(folder))
    if loaded.reads == "text":
        inputs, probe = StudentInputs(texts=texts), StudentInputs(texts=texts[:WARMUP_DOCS])
    else:
        inputs = StudentInputs(embeddings=np.resize(X, (rows, X.shape[1])).astype(np.float32))
        probe = StudentInputs(embeddings=X[:WARMUP_DOCS])
    drift = float(np.max(np.abs(loaded.score(probe) - student.score(probe))))  # also the warm-up
    _, seconds = _timed(loaded.score, inputs)
    return {"reads": loaded.reads, "docs": len(inputs), "docs_per_s": len(inputs) / seconds,
            "reload_max_abs_diff": drift}


def scoring_speed(cfg: StudyConfig, data: StudyData, students: dict[str, Student]) -> dict[str, Any]:
    from tasks.embed import encode_page, load_embedder

    embed = data.settings.embed
    texts, X = pool_sample(data, cfg.scoring_docs)
    out: dict[str, Any] = {"students": {}}
    folder = Path(cfg.workdir) / "students"
    for name, student in students.items():
        out["students"][name] = student_speed(student, folder / name, texts, X, cfg.embedding_scoring_rows)
    encoder = load_embedder(embed.model, embed.device, embed.max_seq_length)
    encode_page(encoder, texts[:WARMUP_DOCS], embed.batch_size)
    _, embed_s = _timed(encode_page, encoder, texts, embed.batch_size)
    out["embed_docs_per_s"] = len(texts) / embed_s
    for name, speed in out["students"].items():
        if speed["reads"] == "embedding":  # from raw text: embed, then score
            speed["from_text_docs_per_s"] = 1.0 / (1.0 / out["embed_docs_per_s"] + 1.0 / speed["docs_per_s"])
        else:
            speed["from_text_docs_per_s"] = speed["docs_per_s"]
    tokenizer = getattr(encoder, "tokenizer", None)
    mean_tokens = (float(np.mean([len(x) for x in tokenizer(texts, truncation=True, max_length=embed.max_seq_length)
                                  ["input_ids"]])) if tokenizer is not None else None)
    out["encoder"] = {"model": embed.model, "max_seq_length": embed.max_seq_length, "mean_tokens_per_doc": mean_tokens,
                      "flops_per_doc_at_max": encoder_flops(encoder, embed.max_seq_length),
                      "flops_per_doc_at_mean": encoder_flops(encoder, round(mean_tokens)) if mean_tokens else None,
                      "threads": torch.get_num_threads()}
    return out
