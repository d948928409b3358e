"""A byte-level BPE tokenizer trained on the pool itself.

Why our own tokenizer: the proxy LM is trained from scratch on the curated pool, so a small vocabulary fitted
to that pool (a few thousand merges) keeps the embedding matrix, and hence the proxy, small. Byte-level BPE
never produces an unknown token, so junk (emails, URLs, non-English text) still tokenizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
"""Separates documents in packed training rows; it is the tokenizer's id 0 (the proxy LM's bos/eos id)."""


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with `EOS_TOKEN` as id 0 on `texts` (an iterator is consumed once)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],  # first special token gets id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.token_to_id(EOS_TOKEN) != 0:  # would silently break packing and the model's eos id
        raise RuntimeError(f"{EOS_TOKEN} did not get id 0")
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write the tokenizer as one `tokenizer.json` file (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer written by `save_tokenizer`."""
    return Tokenizer.from_file(str(path))


def encode_documents(tok: Tokenizer, texts: list[str], batch_size: int = 1000) -> list[list[int]]:
    """Token ids of each text (no EOS added: packing adds it). Batched so the Rust side uses all cores."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), batch_size):
        ids.extend(
            enc.ids for enc in tok.encode_batch(texts[start : start + batch_size], add_special_tokens=False)
        )
    return ids


def count_tokens(tok: Tokenizer, texts: list[str], batch_size: int = 1000) -> list[int]:
    """Number of tokens of each text: what token budgets of a mixture are counted in."""
    return [len(ids) for ids in encode_documents(tok, texts, batch_size)]
