"""Streaming record readers for ingest (datatrove-style): each yields `RawRecord` or `BadRecord`, never raises
on a bad record.

A source (`SourceSettings`) is either a local `path` -- one file, a directory (every supported file inside,
recursively, sorted by path; hidden files skipped) or a glob -- or a Hugging Face `datasets` source (`hf`),
always streamed. Formats go by suffix:

* `.jsonl`, `.jsonl.gz` -- JSON lines, read as raw bytes so invalid UTF-8 is caught per line; blank lines skipped.
* `.json` -- a JSON array of objects when the first non-blank byte is `[` (parsed whole), else JSON lines.
* `.parquet` -- read in row batches with pyarrow; only the text/id/domain columns are read.
* `.txt` -- the whole file is **one** document (its id is the file path); split paragraphs upstream if wanted.

Locators say where a record sits: `line:N` (1-based line), `item:N` (0-based array index), `row:N` (0-based
Parquet / HF row) or `file` (a `.txt` file or a whole-file failure).

Two kinds of failure, deliberately treated differently:

* A **source** that cannot be resolved (missing path, a directory or glob with no supported files, an
  unsupported file type, a HF dataset that cannot be loaded) raises `IngestError`, a one-line user error
  naming the source, before any work: it is a typo in the config, and running on without it would
  silently produce a different corpus. A HF stream that breaks mid-way raises too (mostly the network:
  the ingest task retries it).
* A **file** of a resolved source that turns out unusable while reading (unreadable, not gzip, truncated or
  corrupt compression, not Parquet, Parquet without the text column) becomes one quarantined item --
  reason `bad_file` or `wrong_schema`, locator `file` or the line/row where reading broke -- and reading
  goes on with the next file, keeping the records read before the failure. One broken file in a
  1000-file dump should cost that file, not the run; `ingest_corpus` still fails with one clear line
  when nothing usable is left.

Hostile records never raise either: deeply nested JSON (RecursionError) is `invalid_json`, anything but
an object is `wrong_type`, and excerpts are cut from the raw bytes before decoding so a 50 MB line is not
copied again just to show its first 200 characters.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Any

from core.config import SourceSettings
from core.sources import IngestError, resolve_paths
from tasks.ingest.records import BadRecord, Item, RawRecord, excerpt_of, safe_str
from tasks.ingest.repeats import LineCache

PARQUET_BATCH_ROWS = 1024
# What reading a damaged or vanished file raises (gzip.BadGzipFile is an OSError; pyarrow's are added lazily).
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)


def bad_file(source: str, locator: str, exc: BaseException) -> BadRecord:
    """The quarantine item for a file that broke while being read: what was read before it is kept."""
    where = "file unreadable" if locator == "file" else f"reading stopped at {locator}"
    return BadRecord(source, locator, "bad_file", f"{where}: {_one_line(exc)}", "")


def source_label(source: SourceSettings) -> str:
    """The human name of a HF source (file sources are named by each file's path)."""
    label = f"hf:{source.hf}"
    if source.hf_config:
        label += f"/{source.hf_config}"
    return f"{label}[{source.hf_split}]"


def _decode_object(raw: bytes, source: str, locator: str) -> Item:
    """One JSON value from raw bytes -> RawRecord if it is an object, else a BadRecord."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord(source, locator, "not_utf8", f"invalid UTF-8 at byte {exc.start}", excerpt_of(raw))
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        return BadRecord(source, locator, "invalid_json", safe_str(str(exc))[:500], excerpt_of(text))
    return _as_record(value, source, locator, text)


def _as_record(value: Any, source: str, locator: str, raw: str | None = None) -> Item:
    if isinstance(value, dict):
        return RawRecord(source, locator, value)
    shown = raw if raw is not None else json.dumps(value, default=str)
    return BadRecord(
        source,
        locator,
        "wrong_type",
        f"record is {type(value).__name__}, expected an object",
        excerpt_of(shown),
    )


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_json_lines(path: Path, source: str) -> Iterator[Item]:
    """One item per non-blank line; a read error (truncated .gz, I/O error) ends the file as `bad_file`."""
    number, seen = 0, LineCache()
    with _open_binary(path) as fh:
        try:
            for line in fh:
                number += 1
                locator = f"line:{number}"
                repeat = seen.get(line, source, locator)  # a byte-identical line is not parsed again
                if repeat is not None:
                    yield repeat
                    continue
                raw = line[3:] if number == 1 and line.startswith(b"\xef\xbb\xbf") else line  # BOM
                if raw.strip():
                    yield seen.put(raw, _decode_object(raw, source, locator))  # JSON allows the newline
        except READ_ERRORS as exc:
            yield bad_file(source, f"line:{number + 1}" if number else "file", exc)


def _first_byte(path: Path) -> bytes:
    with _open_binary(path) as fh:
        head = fh.read(4096)
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:]
        while head and not head.strip():
            head = fh.read(4096)
        return head.lstrip()[:1]


def read_json(path: Path, source: str) -> Iterator[Item]:
    if _first_byte(path) != b"[":
        yield from read_json_lines(path, source)
        return
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        values = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        yield _decode_object(raw, source, "file")  # the array as a whole is not valid UTF-8 / JSON
        return
    for index, value in enumerate(values):
        yield _as_record(value, source, f"item:{index}")


def read_parquet(path: Path, source: str, settings: SourceSettings) -> Iterator[Item]:
    """Row batches of the text/id/domain columns; no text column is `wrong_schema`, a broken file `bad_file`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    errors = (*READ_ERRORS, pa.ArrowException)
    try:
        pfile = pq.ParquetFile(path)
        names = pfile.schema_arrow.names
    except errors as exc:
        yield bad_file(source, "file", exc)
        return
    if settings.text_field not in names:
        detail = (f"Parquet file has no text column {settings.text_field!r} "
                  f"(columns: {', '.join(names) or 'none'}); set `text_field` of this source")
        yield BadRecord(source, "file", "wrong_schema", safe_str(detail)[:500], "")
        return
    columns = [
        c
        for c in dict.fromkeys([settings.text_field, settings.id_field, settings.domain_field])
        if c in names
    ]
    row = 0
    try:
        for batch in pfile.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            for record in batch.to_pylist():
                yield RawRecord(source, f"row:{row}", record)
                row += 1
    except errors as exc:
        yield bad_file(source, f"row:{row}" if row else "file", exc)


def read_text(path: Path, source: str, settings: SourceSettings) -> Iterator[Item]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield BadRecord(source, "file", "not_utf8", f"invalid UTF-8 at byte {exc.start}", excerpt_of(raw))
        return
    record: dict[str, Any] = {settings.text_field: text}
    if settings.id_field:
        record[settings.id_field] = source
    yield RawRecord(source, "file", record)


def read_file(path: Path, settings: SourceSettings) -> Iterator[Item]:
    """Every item of one resolved file; a file that cannot be opened or read at all is one `bad_file` item."""
    source = safe_str(str(path))
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        items = read_json_lines(path, source)
    elif name.endswith(".json"):
        items = read_json(path, source)
    elif name.endswith(".parquet"):
        items = read_parquet(path, source, settings)
    elif name.endswith(".txt"):
        items = read_text(path, source, settings)
    else:
        raise IngestError(f"source {source}: unsupported file type")
    try:
        yield from items
    except READ_ERRORS as exc:  # failed to open, or before the reader's own line/row tracking
        yield bad_file(source, "file", exc)


def read_hf(settings: SourceSettings) -> Iterator[Item]:
    source = safe_str(source_label(settings))
    try:
        from datasets import load_dataset

        dataset = load_dataset(
            settings.hf,
            settings.hf_config,
            split=settings.hf_split,
            data_files=settings.hf_data_files,
            revision=settings.hf_revision,
            streaming=True,
        )
        rows = iter(dataset)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "cannot load this source"
        raise IngestError(
            f"source {source}: could not load Hugging Face dataset ({_one_line(exc)})"
        ) from None
    row = 0
    while True:
        try:
            example = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001
            raise IngestError(f"source {source}: reading failed at row {row} ({_one_line(exc)})") from None
        yield _as_record(example, source, f"row:{row}")
        row += 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return safe_str(f"{type(exc).__name__}: {text[0] if text else ''}")[:300]


def iter_source(settings: SourceSettings, paths: list[Path] | None = None) -> Iterator[Item]:
    """Every record of one source, in file order, capped at `max_records` (counting bad records too).

    `paths` (from `resolve_paths`) can be passed to resolve a path source up front, before any writing.
    """
    if settings.hf is not None:
        items: Iterator[Item] = read_hf(settings)
    else:
        files = paths if paths is not None else resolve_paths(settings)
        items = chain.from_iterable(read_file(path, settings) for path in files)
    return items if settings.max_records is None else islice(items, settings.max_records)
