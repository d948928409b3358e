"""Byte-identical repeats skip the costly part of ingest, with exactly the outcome they would have without it.

Dumps repeat boilerplate records verbatim (the hostile-input suite reads a 1M-line file of one record), and
each record costs a JSON parse, cleaning and a sha256 -- about 15 µs, so 15 s per million repeats. Two
bounded caches make a repeat cost a few dict lookups:

* `LineCache` (per JSONL file, in the reader): a line seen before yields the first occurrence's item
  re-addressed to its own line; a record shares the first occurrence's dict (records are read-only).
* `OutcomeCache` (per ingest, in `ingest_corpus`): the cleaning outcome and content hash of a record dict,
  keyed by the dict's identity -- the cache holds the dict, so the identity cannot be reused -- re-addressed
  the same way.

A repeat differs from its first occurrence only in *where* it sits; the only things that depend on that are
the source/locator fields and a doc_id derived from the locator, which are re-derived. Everything after
(id collisions, exact and near dedup) runs as before. `tests/test_hostile.py` checks that ingest gives the
same tables with the caches off (`MAX_LINE_BYTES = 0`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.config import SourceSettings
from tasks.ingest.records import BadRecord, Item, RawRecord

MAX_LINE_BYTES = 16_384  # longer lines are rarely repeated verbatim and would crowd the cache out
MAX_CACHED_BYTES = 32 * 2**20  # per cache; when full it starts over (repeats cluster in practice)


def readdress(item: Item, source: str, locator: str) -> Item:
    """`item` as if it had been read at `source`/`locator`."""
    if isinstance(item, RawRecord):
        return RawRecord(source, locator, item.record)
    return BadRecord(source, locator, item.reason, item.detail, item.excerpt)


class LineCache:
    """Raw JSONL line -> the item parsed from it, for lines up to MAX_LINE_BYTES."""

    def __init__(self) -> None:
        self.items: dict[bytes, Item] = {}
        self.size = 0

    def get(self, line: bytes, source: str, locator: str) -> Item | None:
        item = self.items.get(line)
        return None if item is None else readdress(item, source, locator)

    def put(self, line: bytes, item: Item) -> Item:
        if len(line) <= MAX_LINE_BYTES:
            if self.size + len(line) > MAX_CACHED_BYTES:
                self.items.clear()
                self.size = 0
            self.items[line] = item
            self.size += len(line)
        return item


class OutcomeCache:
    """Memoises `clean(item, source) -> (CleanDoc | BadRecord, content hash)` per record dict.

    Only a dict that a `LineCache` hands out again can hit; keeping every small record's outcome is cheaper
    than telling those apart. A kept CleanDoc is re-addressed by `readdress_doc(doc, item, source)`.
    """

    def __init__(
        self,
        clean: Callable[[RawRecord, SourceSettings], tuple[Any, str]],
        readdress_doc: Callable[[Any, RawRecord, SourceSettings], Any],
    ) -> None:
        self.clean, self.readdress_doc = clean, readdress_doc
        self.outcomes: dict[int, tuple[dict, SourceSettings, Any, str]] = {}
        self.size = 0

    def __call__(self, item: RawRecord, source: SourceSettings) -> tuple[Any, str]:
        hit = self.outcomes.get(id(item.record))
        if hit is not None and hit[0] is item.record and hit[1] is source:
            outcome, digest = hit[2], hit[3]
            if isinstance(outcome, BadRecord):
                return readdress(outcome, item.source, item.locator), digest
            return self.readdress_doc(outcome, item, source), digest
        outcome, digest = self.clean(item, source)
        cost = _approx_bytes(item.record)
        if cost <= MAX_LINE_BYTES:
            if self.size + cost > MAX_CACHED_BYTES:
                self.outcomes.clear()
                self.size = 0
            self.outcomes[id(item.record)] = (item.record, source, outcome, digest)
            self.size += cost
        return outcome, digest


def _approx_bytes(record: dict) -> int:
    """A cheap size estimate of a record: its string values' lengths plus a little per field."""
    return sum(len(v) if isinstance(v, str) else 16 for v in record.values()) + 32 * len(record)
