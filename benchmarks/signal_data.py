"""The signal study's data for one seed: pool token ids, quality flags, arms, reference halves, eval sets.

Everything comes from the selection benchmark's own files (`benchmarks.selection_data.prepare`: the same
visible / held-out reference split and held-out pool documents) and is cached under the work folder:
token ids as one flat int32 array plus offsets (Python lists of 25M ints would take a gigabyte), arms as a
label per document. Nothing here needs the MiniLM embeddings, so the pool is the whole shared corpus.

Arms (what a bandit pulls): k-means on TF-IDF -> truncated SVD features of the words, a cheap stand-in
for the pipeline's MiniLM clusters (embedding 115k documents with MiniLM takes an hour on 2 cores).
Quality flags are the corpus README's heuristics: under 100 characters; "low stopword" = at least 30 words
and under 12% common English function words (non-English, stemmed text, lists, code); non-English by
source (`wikivital-fr`, `wikivital-es`), which the heuristic should find.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.selection_data import DataFiles, read_jsonl
from models.conditional_loss import split_halves
from models.proxy_lm import pack_sequences
from models.tokenizer import EOS_TOKEN, encode_documents, load_tokenizer, save_tokenizer, train_bpe_tokenizer

STOPWORDS = frozenset([
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "his", "how", "i", "if", "in",
    "into", "is", "it", "its", "just", "me", "more", "most", "my", "no", "not", "of", "on", "one", "only", "or",
    "other", "our", "out", "she", "so", "some", "than", "that", "the", "their", "them", "then", "there", "these",
    "they", "this", "those", "to", "up", "us", "was", "we", "were", "what", "when", "which", "who", "will",
    "with", "would", "you", "your"
])
_WORDS = re.compile(r"[A-Za-z']+")


def stopword_share(text: str) -> tuple[int, float]:
    """(number of words, share of them that are common English function words)."""
    words = [w.lower() for w in _WORDS.findall(text)]
    return len(words), (sum(w in STOPWORDS for w in words) / len(words) if words else 0.0)


@dataclass
class Pool:
    """The pool's documents (in file order) with token ids, quality flags and arms."""

    ids: list[str]
    texts: list[str]
    domains: np.ndarray
    topics: np.ndarray
    flat: np.ndarray  # all token ids, concatenated
    offsets: np.ndarray  # doc i is flat[offsets[i]:offsets[i + 1]]
    flags: dict[str, np.ndarray]
    arms: np.ndarray

    @property
    def tokens(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def probe_view(self, i: int, seq_len: int, eos: int) -> np.ndarray:
        """What a probe or the CoLoR pass sees: the first `seq_len` tokens, EOS appended if there is room."""
        ids = self.doc(i)[:seq_len]
        if len(ids) < seq_len:
            ids = np.append(ids, eos)
        return ids if len(ids) >= 2 else np.array([eos, eos], dtype=np.int32)

    def probe_views(self, seq_len: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
        """Every document's `probe_view`, concatenated, and the offsets (n + 1) into it: EmbeddingBag input."""
        parts = [self.probe_view(i, seq_len, eos) for i in range(len(self.ids))]
        return np.concatenate(parts), np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def rows(self, docs: np.ndarray, seq_len: int, eos: int) -> torch.Tensor:
        """Documents packed (in the given order) into training rows, as the evaluator trains on them."""
        rows, _ = pack_sequences([self.doc(int(i)).tolist() for i in docs], seq_len, eos)
        return rows


def quality_flags(texts: list[str], ids: list[str], topics: np.ndarray) -> dict[str, np.ndarray]:
    counts = [stopword_share(t) for t in texts]
    n_words = np.array([c[0] for c in counts])
    share = np.array([c[1] for c in counts])
    return {
        "short": np.array([len(t) < 100 for t in texts]),
        "low_stopword": (n_words >= 30) & (share < 0.12),
        "non_english": np.array([i.startswith(("wikivital-fr", "wikivital-es")) for i in ids]),
        "spam": topics == "spam",
        "headline": np.array([i.startswith("scattertext-guardianheadline") for i in ids]),
        "under_100_words": n_words < 100,
    }


def cluster_arms(texts: list[str], k: int, seed: int) -> np.ndarray:
    """k-means (k arms) on L2-normalised 64-d truncated SVD of sublinear TF-IDF word features."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=5, max_features=50_000, dtype=np.float32).fit_transform(texts)
    dense = normalize(TruncatedSVD(64, random_state=seed).fit_transform(tfidf))
    return MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096).fit_predict(dense).astype(np.int32)


def load_pool(files: DataFiles, folder: Path, seed: int, vocab_size: int, tokenizer_docs: int, arms: int,
              timings: dict[str, float]):
    """The seed's pool and tokenizer (trained on a seeded sample of the pool), cached in `folder`."""
    records = [r for r in read_jsonl(files.path("pool")) if (r.get("text") or "").strip()]
    ids, texts = [str(r["id"]) for r in records], [r["text"] for r in records]
    domains = np.array([r.get("domain") or "unknown" for r in records])
    topics = np.array([str(r.get("topic")) for r in records])
    cache, tok_path = folder / "pool.npz", folder / "tokenizer.json"
    if cache.exists() and tok_path.exists():
        saved = np.load(cache)
        flat, offsets, labels = saved["flat"], saved["offsets"], saved["arms"]
    else:
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        tokenizer = train_bpe_tokenizer(random.Random(seed).sample(texts, min(tokenizer_docs, len(texts))), vocab_size)
        save_tokenizer(tokenizer, tok_path)
        parts = [np.asarray(x, dtype=np.int32) for x in encode_documents(tokenizer, texts)]
        flat = np.concatenate(parts)
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        timings["tokenizer_and_encode"] = time.perf_counter() - started
        started = time.perf_counter()
        labels = cluster_arms(texts, arms, seed)
        timings["arms"] = time.perf_counter() - started
        np.savez(cache, flat=flat, offsets=offsets, arms=labels)
    pool = Pool(ids, texts, domains, topics, flat, offsets, quality_flags(texts, ids, topics), labels)
    return pool, load_tokenizer(tok_path)


def reference_halves(files: DataFiles, tokenizer, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The visible reference's passages in two halves by source document, each packed into rows."""
    passages = list(read_jsonl(files.path("reference_visible")))
    sources = [p["id"].split("|", 1)[1].rsplit("~", 1)[0].split("#", 1)[0] for p in passages]
    in_a = split_halves(sources, seed)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    ids = encode_documents(tokenizer, [p["text"] for p in passages])
    half = [pack_sequences([x for x, a in zip(ids, in_a) if a == side], seq_len, eos)[0] for side in (True, False)]
    return half[0], half[1]


def spread_rows(rows: torch.Tensor, k: int) -> torch.Tensor:
    """`k` rows evenly spaced over `rows` (all if fewer)."""
    if k >= len(rows):
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, k).round().astype(int))]


def mixture_facts(pool: Pool, stages: list[list[int]]) -> dict[str, Any]:
    """Token shares by pool domain and the junk shares (by records and by tokens) of a method's mixtures."""
    docs = np.array([d for stage in stages for d in stage], dtype=np.int64)
    tokens = pool.tokens[docs].astype(np.float64)
    shares = {d: float(tokens[pool.domains[docs] == d].sum() / tokens.sum()) for d in sorted(set(pool.domains[docs]))}
    flags = {f"{name}_records": float(v[docs].mean()) for name, v in pool.flags.items()}
    flags.update({f"{name}_tokens": float(tokens[v[docs]].sum() / tokens.sum()) for name, v in pool.flags.items()})
    return {"documents": len(docs), "tokens": int(tokens.sum()), "tokens_per_stage":
            [int(pool.tokens[np.array(s, dtype=np.int64)].sum()) for s in stages],
            "domain_token_shares": shares, **flags}
