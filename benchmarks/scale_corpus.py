"""A synthetic corpus of any size for the scale benchmark, streamed from the shared corpus.

Why synthetic: the shared corpus has 115k records and the benchmark needs up to 1M. Replicating it verbatim
would make every record past the first pass an exact duplicate, so ingest would drop them and the later
stages would never see 1M documents. Each output record is instead one of (seeded, the same mix at every
size, so the dedup rates stay comparable across sizes):

* `distinct` (~90%): the next record of the source, verbatim on the first pass over the file; on later
  passes perturbed so that it is no longer a near duplicate of its earlier copies (~8% of words dropped,
  ~8% replaced by a word from a fixed vocabulary, two sentences swapped, a random token appended: about
  40% of its 5-word shingles survive, far below the 0.8 MinHash threshold);
* `exact` (4%): a verbatim copy of one of the last 1,000 records written (re-flowed whitespace at most),
  which ingest's content hash must drop;
* `near` (6%): a copy of a recent record with one word re-cased and about one word in 60 replaced, which
  MinHash LSH should drop when the text is long enough for the change to keep Jaccard >= 0.8.

Memory stays flat: one record in flight plus a ring of the last 1,000 texts and a 5,000-word vocabulary.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = Path("/work/shared/corpus/corpus.jsonl.gz")
SAMPLE_CORPUS = ROOT / "data" / "sample" / "corpus.jsonl.gz"
P_EXACT, P_NEAR = 0.04, 0.06
RECENT = 1_000
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def default_source() -> Path:
    """The shared corpus when this machine has it, else the sample bundled with the repository."""
    return SHARED_CORPUS if SHARED_CORPUS.exists() else SAMPLE_CORPUS


def _source_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(pass number, record) cycling over the file forever; undecodable lines are skipped."""
    passes = 0
    while True:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield passes, record
        passes += 1


def _vocabulary(path: Path, size: int = 5_000) -> list[str]:
    """The `size` most frequent words of the first few thousand records: replacement words that read as text."""
    counts: Counter[str] = Counter()
    for i, (_, record) in enumerate(_source_records(path)):
        if isinstance(record.get("text"), str):
            counts.update(record["text"].split())
        if i >= 3_000:
            break
    return [w for w, _ in counts.most_common(size)]


def perturb_distinct(text: str, rng: random.Random, vocab: list[str]) -> str:
    """Drop ~8% and replace ~8% of the words, swap two sentences, append a random token."""
    sentences = _SENTENCE.split(text)
    if len(sentences) > 2:
        i, j = rng.sample(range(len(sentences)), 2)
        sentences[i], sentences[j] = sentences[j], sentences[i]
    words = []
    for word in " ".join(sentences).split():
        u = rng.random()
        if u < 0.08:
            continue
        words.append(rng.choice(vocab) if u < 0.16 else word)
    words.append(f"v{rng.getrandbits(40):010x}")
    return " ".join(words)


def perturb_near(text: str, rng: random.Random, vocab: list[str]) -> str:
    """One word re-cased (a new content hash, the same shingles) and about one word in 60 replaced."""
    words = text.split()
    if not words:
        return text + " "
    i = rng.randrange(len(words))
    words[i] = words[i].upper() if words[i] != words[i].upper() else words[i].lower() + "x"
    for _ in range(len(words) // 60):
        words[rng.randrange(len(words))] = rng.choice(vocab)
    return " ".join(words)


def write_corpus(out: Path, n: int, source: Path | None = None, seed: int = 0) -> dict[str, int]:
    """Write `n` records to `out` (JSONL.gz, fields id/text/domain/kind), streamed; returns counts by kind."""
    source = source or default_source()
    rng = random.Random(seed)
    vocab = _vocabulary(source)
    recent: deque[tuple[str, str]] = deque(maxlen=RECENT)  # (text, domain) of records already written
    kinds: Counter[str] = Counter()
    records = _source_records(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=1) as fh:
        for i in range(n):
            u = rng.random()
            if recent and u < P_EXACT:
                kind, (text, domain) = "exact", rng.choice(recent)
                text = text.replace(" ", "  ", 1) if rng.random() < 0.5 else text
            elif recent and u < P_EXACT + P_NEAR:
                kind, (text, domain) = "near", rng.choice(recent)
                text = perturb_near(text, rng, vocab)
            else:
                passes, record = next(records)
                kind, text, domain = "distinct", record.get("text"), record.get("domain") or "unknown"
                if passes and isinstance(text, str):
                    text = perturb_distinct(text, rng, vocab)
            if isinstance(text, str):
                recent.append((text, domain))
            kinds[kind] += 1
            fh.write(json.dumps({"id": f"scale-{i:07d}", "text": text, "domain": domain, "kind": kind},
                                ensure_ascii=False) + "\n")
    return dict(sorted(kinds.items()))
