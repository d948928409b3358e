"""JSON lines, JSON arrays and plain text files, read so that no single line or value can raise.

What can go wrong inside one line, and what it becomes:

* bytes that are not UTF-8 -> `not_utf8` (the detail names the byte, and says when it looks like Latin-1 /
  cp1252, or like UTF-16 without a byte-order mark);
* not JSON, or nested past Python's recursion limit -> `invalid_json`;
* a number literal longer than Python's int-from-string limit (4,300 digits, `sys.get_int_max_str_digits`),
  which `json.loads` would raise on (ValueError) -> parsed as an `UnreadableValue` in its place, so the
  record is only quarantined when cleaning reads that field;
* `NaN`, `Infinity` and out-of-range floats (`1e999` is inf) are floats; cleaning rejects them where a string
  is wanted;
* a UTF-8 byte-order mark starts a line (files concatenated with `cat`) -> dropped, as on line 1.

A whole file that starts with a UTF-16/UTF-32 byte-order mark is one `not_utf8` row (see `readers.py`).
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.config import SourceSettings
from tasks.ingest.files import READ_ERRORS, bad_file, open_binary
from tasks.ingest.records import (
    EXCERPT_CHARS,
    BadRecord,
    Item,
    RawRecord,
    UnreadableValue,
    describe,
    excerpt_of,
    render,
    safe_str,
)
from tasks.ingest.repeats import LineCache

UTF8_BOM = codecs.BOM_UTF8
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


def _parse_int(digits: str) -> int | UnreadableValue:
    """`int(digits)`, or an UnreadableValue past the interpreter's digit limit (int() would raise)."""
    limit = sys.get_int_max_str_digits()
    n = len(digits) - digits.startswith("-")
    if limit and n > limit:
        return UnreadableValue(f"a number of {n:,} digits")
    return int(digits)


def parse_json(text: str) -> Any:
    """`json.loads` that never raises on a number; raises ValueError / RecursionError on bad JSON."""
    return json.loads(text, parse_int=_parse_int)


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    byte = raw[exc.start]
    detail = f"invalid UTF-8 at byte {exc.start} (0x{byte:02X})"
    if raw.count(b"\x00") * 3 >= len(raw):
        return f"{detail}: the line is mostly NUL bytes, UTF-16 without a byte-order mark? influmix reads UTF-8"
    if byte >= 0x80:
        return f"{detail}: Latin-1 / cp1252 text? re-encode the file as UTF-8"
    return detail


def decode_object(raw: bytes, source: str, locator: str) -> Item:
    """One JSON value from raw bytes -> RawRecord if it is an object, else a BadRecord."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord(source, locator, "not_utf8", _not_utf8(raw, exc), excerpt_of(raw))
    try:
        value = parse_json(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        detail = safe_str(str(exc))[:500]
        if "\x00" in text:
            detail += " (the line holds NUL bytes: UTF-16 without a byte-order mark?)"
        return BadRecord(source, locator, "invalid_json", detail, excerpt_of(text))
    return as_record(value, source, locator, text)


def as_record(value: Any, source: str, locator: str, raw: str | None = None) -> Item:
    if isinstance(value, dict):
        return RawRecord(source, locator, value)
    shown = raw if raw is not None else render(value)
    detail = f"record is {describe(value)}, expected an object"
    return BadRecord(source, locator, "wrong_type", detail, excerpt_of(shown))


def read_json_lines(path: Path, source: str) -> Iterator[Item]:
    """One item per non-blank line; a read error (truncated .gz, I/O error) ends the file as `bad_file`."""
    number, seen = 0, LineCache()
    with open_binary(path) as fh:
        try:
            for line in fh:
                number += 1
                locator = f"line:{number}"
                repeat = seen.get(line, source, locator)  # a byte-identical line is not parsed again
                if repeat is not None:
                    yield repeat
                    continue
                raw = line.removeprefix(UTF8_BOM)
                if raw.strip():
                    yield seen.put(line, decode_object(raw, source, locator))  # JSON allows the newline
        except READ_ERRORS as exc:
            yield bad_file(source, f"line:{number + 1}" if number else "file", exc)


def _first_byte(path: Path) -> bytes:
    with open_binary(path) as fh:
        head = fh.read(4096).removeprefix(UTF8_BOM)
        while head and not head.strip():
            head = fh.read(4096)
        return head.lstrip()[:1]


def _array_break(text: str, pos: int, index: int, source: str, why: str) -> BadRecord:
    detail = safe_str(f"array item {index}: {why}; the rest of the array is not read")[:500]
    return BadRecord(source, f"item:{index}", "invalid_json", detail, excerpt_of(text[pos: pos + EXCERPT_CHARS]))


def read_array(text: str, source: str) -> Iterator[Item]:
    """The items of a JSON array, decoded one at a time so that a broken item keeps the ones before it.

    After a broken item the array's structure is lost (where does it end?), so the rest is one
    `invalid_json` row at that item, like a file that breaks while being read.
    """
    decoder = json.JSONDecoder(parse_int=_parse_int)
    pos, index = _WHITESPACE.match(text, text.index("[") + 1).end(), 0
    if text.startswith("]", pos):
        pos = _WHITESPACE.match(text, pos + 1).end()
        if pos < len(text):
            yield _array_break(text, pos, 0, source, "extra data after the array")
        return
    while True:
        try:
            value, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            yield _array_break(text, pos, index, source, str(exc))
            return
        yield as_record(value, source, f"item:{index}")
        index += 1
        pos = _WHITESPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _WHITESPACE.match(text, pos + 1).end()
            continue
        if text.startswith("]", pos):
            pos = _WHITESPACE.match(text, pos + 1).end()
            if pos < len(text):
                yield _array_break(text, pos, index, source, "extra data after the array")
            return
        yield _array_break(text, pos, index, source, "expected ',' or ']' after the previous item")
        return


def read_json(path: Path, source: str) -> Iterator[Item]:
    """A JSON array of objects (decoded item by item) when the file starts with `[`, else JSON lines."""
    if _first_byte(path) != b"[":
        yield from read_json_lines(path, source)
        return
    raw = path.read_bytes().removeprefix(UTF8_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield BadRecord(source, "file", "not_utf8", _not_utf8(raw, exc), excerpt_of(raw))
        return
    yield from read_array(text, source)


def read_text(path: Path, source: str, settings: SourceSettings) -> Iterator[Item]:
    """The whole file is one document; its id is the file path."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield BadRecord(source, "file", "not_utf8", _not_utf8(raw, exc), excerpt_of(raw))
        return
    record: dict[str, Any] = {settings.text_field: text}
    if settings.id_field:
        record[settings.id_field] = source
    yield RawRecord(source, "file", record)
