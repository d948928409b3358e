"""Clean one raw record into a document, or say in a quarantine row why it cannot be one.

The checks and their order (the first failing one names the reason) are listed in `tasks/ingest/__init__.py`'s
docstring; they live here so that ingest's module is about streaming, dedup and the transaction.

Visible characters: a text made only of whitespace, format characters (U+FEFF, zero-width spaces and
joiners, bidi marks: Unicode Cf), separators (Z*), control characters (Cc) and the few letters and marks
that render as nothing (Hangul fillers, variation selectors, U+2800 BRAILLE PATTERN BLANK) shows a reader
nothing, so it is `empty_text`; `ingest.min_chars` counts visible characters only. Invisible characters at
either end are stripped like whitespace. The classes come from the `regex` module (Python's `re` has no
Unicode-category classes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import regex

from core.config import IngestSettings, SourceSettings
from tasks.ingest.dedup import content_hash
from tasks.ingest.records import BadRecord, RawRecord, describe, excerpt_of, render, safe_str

MAX_ID_CHARS = 1024  # an id is a key, shown and exported with every document
MAX_DOMAIN_CHARS = 200  # a domain is a label: it names metrics and report rows
# 2**53: the largest range in which every integer is exactly a float, so a float id stands for one integer.
MAX_FLOAT_ID = 2**53
_INVISIBLE = (r"\p{Cc}\p{Cf}\p{Z}\s\u034F\u115F\u1160\u17B4\u17B5\u180B-\u180F\u2800\u3164"
              r"\uFE00-\uFE0F\uFFA0\U000E0100-\U000E01EF")
_FIRST_VISIBLE = regex.compile(f"[^{_INVISIBLE}]")
_LAST_VISIBLE = regex.compile(f"(?r)[^{_INVISIBLE}]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class CleanDoc:
    doc_id: str
    text: str
    source: str
    domain: str
    locator: str


def bad_record(rec: RawRecord, reason: str, detail: str, excerpt: Any = None) -> BadRecord:
    shown = render(rec.record) if excerpt is None else excerpt
    return BadRecord(rec.source, rec.locator, reason, safe_str(detail)[:500], excerpt_of(shown))


def _encodable(value: str) -> int | None:
    """Index of the first character that is not valid UTF-8 (a lone surrogate), else None.

    Searched in place (`isascii` is O(1)): encoding a 50 MB text only to test it would copy it.
    """
    if value.isascii():
        return None
    found = _SURROGATE.search(value)
    return None if found is None else found.start()


def strip_invisible(text: str) -> str:
    """`text` without whitespace and invisible characters at either end ("" if it has nothing visible)."""
    first = _FIRST_VISIBLE.search(text)
    if first is None:
        return ""
    last = _LAST_VISIBLE.search(text)
    return text[first.start(): last.end()]


def visible_chars(text: str, at_most: int) -> int:
    """How many visible characters `text` has, counted up to `at_most` (so a long text costs nothing)."""
    count = 0
    for _ in _FIRST_VISIBLE.finditer(text):
        count += 1
        if count >= at_most:
            break
    return count


def _codepoints(text: str) -> str:
    shown = " ".join(f"U+{ord(ch):04X}" for ch in dict.fromkeys(text[:64]))
    return shown[:120]


def _clean_text(rec: RawRecord, source: SourceSettings, ingest: IngestSettings) -> str | BadRecord:
    record, tf = rec.record, source.text_field
    value = record.get(tf)
    if value is None:
        detail = (f"field {tf!r} is null" if tf in record
                  else f"no field {tf!r} (fields: {', '.join(map(str, record)) or 'none'})")
        return bad_record(rec, "missing_text", detail)
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            return bad_record(rec, "not_utf8", f"field {tf!r}: invalid UTF-8 at byte {exc.start}", bytes(value))
    if not isinstance(value, str):
        return bad_record(rec, "wrong_type", f"field {tf!r} is {describe(value)}, expected a string")
    text = value.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    if (pos := _encodable(text)) is not None:
        return bad_record(rec, "not_utf8", f"field {tf!r}: lone surrogate at character {pos}", safe_str(text[:1000]))
    stripped = strip_invisible(text)
    visible = visible_chars(stripped, ingest.min_chars)
    if visible < ingest.min_chars:
        detail = (f"{visible} visible character{'' if visible == 1 else 's'} (min_chars={ingest.min_chars})"
                  if stripped or not text.strip()
                  else f"no visible characters, only {_codepoints(text.strip())}")
        return bad_record(rec, "empty_text", detail, value)
    if len(stripped) > ingest.max_chars:
        return bad_record(rec, "too_long", f"{len(stripped)} chars (max_chars={ingest.max_chars})", stripped)
    return stripped


def _no_id(raw: Any) -> bool:
    """A missing, null or blank id: the record's locator stands in for it."""
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _record_id(rec: RawRecord, source: SourceSettings) -> str | None | BadRecord:
    field = source.id_field
    raw = rec.record.get(field) if field else None
    if _no_id(raw):
        return None
    if isinstance(raw, float) and not isinstance(raw, bool):
        if not (raw.is_integer() and abs(raw) <= MAX_FLOAT_ID):
            return bad_record(rec, "wrong_type", f"id field {field!r} is the float {raw!r}, not an exact integer")
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)  # JSON ints are below the int->str limit (json_readers), Arrow ints are 64-bit
    if not isinstance(raw, str):
        return bad_record(rec, "wrong_type", f"id field {field!r} is {describe(raw)}, expected a string or an integer")
    if _encodable(raw) is not None:
        return bad_record(rec, "not_utf8", f"id field {field!r}: lone surrogate")
    if len(raw) > MAX_ID_CHARS:
        return bad_record(rec, "bad_id", f"id field {field!r} is {len(raw):,} characters long (at most {MAX_ID_CHARS})")
    if (found := _CONTROL.search(raw)) is not None:
        return bad_record(rec, "bad_id", f"id field {field!r} holds a control character (U+{ord(found.group()):04X})")
    return raw


