"""The one record type ingest streams: a raw record as read, or a bad one with the reason it is quarantined.

Readers yield these, the repeat caches re-address them and cleaning turns a `RawRecord` into a document;
keeping them here lets each of those modules import the types without importing each other.
"""

from __future__ import annotations

import json
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
    # invalid_json | not_utf8 | missing_text | wrong_type | bad_id | empty_text | too_long | duplicate_id  (a record)
    # bad_file | wrong_schema | not_utf8  (a whole file, or the rest of it from `locator` on)
    reason: str
    detail: str
    excerpt: str


Item = RawRecord | BadRecord


@dataclass(frozen=True, slots=True)
class UnreadableValue:
    """A field value the reader could not turn into a Python value, kept in the record in its place.

    A record is only quarantined for it when cleaning reads that field (text, id, domain): a 5,000-digit
    number in an unused `meta` field costs nothing, while Python's int() would raise on it (and take
    quadratic time). `what` says what it was, for the quarantine detail ("a number of 5,000 digits").
    """

    what: str

    def __str__(self) -> str:
        return f"<{self.what}>"


def describe(value: Any) -> str:
    """What a field value is, for a quarantine detail: `int`, `list`, or an UnreadableValue's own words."""
    return value.what if isinstance(value, UnreadableValue) else type(value).__name__


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


def render(value: Any) -> str:
    """A short rendering of a parsed value for a quarantine excerpt; never raises.

    Hostile values are nested near the recursion limit, hold numbers too long for int->str, or objects
    whose __str__ raises; each falls back to something plainer.
    """
    try:
        return json.dumps(value, ensure_ascii=False, default=str)[:1000]
    except Exception:  # noqa: BLE001 - RecursionError, ValueError (huge ints), whatever a __str__ raises
        try:
            return repr(value)[:1000]
        except Exception:  # noqa: BLE001
            return f"<{type(value).__name__} that cannot be shown>"
