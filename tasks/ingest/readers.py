"""Streaming record readers for ingest (datatrove-style): each yields `RawRecord` or `BadRecord`, never raises
on a bad record.

A source (`SourceSettings`) is either a local `path` -- one file, a directory (every supported file inside,
recursively, sorted by path; hidden files skipped) or a glob -- or a Hugging Face `datasets` source (`hf`),
always streamed. Formats go by suffix (`json_readers.py`, `table_readers.py`):

* `.jsonl`, `.jsonl.gz` -- JSON lines, read as raw bytes so invalid UTF-8 is caught per line; blank lines skipped.
* `.json` -- a JSON array of objects when the first non-blank byte is `[` (decoded item by item), else JSON lines.
* `.parquet` -- read in row batches with pyarrow; only the text/id/domain columns are read.
* `.txt` -- the whole file is **one** document (its id is the file path); split paragraphs upstream if wanted.

Locators say where a record sits: `line:N` (1-based line), `item:N` (0-based array index), `row:N` (0-based
Parquet / HF row) or `file` (a `.txt` file or a whole-file failure).

Two kinds of failure, deliberately treated differently:

* A **source** that cannot be resolved (missing path, a directory or glob with no supported files, an
  unsupported file type, a HF dataset that cannot be loaded) raises `IngestError`, a one-line user error
  naming the source, before any work: it is a typo in the config, and running on without it would
  silently produce a different corpus. A HF stream that loses its connection mid-way raises too (the
  ingest task retries it).
* A **file** of a resolved source that turns out unusable while reading (unreadable, not gzip, truncated or
  corrupt compression, not Parquet, Parquet without the text column, UTF-16/UTF-32 text) becomes one
  quarantined item -- reason `bad_file`, `wrong_schema` or `not_utf8`, locator `file` or the line/row where
  reading broke -- and reading goes on with the next file, keeping the records read before the failure
  (except from a gzip file that fails its integrity check: `ingest.corrupt_gzip`, see `files.py`). One
  broken file in a 1000-file dump should cost that file, not the run; `ingest_corpus` still fails with one
  clear line when nothing usable is left.

Hostile records never raise either (`json_readers.py`): deeply nested JSON is `invalid_json`, anything but an
object is `wrong_type`, outsized numbers are kept as `UnreadableValue`s, and excerpts are cut from the raw
bytes before decoding so a 50 MB line is not copied again just to show its first 200 characters.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain, islice
from pathlib import Path

from core.config import SourceSettings
from core.sources import IngestError, resolve_paths
from tasks.ingest.files import (
    READ_ERRORS,
    bad_file,
    corrupt_gzip_file,
    foreign_encoding,
    gzip_corruption,
    is_gzip,
    not_utf8_file,
    open_binary,
)
from tasks.ingest.json_readers import read_json, read_json_lines, read_text
from tasks.ingest.records import BadRecord, Item, RawRecord, safe_str
from tasks.ingest.table_readers import read_hf, read_parquet, source_label

__all__ = ["BadRecord", "Item", "RawRecord", "iter_source", "read_file", "source_label"]

TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".txt")


def _head(path: Path) -> bytes:
    with open_binary(path) as fh:
        return fh.read(4096)


def _items(path: Path, source: str, settings: SourceSettings) -> Iterator[Item]:
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return read_json_lines(path, source)
    if name.endswith(".json"):
        return read_json(path, source)
    if name.endswith(".parquet"):
        return read_parquet(path, source, settings)
    if name.endswith(".txt"):
        return read_text(path, source, settings)
    raise IngestError(f"source {source}: unsupported file type")


def read_file(path: Path, settings: SourceSettings, corrupt_gzip: str = "drop") -> Iterator[Item]:
    """Every item of one resolved file; a file that cannot be opened or read at all is one `bad_file` item.

    `corrupt_gzip` ("drop" | "keep") is `ingest.corrupt_gzip`: what a .gz file that fails its integrity
    check gives, none of its records or those read before the error.
    """
    source = safe_str(str(path))
    items = _items(path, source, settings)
    try:
        if corrupt_gzip == "drop" and is_gzip(path):
            why = gzip_corruption(path)
            if why is not None:
                yield corrupt_gzip_file(source, why)
                return
        if path.name.endswith(TEXT_SUFFIXES):
            encoding = foreign_encoding(_head(path))
            if encoding is not None:
                yield not_utf8_file(source, encoding)
                return
        yield from items
    except READ_ERRORS as exc:  # failed to open, or before the reader's own line/row tracking
        yield bad_file(source, "file", exc)


def iter_source(settings: SourceSettings, paths: list[Path] | None = None, corrupt_gzip: str = "drop") -> Iterator[Item]:
    """Every record of one source, in file order, capped at `max_records` (counting bad records too).

    `paths` (from `resolve_paths`) can be passed to resolve a path source up front, before any writing.
    """
    if settings.hf is not None:
        items: Iterator[Item] = read_hf(settings)
    else:
        files = paths if paths is not None else resolve_paths(settings)
        items = chain.from_iterable(read_file(path, settings, corrupt_gzip) for path in files)
    return items if settings.max_records is None else islice(items, settings.max_records)
