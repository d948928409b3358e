"""The DuckDB layer: every statement comes from a `.sql` file in `sql/` and every value is bound.

DuckDB allows a single writing process, so stages open a short-lived connection, do their writes in one
transaction and close it; nothing holds the file open between stages.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def connect(db_path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the database, creating the schema on first use; close it on exit."""
    path = Path(db_path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise FileNotFoundError(f"no influmix database at {path}")
    con = duckdb.connect(str(path), read_only=read_only)
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
