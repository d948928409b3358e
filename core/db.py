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
from collections.abc import Iterator, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa


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
        yield con
    finally:
        con.close()


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
    return run(con, name, params).fetchall()


def arrow(con: duckdb.DuckDBPyConnection, name: str, params: Sequence[Any] | dict | None = None) -> pa.Table:
    """Result of `sql/<name>.sql` as an Arrow table, without the extra copy a DB-API cursor makes."""
    return con.sql(sql(name), params=params or None).to_arrow_table()


def arrow_reader(con: duckdb.DuckDBPyConnection, name: str, params: Sequence[Any] | dict | None = None,
                 batch_rows: int = 10_000) -> pa.RecordBatchReader:
    """Result of `sql/<name>.sql` streamed as Arrow record batches."""
    return con.sql(sql(name), params=params or None).to_arrow_reader(batch_rows)


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