def _record_domain(rec: RawRecord, source: SourceSettings) -> str | BadRecord:
    if source.domain is not None:
        return source.domain or "unknown"
    field = source.domain_field
    raw = rec.record.get(field) if field else None
    if _no_id(raw):
        return "unknown"
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)  # a category code
    if not isinstance(raw, str):
        return bad_record(rec, "wrong_type", f"domain field {field!r} is {describe(raw)}, expected a string")
    label = raw.strip()
    if _encodable(label) is not None:
        return bad_record(rec, "not_utf8", f"domain field {field!r}: lone surrogate")
    if len(label) > MAX_DOMAIN_CHARS or _CONTROL.search(label):
        return bad_record(rec, "bad_domain", f"domain field {field!r} is not a label: {len(label):,} characters"
                          f"{', with control characters' if _CONTROL.search(label) else ''} (at most {MAX_DOMAIN_CHARS})")
    return label


def clean_record(rec: RawRecord, source: SourceSettings, ingest: IngestSettings) -> CleanDoc | BadRecord:
    """Validate and minimally normalise one record; a BadRecord says why it cannot be used."""
    text = _clean_text(rec, source, ingest)
    if isinstance(text, BadRecord):
        return text
    doc_id = _record_id(rec, source)
    if isinstance(doc_id, BadRecord):
        return doc_id
    domain = _record_domain(rec, source)
    if isinstance(domain, BadRecord):
        return domain
    return CleanDoc(doc_id or f"{rec.source}:{rec.locator}", text, rec.source, domain, rec.locator)


def clean_and_hash(rec: RawRecord, source: SourceSettings, ingest: IngestSettings) -> tuple[CleanDoc | BadRecord, str]:
    doc = clean_record(rec, source, ingest)
    return doc, "" if isinstance(doc, BadRecord) else content_hash(doc.text)


def readdress_doc(doc: CleanDoc, rec: RawRecord, source: SourceSettings) -> CleanDoc:
    """`clean_record`'s result for `rec`, a byte-identical repeat of a record that gave `doc`.

    Only a doc_id taken from the locator (the record has no id: `clean_record`'s fallback) moves with it.
    """
    doc_id = doc.doc_id
    if not source.id_field or _no_id(rec.record.get(source.id_field)):
        doc_id = f"{rec.source}:{rec.locator}"
    return CleanDoc(doc_id, doc.text, rec.source, doc.domain, rec.locator)
