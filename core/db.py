"""The DuckDB layer: every statement comes from a `.sql` file in `sql/` and every value is bound.

DuckDB allows a single writing process, so stages open a short-lived connection, do their writes in one
transaction and close it; nothing holds the file open between stages. When another process holds the file
(a second run, a long ingest), `connect` says "database busy, waiting" and retries until it is free, so
concurrent runs and readers serialise instead of failing; `INFLUMIX_DB_BUSY_TIMEOUT` (seconds, default an
hour) bounds the wait.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections import namedtuple
from collections.abc import Iterator, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

T = TypeVar("T")


@cache
def sql(name: str) -> str:
    """Text of `sql/<name>.sql`."""
    return resources.files("sql").joinpath(f"{name}.sql").read_text(encoding="utf-8")


class DatabaseBusyError(RuntimeError):
    """Another process kept the database longer than `INFLUMIX_DB_BUSY_TIMEOUT` allows."""


_LOCK_HOLDER = re.compile(r"\(PID (\d+)\)")


def busy_timeout() -> float:
    return float(os.environ.get("INFLUMIX_DB_BUSY_TIMEOUT", "3600"))


class NotADatabaseError(ValueError):
    """The file is there but is no DuckDB database (a Parquet export, a text file): a one-line user error."""


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect`, waiting while another process holds the file's lock."""
    deadline, delay, said = time.monotonic() + busy_timeout(), 0.1, 0.0
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except (duckdb.IOException, duckdb.CatalogException) as exc:
            # DuckDB says "not a valid DuckDB database file", or for a Parquet file "Cannot launch in-memory
            # database in read-only mode!": neither tells the user which file is wrong.
            if "lock" not in str(exc).lower():
                if path.is_file():
                    raise NotADatabaseError(f"{path} is not a DuckDB database (an influmix database is "
                                            "the .duckdb file of a run directory)") from None
                raise
            holder = _LOCK_HOLDER.search(str(exc))
            who = f"process {holder.group(1)}" if holder else "another process"
            now = time.monotonic()
            if now >= deadline:
                raise DatabaseBusyError(
                    f"database {path} is still held by {who} after {busy_timeout():.0f} s "
                    "(raise INFLUMIX_DB_BUSY_TIMEOUT to wait longer)") from None
            if now - said >= 60 or not said:
                print(f"influmix: database {path} busy (held by {who}), waiting", file=sys.stderr, flush=True)
                said = now
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)


@contextlib.contextmanager
def connect(db_path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the database (waiting while another process writes), creating the schema on first use."""
    path = Path(db_path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise FileNotFoundError(f"no influmix database at {path}")
    con = _open(path, read_only)
    try:
        con.execute("SET enable_progress_bar = false")
        if not read_only:
            con.execute(sql("schema"))
            if rows(con, "legacy_embeddings_table")[0][0]:
                migrate_legacy_embeddings(con)
        yield con
    finally:
        con.close()


def migrate_legacy_embeddings(con: duckdb.DuckDBPyConnection) -> None:
    """A file from before `embeddings` was a view over the cache holds it as a table, which kept the schema
    from creating the view: move its vectors into the cache (sql/migrate_legacy_embeddings.sql), then
    create the view, in one transaction."""
    with transaction(con):
        con.execute(sql("migrate_legacy_embeddings"))
        con.execute(sql("schema"))


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All-or-nothing writes: readers never see half a stage."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    else:
        con.execute("COMMIT")


def run(con: duckdb.DuckDBPyConnection, name: str, params: Sequence[Any] | dict | None = None):
    """Execute `sql/<name>.sql` with bound parameters and return the connection's cursor."""
    return con.execute(sql(name), params or [])


def rows(con: duckdb.DuckDBPyConnection, name: str, params: Sequence[Any] | dict | None = None) -> list[tuple]:
    """Plain tuples, for statements with one or two columns read right where they are written; anything
    read further away goes through `records`, so a reordered SELECT cannot silently swap fields."""
    return run(con, name, params).fetchall()


@cache
def _record_type(columns: tuple[str, ...]) -> type:
    return namedtuple("Record", columns)


def records(con: duckdb.DuckDBPyConnection, name: str, params: Sequence[Any] | dict | None = None,
            as_type: type[T] | None = None) -> list[T]:
    """Rows of `sql/<name>.sql` as named rows: fields are the statement's column names, never positions.

    With `as_type` (a NamedTuple or dataclass) every row is built by keyword from its columns, so a column
    the type does not know, or one it needs and the statement lacks, fails at once with both names.
    """
    cursor = run(con, name, params)
    columns = tuple(d[0] for d in cursor.description)
    found = cursor.fetchall()
    if as_type is None:
        row_type = _record_type(columns)
        return [row_type._make(r) for r in found]
    fields = tuple(getattr(as_type, "_fields", None) or getattr(as_type, "__dataclass_fields__", {}))
    if set(fields) != set(columns):
        raise TypeError(f"sql/{name}.sql returns columns {columns}, {as_type.__name__} has fields {fields}")
    return [as_type(**dict(zip(columns, r, strict=True))) for r in found]


def arrow(con: duckdb.DuckDBPyConnection, name: str, params: Sequence[Any] | dict | None = None) -> pa.Table:
    """Result of `sql/<name>.sql` as an Arrow table, without the extra copy a DB-API cursor makes."""
    return con.sql(sql(name), params=params or None).to_arrow_table()


def arrow_reader(con: duckdb.DuckDBPyConnection, name: str, params: Sequence[Any] | dict | None = None,
                 batch_rows: int = 10_000) -> pa.RecordBatchReader:
    """Result of `sql/<name>.sql` streamed as Arrow record batches."""
    return con.sql(sql(name), params=params or None).to_arrow_reader(batch_rows)


def arrow_pages(con: duckdb.DuckDBPyConnection, name: str, params: Sequence[Any] | dict | None,
                rows: int) -> Iterator[pa.Table]:
    """Result of `sql/<name>.sql` streamed in tables of exactly `rows` rows (the last one shorter).

    Why not the reader's own batches: stages cut work at page boundaries (shards, BLAS chunks) and need
    them to fall at the same rows on every run, whatever batch sizes DuckDB chooses to hand out.
    """
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in arrow_reader(con, name, params, batch_rows=rows):
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def insert_arrow(con: duckdb.DuckDBPyConnection, table_sql: str, batch: pa.Table) -> None:
    """Bulk-insert an Arrow table through a `sql/` statement that reads from the relation `batch`.

    The statement selects from `batch` by name (DuckDB's replacement scan), so columns are matched
    explicitly in SQL rather than by position in Python.
    """
    if batch.num_rows == 0:
        return
    con.register("batch", batch)
    try:
        con.execute(sql(table_sql))
    finally:
        con.unregister("batch")


@contextlib.contextmanager
def relation(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> Iterator[None]:
    """Make an Arrow table visible to statements as the relation `name` while the block runs.

    Why: a long list of ids is bound as a table and joined, instead of being spliced into SQL text or
    passed as a list parameter that DuckDB scans once per row.
    """
    con.register(name, table)
    try:
        yield
    finally:
        con.unregister(name)
