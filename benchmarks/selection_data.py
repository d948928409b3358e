"""The selection benchmark's data: the pool the selectors draw from and what only the evaluator may see.

From the corpus and its reference set this writes, once per work folder:

* `reference_visible.jsonl.gz`: the half of the reference the selectors may use (DSIR's target, the
  pipeline's probe reference), as shuffled ~`passage_words`-word passages. Why passages: the pipeline's
  probe loss reads the first `probe.reference_sequences` packed rows by reference id, so whole documents in
  id order would make its target two or three Wikipedia articles; shuffled passages make it a sample of the
  whole visible half.
* `reference_heldout.jsonl.gz`: the other half, evaluation only. The split is by source document (chunks
  `id#k` of one document stay together) and within each domain, so both halves hold wiki and news alike.
* `pool.jsonl.gz`: the corpus minus `pool_heldout_per_domain` documents of each domain, optionally cut to
  its first `pool_max_records` records (the corpus is shuffled, so a prefix is a mix of all domains).
* `pool_heldout.jsonl.gz`: those held-out pool documents, for the per-domain held-out loss.

A second kind of target (`target_domain`): instead of the reference file, `target_documents` source documents
of one pool domain (whole documents, chunks together, at least `TARGET_MIN_CHARS` characters) are taken out of
the pool and split into the visible and held-out halves the same way, so a method is judged on a target it
was not tuned to, whose documents it can never select.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILES = ("pool", "pool_heldout", "reference_visible", "reference_heldout")
TARGET_MIN_CHARS = 400


@dataclass
class DataFiles:
    """Where the benchmark's four data files are, plus the visible reference as whole documents."""

    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.jsonl.gz"


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as gzipped JSON lines (level 1: these files are rewritten per work folder, not shipped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def _rank(key: str, seed: int) -> str:
    """A seeded, stable pseudo-random sort key: the same split on every machine and Python version."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split_reference(records: list[dict[str, Any]], heldout_fraction: float, seed: int
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(visible, held-out) reference records: per domain, whole source documents go to one side."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        groups[record.get("domain") or "unknown"][str(record["id"]).split("#", 1)[0]].append(record)
    visible, heldout = [], []
    for domain in sorted(groups):
        bases = sorted(groups[domain], key=lambda base: _rank(base, seed))
        n_held = round(heldout_fraction * len(bases)) if len(bases) > 1 else 0
        for i, base in enumerate(bases):
            (heldout if i < n_held else visible).extend(groups[domain][base])
    return visible, heldout


def passages(records: list[dict[str, Any]], words: int, seed: int) -> list[dict[str, Any]]:
    """Records cut into ~`words`-word passages, shuffled, with ids that sort in the shuffled order."""
    pieces = []
    for record in records:
        tokens = record["text"].split()
        for k, start in enumerate(range(0, len(tokens), words)):
            pieces.append({**record, "id": f"{record['id']}~{k}", "text": " ".join(tokens[start:start + words])})
    pieces.sort(key=lambda r: _rank(r["id"], seed))
    return [{**r, "id": f"{i:06d}|{r['id']}"} for i, r in enumerate(pieces)]


def target_from_pool(records: list[dict[str, Any]], domain: str, documents: int, seed: int
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(target records, the rest of the pool): `documents` whole source documents of `domain`, seeded."""
    base = {i: str(r["id"]).split("#", 1)[0] for i, r in enumerate(records)}
    size: dict[str, int] = defaultdict(int)
    for i, record in enumerate(records):
        if (record.get("domain") or "unknown") == domain:
            size[base[i]] += len(record.get("text") or "")
    chosen = set(sorted((b for b, n in size.items() if n >= TARGET_MIN_CHARS), key=lambda b: _rank(b, seed))[:documents])
    if not chosen:
        raise ValueError(f"no {domain} documents of at least {TARGET_MIN_CHARS} characters for the target")
    return ([r for i, r in enumerate(records) if base[i] in chosen],
            [r for i, r in enumerate(records) if base[i] not in chosen])


def prepare(corpus: Path, reference: Path, folder: Path, heldout_fraction: float, split_seed: int,
            pool_heldout_per_domain: int, pool_max_records: int | None, passage_words: int,
            target_domain: str | None = None, target_documents: int = 300) -> DataFiles:
    """Write the four files into `folder` unless a previous call with the same arguments already did."""
    files = DataFiles(folder)
    stamp = folder / "data.json"
    args = {"corpus": str(corpus), "reference": str(reference), "heldout_fraction": heldout_fraction,
            "split_seed": split_seed, "pool_heldout_per_domain": pool_heldout_per_domain,
            "pool_max_records": pool_max_records, "passage_words": passage_words}
    if target_domain:
        args.update(target_domain=target_domain, target_documents=target_documents)
    if stamp.exists() and json.loads(stamp.read_text()).get("args") == args and all(
            files.path(n).exists() for n in FILES):
        return files
    records = []
    for i, record in enumerate(read_jsonl(corpus)):
        if pool_max_records and i >= pool_max_records:
            break
        records.append(record)
    if target_domain:
        target, records = target_from_pool(records, target_domain, target_documents, split_seed)
    else:
        target = list(read_jsonl(reference))
    visible, heldout = split_reference(target, heldout_fraction, split_seed)
    counts = {"reference_visible_documents": len(visible), "reference_heldout_documents": len(heldout)}
    counts["reference_visible"] = write_jsonl(files.path("reference_visible"), passages(visible, passage_words,
                                                                                         split_seed))
    write_jsonl(files.path("reference_heldout"), heldout)

    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        if len(record.get("text") or "") >= 200:
            by_domain[record.get("domain") or "unknown"].append(i)
    held = {i for domain, rows in by_domain.items()
            for i in sorted(rows, key=lambda i: _rank(str(records[i]["id"]), split_seed))[:pool_heldout_per_domain]}
    counts["pool_heldout"] = write_jsonl(files.path("pool_heldout"), (records[i] for i in sorted(held)))
    counts["pool"] = write_jsonl(files.path("pool"), (r for i, r in enumerate(records) if i not in held))
    stamp.write_text(json.dumps({"args": args, "counts": counts}, indent=1))
    return files


def visible_documents(files: DataFiles) -> list[str]:
    """The visible reference as whole documents again (DSIR fits its target n-gram model on these)."""
    parts: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for record in read_jsonl(files.path("reference_visible")):
        doc, _, k = record["id"].split("|", 1)[1].rpartition("~")
        parts[doc].append((int(k), record["text"]))
    return [" ".join(text for _, text in sorted(parts[doc])) for doc in sorted(parts)]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z]{3,}")


def cloze_items(texts: list[str], n_items: int, seed: int, min_context_words: int = 20) -> list[tuple[str, str]]:
    """LAMBADA-style (context, target word) pairs: the last word of a sentence, given all text before it.

    Targets are alphabetic words of 3+ letters ending a sentence with at least `min_context_words` words
    before them in the document; at most one item per sentence, a seeded sample of `n_items` over all
    held-out reference documents. The context keeps everything up to the target word; the evaluator cuts
    it from the left to fit the model's window.
    """
    candidates = []
    for text in texts:
        offset = 0
        for sentence in _SENTENCE_END.split(text):
            start = text.find(sentence, offset)
            offset = start + len(sentence)
            words = sentence.rstrip(".!?\"')] ").split()
            if not words or not _WORD.fullmatch(words[-1]):
                continue
            end = start + sentence.rstrip(".!?\"')] ").rfind(words[-1])
            context = text[:end].rstrip()
            if len(context.split()) >= min_context_words:
                candidates.append((context, words[-1]))
    rng = random.Random(seed)
    return rng.sample(candidates, min(n_items, len(candidates)))
