"""Tokenizer stage: the proxy's byte-level BPE, every document's exact token count, the packed reference.

The token counts make the selector's token budget exact; the reference is packed once into rows of
`proxy.seq_len` tokens (a safetensors file beside the tokenizer), so that every later stage measures the
reference loss on the same rows without re-tokenizing or re-packing it.
"""

from __future__ import annotations

import pyarrow as pa
import torch
from prefect import task

from core import db, store
from core.artifacts import Ingested, ReferenceSet, Tokenized
from core.config import Settings
from models.proxy_lm import pack_sequences, save_token_rows
from models.tokenizer import EOS_TOKEN, count_tokens, encode_documents, save_tokenizer, train_bpe_tokenizer
from runtime.policies import STAGE_CACHE

TOKEN_PAGE = 2_000


def pack_reference(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """The reference texts as [rows, seq_len] token ids (EOS between documents)."""
    packed, _ = pack_sequences(encode_documents(tokenizer, texts), seq_len, tokenizer.token_to_id(EOS_TOKEN))
    if len(packed) == 0:
        raise ValueError("the reference set is shorter than one sequence of `proxy.seq_len` tokens")
    return packed


def train_tokenizer(settings: Settings, ingested: Ingested, reference: ReferenceSet) -> Tokenized:
    """Train the proxy BPE on a seeded sample of the pool, count every document's tokens, pack the reference."""
    cfg, run_id = settings.proxy, ingested.run_id
    folder = settings.stage_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    path, reference_path = folder / "tokenizer.json", folder / "reference_tokens.safetensors"
    with db.connect(settings.database) as con:
        tokenizer = train_bpe_tokenizer(store.tokenizer_sample(con, run_id, settings.seed, cfg.tokenizer_max_docs),
                                        cfg.vocab_size)
        save_tokenizer(tokenizer, path)
        rows = pack_reference(tokenizer, store.reference_texts(con, run_id), cfg.seq_len)
        save_token_rows(reference_path, rows)
        total = 0
        with db.transaction(con):
            for doc_ids, texts in store.document_pages(con, run_id, TOKEN_PAGE):
                counts = count_tokens(tokenizer, texts)
                total += sum(counts)
                db.insert_arrow(con, "update_token_counts", pa.table(
                    {"run_id": [run_id] * len(doc_ids), "doc_id": doc_ids, "n_tokens": pa.array(counts, pa.int32())}))
    return Tokenized(run_id, str(path), str(reference_path), int(rows.shape[0]), tokenizer.get_vocab_size(), total)


tokenizer_task = task(train_tokenizer, name="tokenizer", cache_policy=STAGE_CACHE, persist_result=True)
