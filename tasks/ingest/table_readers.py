"""Row sources: Parquet files (pyarrow, in row batches) and Hugging Face `datasets` streams.

A value pyarrow cannot hand to Python -- a timestamp or date outside Python's datetime range, a time zone
this machine does not know -- raises for the whole batch in `to_pylist`; here only that cell becomes an
`UnreadableValue` (cleaning quarantines the row if it reads the cell, as `wrong_type`), and the rest of the
batch is read as usual. Any other Arrow type reaches cleaning as its Python value (dict, list, bytes,
Decimal, ...), which says what it is when it is not a string.

A Hugging Face stream that breaks mid-way cannot be resumed after the row that broke it: a connection error
raises IngestError (the ingest task retries it), any other error is one `bad_file` row at that row, and the
rows read before it are kept, as for a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.config import SourceSettings
from core.sources import IngestError
from runtime.policies import NETWORK_ERRORS
from tasks.ingest.files import READ_ERRORS, bad_file, one_line
from tasks.ingest.json_readers import as_record
from tasks.ingest.records import BadRecord, Item, RawRecord, UnreadableValue, safe_str

PARQUET_BATCH_ROWS = 1024


def source_label(source: SourceSettings) -> str:
    """The human name of a HF source (file sources are named by each file's path)."""
    label = f"hf:{source.hf}"
    if source.hf_config:
        label += f"/{source.hf_config}"
    return f"{label}[{source.hf_split}]"


def column_values(column) -> list[Any]:
    """A pyarrow column as Python values; a cell that cannot convert is an UnreadableValue, not an error."""
    try:
        return column.to_pylist()
    except Exception:  # noqa: BLE001 - OverflowError, ValueError, KeyError (time zones), ArrowException
        values: list[Any] = []
        for index in range(len(column)):
            try:
                values.append(column[index].as_py())
            except Exception as exc:  # noqa: BLE001
                values.append(UnreadableValue(f"a Parquet {column.type} value Python cannot hold ({one_line(exc)})"))
        return values


def _schema_problem(names: list[str], text_field: str) -> str | None:
    if text_field not in names:
        return (f"Parquet file has no text column {text_field!r} "
                f"(columns: {', '.join(names) or 'none'}); set `text_field` of this source")
    if names.count(text_field) > 1:
        return f"Parquet file has {names.count(text_field)} columns named {text_field!r}"
    return None


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
    problem = _schema_problem(names, settings.text_field)
    if problem:
        yield BadRecord(source, "file", "wrong_schema", safe_str(problem)[:500], "")
        return
    wanted = dict.fromkeys([settings.text_field, settings.id_field, settings.domain_field])
    columns = [c for c in wanted if c in names and names.count(c) == 1]
    row = 0
    try:
        for batch in pfile.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            cells = [column_values(batch.column(i)) for i in range(batch.num_columns)]
            for values in zip(*cells, strict=True):
                yield RawRecord(source, f"row:{row}", dict(zip(batch.schema.names, values, strict=True)))
                row += 1
    except errors as exc:
        yield bad_file(source, f"row:{row}" if row else "file", exc)


def _is_network_error(exc: BaseException) -> bool:
    """Connection trouble somewhere in the exception's chain (datasets wraps requests/httpx/fsspec errors)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NETWORK_ERRORS) or "connection" in type(seen).__name__.lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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
        raise IngestError(f"source {source}: could not load Hugging Face dataset ({one_line(exc)})") from None
    row = 0
    while True:
        try:
            example = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # a data error ends this stream only; the network is retried
            if _is_network_error(exc):
                raise IngestError(f"source {source}: reading failed at row {row} ({one_line(exc)})") from exc
            yield bad_file(source, f"row:{row}" if row else "file", exc)
            return
        yield as_record(example, source, f"row:{row}")
        row += 1
