"""Tokenizer stage: the proxy's byte-level BPE, every document's exact token count, the packed reference.

The token counts make the selector's token budget exact; the reference is packed once into rows of
`proxy.seq_len` tokens (a safetensors file beside the tokenizer), so that every later stage measures the
reference loss on the same rows without re-tokenizing or re-packing it.

Tokenizer and counts are content-addressed: a run whose tokenizer sample some earlier run trained on gets
that run's tokenizer (byte-identical file), and token counts are looked up by (exact text, tokenizer file
hash), so only documents no earlier run counted under this tokenizer are tokenized.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from prefect import task
from tokenizers import Tokenizer

from core import db, store
from core.artifacts import Filtered, Ingested, ReferenceSet, Tokenized
from core.config import Settings
from core.seeds import document_keys
from models.proxy_lm import pack_sequences, save_token_rows
from models.tokenizer import EOS_TOKEN, count_tokens, encode_documents, save_tokenizer, train_bpe_tokenizer
from runtime.policies import STAGE_CACHE

TOKEN_PAGE = 2_000


def pack_reference(tokenizer, texts: list[str], seq_len: int, part: str = "reference set") -> torch.Tensor:
    """The reference texts as [rows, seq_len] token ids (EOS between documents)."""
    packed, _ = pack_sequences(encode_documents(tokenizer, texts), seq_len, tokenizer.token_to_id(EOS_TOKEN))
    if len(packed) == 0:
        raise ValueError(f"the {part} is shorter than one sequence of `proxy.seq_len` tokens: add reference documents")
    return packed


def reference_rows(tokenizer, documents: list[tuple[str, str]], seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """The packed reference ("rows"), and its two halves by document (core.seeds "reference_split"): "fit", which
    a conditional oracle fine-tunes on, and "measure", on which oracle values and rollouts are taken, so a
    measurement is never taken on the data it was fitted to (cross-fitting)."""
    keys = document_keys([ref_id for ref_id, _ in documents], seed, "reference_split")
    in_fit = keys < np.median(keys) if len(documents) > 1 else np.ones(len(documents), dtype=bool)
    texts = [text for _, text in documents]
    return {"rows": pack_reference(tokenizer, texts, seq_len),
            "fit": pack_reference(tokenizer, [t for t, a in zip(texts, in_fit, strict=True) if a], seq_len,
                                  "reference's fit half"),
            "measure": pack_reference(tokenizer, [t for t, a in zip(texts, in_fit, strict=True) if not a], seq_len,
                                      "reference's measure half")}


TOKENIZER_RECIPE = "byte-level BPE, all 256 bytes, EOS id 0"
"""Part of a tokenizer's cache key: change it whenever `train_bpe_tokenizer` changes what it trains."""


def tokenizer_sample_key(sample: list[str], vocab_size: int) -> str:
    """What a trained tokenizer is a function of: the sample's exact texts in order, the vocabulary size,
    the recipe and the tokenizers version (BPE training is deterministic for a given input)."""
    digest = hashlib.sha256(json.dumps([TOKENIZER_RECIPE, vocab_size, metadata.version("tokenizers")]).encode())
    for text in sample:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()


def cached_tokenizer(con, sample: list[str], vocab_size: int, path: Path) -> tuple[Tokenizer, str, bool]:
    """(tokenizer, sha256 of its file, reused): the tokenizer an earlier run trained on this very sample,
    else a new one, stored by sample key. Either way its file is written to `path`."""
    key = tokenizer_sample_key(sample, vocab_size)
    stored = db.records(con, "get_tokenizer", {"sample_key": key})
    if stored:
        tokenizer_hash, text = stored[0].tokenizer_hash, stored[0].tokenizer_json
    else:
        save_tokenizer(train_bpe_tokenizer(sample, vocab_size), path)
        text = path.read_text(encoding="utf-8")
        tokenizer_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        db.run(con, "insert_tokenizer", {"sample_key": key, "tokenizer_hash": tokenizer_hash, "tokenizer_json": text})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return Tokenizer.from_str(text), tokenizer_hash, bool(stored)


def count_new_tokens(con, run_id: str, tokenizer: Tokenizer, tokenizer_hash: str) -> int:
    """Count the tokens of the run's documents whose exact text has no count under this tokenizer yet, add
    them to `token_counts`, and return how many were counted.

    One streamed query (a keyset page per call would rehash every remaining text per page); the small
    (text_hash, n_tokens) results are inserted once the stream is read, as DuckDB cannot write on a
    connection while it streams.
    """
    hashes, counts = [], []
    for batch in db.arrow_reader(con, "documents_to_count", {"run_id": run_id, "tokenizer_hash": tokenizer_hash},
                                 batch_rows=TOKEN_PAGE):
        hashes.append(batch.column("text_hash"))
        counts.append(pa.array(count_tokens(tokenizer, batch.column("text").to_pylist()), pa.int32()))
    new = sum(len(c) for c in counts)
    if new:
        db.insert_arrow(con, "insert_token_counts", pa.table({
            "text_hash": pa.concat_arrays(hashes), "tokenizer_hash": pa.array([tokenizer_hash] * new),
            "n_tokens": pa.concat_arrays(counts)}))
    return new


def train_tokenizer(settings: Settings, pool: Filtered | Ingested, reference: ReferenceSet) -> Tokenized:
    """Train (or reuse) the proxy BPE on a seeded sample of the pool, count every document's tokens (or reuse
    the counts), pack the reference."""
    cfg, run_id = settings.proxy, pool.run_id
    folder = settings.stage_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    path, reference_path = folder / "tokenizer.json", folder / "reference_tokens.safetensors"
    with db.connect(settings.database) as con:
        sample = store.tokenizer_sample(con, run_id, settings.seed, cfg.tokenizer_max_docs)
        with db.transaction(con):
            tokenizer, tokenizer_hash, reused = cached_tokenizer(con, sample, cfg.vocab_size, path)
            new = count_new_tokens(con, run_id, tokenizer, tokenizer_hash)
            db.run(con, "update_token_counts_from_cache", {"run_id": run_id, "tokenizer_hash": tokenizer_hash})
        totals = db.records(con, "run_token_total", {"run_id": run_id})[0]
        rows = reference_rows(tokenizer, store.reference_documents(con, run_id), cfg.seq_len, settings.seed)
        save_token_rows(reference_path, rows)
    return Tokenized(run_id, str(path), str(reference_path), int(rows["rows"].shape[0]), tokenizer.get_vocab_size(),
                     int(totals.tokens or 0), reused, int(totals.documents) - new, new)


tokenizer_task = task(train_tokenizer, name="tokenizer", cache_policy=STAGE_CACHE, persist_result=True)
