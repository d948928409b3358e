"""Ingest: read every source, quarantine bad records, clean, dedup (exact + MinHash near), write to DuckDB.

Streaming throughout: records flow from the readers (`tasks/ingest/readers.py`) one at a time and reach DuckDB in
Arrow batches of `ingest.batch_size`; only the content-hash set, the id map and the MinHash LSH index stay
in memory. The whole write (including removing an earlier attempt of the same run_id) is one transaction.

A file that breaks while being read is one quarantined item (`bad_file` / `wrong_schema`, see
`tasks/ingest/readers.py`) and the run goes on; a source that cannot be found is an IngestError up front, and so
is a corpus in which no document survives (after the rows are committed, so the quarantine table says why).
Byte-identical repeated lines skip parsing, cleaning and hashing (`tasks/ingest/repeats.py`), same outcome.

Per record, in order (the first failing check decides the quarantine reason):
* `missing_text` -- no `text_field` (or it is null); `wrong_type` -- text not a string (bytes are decoded; a
  number too long to convert, a Parquet value Python cannot hold, ... say what they are), record not an object;
* NUL characters are **stripped** (not quarantined); CRLF and lone CR become LF; then whitespace and invisible
  characters are stripped from both ends (`tasks/ingest/clean.py`);
* `not_utf8` -- invalid UTF-8 bytes (JSONL/.txt/.json), a UTF-16/32 file, or lone surrogates from
  `\\ud800`-style escapes (in the text, the id or the domain);
* `empty_text` -- fewer than `ingest.min_chars` *visible* characters (invisible-only text counts as empty);
  `too_long` -- more than `ingest.max_chars` characters;
* the id: a string or an integer (an integral float up to 2**53 too); blank or missing -> the locator.
  `wrong_type` for anything else (bool, list, dict, NaN, 1.5, ...), `bad_id` for more than 1024 characters
  or control characters in it;
* the domain: a string or an integer code; blank or missing -> "unknown"; `wrong_type` for anything else,
  `bad_domain` for more than 200 characters or control characters;
* `duplicate_id` -- the id was already used by a record with different text (same text: an exact duplicate).
Then exact dedup on `content_hash` (sha256 of the whitespace-collapsed text; first occurrence kept) and near
dedup (MinHash of lower-cased word `shingle_words`-grams, LSH at `near_dup_threshold`, kept if no earlier
kept document has estimated Jaccard >= the threshold). Dropped duplicates go to `duplicates`.

doc_id = the record's `id_field` value, else `<source>:<locator>`; domain = the source's fixed `domain` if
set, else the record's `domain_field`, else "unknown".
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from prefect import task
from tqdm.auto import tqdm

from core import db
from core.artifacts import Ingested, ReferenceSet
from core.config import Settings, SourceSettings
from core.faults import failpoint
from core.sources import IngestError, resolve_paths
from runtime.policies import STAGE_CACHE, retry_on_network_error
from tasks.ingest.clean import CleanDoc, bad_record, clean_and_hash, clean_record, readdress_doc
from tasks.ingest.dedup import NearDedup, content_hash
from tasks.ingest.readers import iter_source
from tasks.ingest.records import BadRecord, Item
from tasks.ingest.repeats import OutcomeCache

__all__ = ["CleanDoc", "IngestError", "clean_record", "content_hash", "ingest_corpus", "load_reference"]

log = logging.getLogger(__name__)

# Quarantine and duplicate rows are small (<1 KB), and DuckDB inserts cost ~half as much per row in batches
# of 20k as of 2k: only documents (up to max_chars each) are held to `ingest.batch_size`.
SMALL_ROW_BATCH = 20_000


def _no_documents(stats: Ingested, reasons: Counter[str], examples: dict[str, BadRecord], run_id: str,
                  database: Path) -> IngestError:
    """The one-line error for a corpus in which nothing survived: what happened to the records instead."""
    if not stats.records_read:
        return IngestError("ingest: `ingest.sources` hold no records (every file is empty or blank)")
    summary = ", ".join(f"{reason}: {n:,}" for reason, n in reasons.most_common())
    example = examples[reasons.most_common(1)[0][0]]
    return IngestError(
        f"ingest: no usable documents in `ingest.sources`: all {stats.records_read:,} records read were "
        f"quarantined ({summary}), e.g. {example.source} ({example.locator}): {example.detail}; "
        f"the quarantine table of run {run_id} in {database} lists them all"
    )


class _Buffer:
    """Rows flushed into DuckDB through `insert_arrow` every `size` rows.

    Rows are kept as tuples and turned into columns at flush: one append per row keeps a million
    duplicate rows cheap.
    """

    def __init__(self, con, statement: str, columns: list[str], size: int):
        self.con, self.statement, self.columns, self.size = con, statement, columns, size
        self.rows: list[tuple] = []

    def add(self, *values) -> None:
        self.rows.append(values)
        if len(self.rows) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            columns = zip(*self.rows, strict=True)
            db.insert_arrow(self.con, self.statement, pa.table(dict(zip(self.columns, columns, strict=True))))
            self.rows = []


def _sources(sources: list[SourceSettings], section: str) -> list[tuple[SourceSettings, list[Path] | None]]:
    """Resolve every path source before anything is written, so a typo fails fast."""
    if not sources:
        raise IngestError(
            f"no sources configured: set `{section}.sources` (a path or a Hugging Face dataset)"
        )
    return [(s, resolve_paths(s) if s.path is not None else None) for s in sources]


def check_sources(settings: Settings) -> None:
    """Fail fast, before any heavy work, on a corpus or reference source that cannot be found."""
    _sources(settings.ingest.sources, "ingest")
    _sources(settings.reference.sources, "reference")


def _records(
    sources: list[tuple[SourceSettings, list[Path] | None]], corrupt_gzip: str,
) -> Iterator[tuple[SourceSettings, Item]]:
    for source, paths in sources:
        for item in iter_source(source, paths, corrupt_gzip):
            yield source, item


def ingest_corpus(settings: Settings, run_id: str, progress: bool = True) -> Ingested:
    """Read `settings.ingest.sources` into `documents` / `quarantine` / `duplicates` for `run_id`."""
    cfg = settings.ingest
    sources = _sources(cfg.sources, "ingest")
    stats = Ingested(run_id)
    reasons: Counter[str] = Counter()
    examples: dict[str, BadRecord] = {}  # the first quarantined item per reason, for the error below
    domains: Counter[str] = Counter()
    seen_hash: dict[str, str] = {}  # content_hash -> doc_id of its first occurrence
    seen_id: dict[str, str] = {}  # doc_id -> content_hash
    near = NearDedup(cfg.near_dup_threshold, cfg.minhash_num_perm, cfg.shingle_words)
    clean = OutcomeCache(lambda rec, source: clean_and_hash(rec, source, cfg), readdress_doc)
    start = time.perf_counter()

    with db.connect(settings.database) as con, db.transaction(con):
        for statement in ("delete_run_documents", "delete_run_quarantine", "delete_run_duplicates",
                          "delete_run_filtered"):  # new documents: the filter stage judges them anew
            db.run(con, statement, [run_id])
        docs = _Buffer(
            con,
            "insert_documents",
            ["run_id", "doc_id", "text", "source", "locator", "domain", "n_chars", "content_hash"],
            cfg.batch_size,
        )
        quarantine = _Buffer(
            con,
            "insert_quarantine",
            ["run_id", "source", "locator", "reason", "detail", "excerpt"],
            max(cfg.batch_size, SMALL_ROW_BATCH),
        )
        dups = _Buffer(
            con,
            "insert_duplicates",
            ["run_id", "doc_id", "source", "duplicate_of", "kind", "similarity"],
            max(cfg.batch_size, SMALL_ROW_BATCH),
        )
        pending: list[tuple[CleanDoc, str]] = []  # passed exact dedup, waiting for a bulk MinHash

        def quarantine_item(bad: BadRecord) -> None:
            reasons[bad.reason] += 1
            examples.setdefault(bad.reason, bad)
            quarantine.add(run_id, bad.source, bad.locator, bad.reason, bad.detail, bad.excerpt)

        def drain() -> None:
            signatures = near.signatures_for([doc.text for doc, _ in pending])
            for (doc, digest), minhash in zip(pending, signatures, strict=True):
                hit = near.check_and_add(doc.doc_id, minhash)
                if hit is not None:
                    stats.near_duplicates += 1
                    dups.add(run_id, doc.doc_id, doc.source, hit[0], "near", hit[1])
                else:
                    domains[doc.domain] += 1
                    docs.add(run_id, doc.doc_id, doc.text, doc.source, doc.locator, doc.domain, len(doc.text), digest)
            pending.clear()

        bar = tqdm(desc="ingest", unit="rec", disable=None if progress else True, mininterval=0.5)
        try:
            for source, item in _records(sources, cfg.corrupt_gzip):
                stats.records_read += 1
                failpoint("ingest.record")
                bar.update()
                if isinstance(item, BadRecord):
                    quarantine_item(item)
                    continue
                doc, digest = clean(item, source)
                if isinstance(doc, BadRecord):
                    quarantine_item(doc)
                    continue
                previous = seen_id.get(doc.doc_id)
                if previous is not None and previous != digest:
                    quarantine_item(
                        bad_record(
                            item,
                            "duplicate_id",
                            f"id {doc.doc_id!r} already used by a different text",
                            doc.text,
                        )
                    )
                    continue
                if digest in seen_hash:
                    stats.exact_duplicates += 1
                    dups.add(run_id, doc.doc_id, doc.source, seen_hash[digest], "exact", 1.0)
                    continue
                seen_hash[digest] = doc.doc_id
                seen_id[doc.doc_id] = digest
                pending.append((doc, digest))
                if len(pending) >= cfg.batch_size:
                    drain()
            drain()
            for buffer in (docs, quarantine, dups):
                buffer.flush()
        finally:
            bar.close()

    stats.documents = sum(domains.values())
    stats.quarantined = sum(reasons.values())
    stats.quarantine_by_reason = dict(sorted(reasons.items()))
    stats.by_domain = dict(sorted(domains.items()))
    stats.seconds = round(time.perf_counter() - start, 3)
    log.info("ingest %s: %s", run_id, stats)
    if not stats.documents:  # after the commit, so the quarantine table shows why
        raise _no_documents(stats, reasons, examples, run_id, settings.database)
    return stats


def load_reference(settings: Settings, run_id: str) -> ReferenceSet:
    """Write up to `reference.max_documents` usable reference documents for `run_id`.

    Same readers and cleaning as ingest; bad records, repeated ids and repeated texts are skipped (counted
    in the log). Raises IngestError when no usable reference document is found.
    """
    cfg = settings.reference
    sources = _sources(cfg.sources, "reference")
    skipped: Counter[str] = Counter()
    seen_hash: set[str] = set()
    seen_id: set[str] = set()
    written = 0
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_run_reference", [run_id])
        refs = _Buffer(
            con, "insert_reference", ["run_id", "ref_id", "text", "domain"], settings.ingest.batch_size
        )
        for source, item in _records(sources, settings.ingest.corrupt_gzip):
            doc = item if isinstance(item, BadRecord) else clean_record(item, source, settings.ingest)
            if isinstance(doc, BadRecord):
                skipped[doc.reason] += 1
                continue
            digest = content_hash(doc.text)
            if doc.doc_id in seen_id or digest in seen_hash:
                skipped["duplicate"] += 1
                continue
            seen_id.add(doc.doc_id)
            seen_hash.add(digest)
            refs.add(run_id, doc.doc_id, doc.text, doc.domain)
            written += 1
            if written >= cfg.max_documents:
                break
        if written == 0:
            detail = f" (skipped: {dict(skipped)})" if skipped else ""
            raise IngestError(f"reference: no usable reference documents in reference.sources{detail}")
        refs.flush()
    if skipped:
        log.warning("reference %s: skipped %d bad records %s", run_id, sum(skipped.values()), dict(skipped))
    return ReferenceSet(run_id, written)


ingest_task = task(ingest_corpus, name="ingest", cache_policy=STAGE_CACHE, persist_result=True,
                   retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_network_error)
reference_task = task(load_reference, name="reference", cache_policy=STAGE_CACHE, persist_result=True,
                      retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_network_error)
