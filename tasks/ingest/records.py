"""The one record type ingest streams: a raw record as read, or a bad one with the reason it is quarantined.

Readers yield these, the repeat caches re-address them and cleaning turns a `RawRecord` into a document;
keeping them here lets each of those modules import the types without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXCERPT_CHARS = 200


@dataclass(frozen=True, slots=True)
class RawRecord:
    source: str  # file path or `hf:<dataset>` the record came from
    locator: str  # where in the source: line:N, item:N, row:N or file
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadRecord:
    source: str
    locator: str
    # invalid_json | not_utf8 | missing_text | wrong_type | empty_text | too_long | duplicate_id  (a record)
    # bad_file | wrong_schema  (a whole file, or the rest of it from `locator` on)
    reason: str
    detail: str
    excerpt: str


Item = RawRecord | BadRecord


def safe_str(value: str) -> str:
    """`value` as valid UTF-8 (lone surrogates replaced), fit for a DuckDB VARCHAR."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")


def excerpt_of(raw: bytes | str) -> str:
    """The first EXCERPT_CHARS characters, cut before decoding (at most 4 bytes per character)."""
    text = raw[: EXCERPT_CHARS * 4].decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return safe_str(text[:EXCERPT_CHARS].rstrip("\r\n"))
