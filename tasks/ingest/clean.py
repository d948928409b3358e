"""Clean one raw record into a document, or say in a quarantine row why it cannot be one.

The checks and their order (the first failing one names the reason) are listed in `tasks/ingest.py`'s
docstring; they live here so that ingest's module is about streaming, dedup and the transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.config import IngestSettings, SourceSettings
from tasks.ingest.dedup import content_hash
from tasks.ingest.records import BadRecord, RawRecord, excerpt_of, safe_str


@dataclass(frozen=True, slots=True)
class CleanDoc:
    doc_id: str
    text: str
    source: str
    domain: str
    locator: str


def bad_record(rec: RawRecord, reason: str, detail: str, excerpt: str | None = None) -> BadRecord:
    if excerpt is None:
        excerpt = _dump(rec.record)
    return BadRecord(rec.source, rec.locator, reason, safe_str(detail), excerpt_of(excerpt))


def _dump(record: dict) -> str:
    """A short rendering of a record for its quarantine excerpt; never raises (hostile records are nested)."""
    import json

    try:
        return json.dumps(record, ensure_ascii=False, default=str)[:1000]
    except (TypeError, ValueError, RecursionError):
        try:
            return repr(record)[:1000]
        except RecursionError:
            return f"<{type(record).__name__} nested too deeply to show>"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(value: str) -> int | None:
    """Index of the first character that is not valid UTF-8 (a lone surrogate), else None.

    Searched in place (`isascii` is O(1)): encoding a 50 MB text only to test it would copy it.
    """
    if value.isascii():
        return None
    found = _SURROGATE.search(value)
    return None if found is None else found.start()


def clean_record(rec: RawRecord, source: SourceSettings, ingest: IngestSettings) -> CleanDoc | BadRecord:
    """Validate and minimally normalise one record; a BadRecord says why it cannot be used."""
    record, tf = rec.record, source.text_field
    value = record.get(tf)
    if value is None:
        detail = (
            f"field {tf!r} is null"
            if tf in record
            else f"no field {tf!r} (fields: {', '.join(map(str, record)) or 'none'})"
        )
        return bad_record(rec, "missing_text", detail)
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            return bad_record(
                rec, "not_utf8", f"field {tf!r}: invalid UTF-8 at byte {exc.start}", excerpt_of(bytes(value))
            )
    if not isinstance(value, str):
        return bad_record(rec, "wrong_type", f"field {tf!r} is {type(value).__name__}, expected a string")
    text = value.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n").strip()
    if (pos := _encodable(text)) is not None:
        return bad_record(rec, "not_utf8", f"field {tf!r}: lone surrogate at character {pos}", safe_str(text[:1000]))
    if len(text) < ingest.min_chars:
        return bad_record(
            rec, "empty_text", f"{len(text)} chars after stripping (min_chars={ingest.min_chars})", value
        )
    if len(text) > ingest.max_chars:
        return bad_record(rec, "too_long", f"{len(text)} chars (max_chars={ingest.max_chars})", text)

    doc_id: str | None = None
    raw_id = record.get(source.id_field) if source.id_field else None
    if isinstance(raw_id, float) and raw_id.is_integer():
        raw_id = int(raw_id)
    if isinstance(raw_id, str) and raw_id.strip():
        doc_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        doc_id = str(raw_id)
    elif raw_id not in (None, ""):
        return bad_record(
            rec, "wrong_type", f"id field {source.id_field!r} is {type(raw_id).__name__}, expected a string"
        )
    if doc_id is None:
        doc_id = f"{rec.source}:{rec.locator}"
    elif _encodable(doc_id) is not None:
        return bad_record(rec, "not_utf8", f"id field {source.id_field!r}: lone surrogate", text)

    domain = source.domain
    if domain is None and source.domain_field:
        raw_domain = record.get(source.domain_field)
        if isinstance(raw_domain, str) and raw_domain.strip():
            domain = safe_str(raw_domain.strip())
    return CleanDoc(doc_id, text, rec.source, domain or "unknown", rec.locator)


def clean_and_hash(rec: RawRecord, source: SourceSettings, ingest: IngestSettings) -> tuple[CleanDoc | BadRecord, str]:
    doc = clean_record(rec, source, ingest)
    return doc, "" if isinstance(doc, BadRecord) else content_hash(doc.text)


def readdress_doc(doc: CleanDoc, rec: RawRecord, source: SourceSettings) -> CleanDoc:
    """`clean_record`'s result for `rec`, a byte-identical repeat of a record that gave `doc`.

    Only a doc_id taken from the locator (the record has no id: `clean_record`'s fallback) moves with it.
    """
    doc_id = doc.doc_id
    if not source.id_field or rec.record.get(source.id_field) in (None, ""):
        doc_id = f"{rec.source}:{rec.locator}"
    return CleanDoc(doc_id, doc.text, rec.source, doc.domain, rec.locator)
