"""Hostile input: a corpus of what goes wrong in real dumps, built here in tmp and ingested for real.

One directory holds a file per case (invalid JSON, wrong types, missing/empty/whitespace text, invalid
UTF-8, NUL bytes, a 50 MB document, a 1M-line file of one record, JSON nested 100k deep, Parquet with the
wrong schema or not Parquet at all, truncated and fake gzip). One `ingest_corpus` over it must account for
every record -- a document, a duplicate, or a quarantine row with a reason -- and never raise. Mistakes about
a source as a whole (a path that does not exist, a directory with nothing to read) are one line from the
CLI with exit code 2, before any work. A hypothesis test checks the accounting and determinism of ingest on
arbitrary mixes of good, bad and repeated records.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tracemalloc
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from typer.testing import CliRunner

from core.artifacts import Ingested
from core.config import ConfigError, Settings, load_settings
from influmix.cli import app
from tasks.ingest import IngestError, clean_record, ingest_corpus, repeats
from tasks.ingest.readers import RawRecord
from tests.conftest import query

N_REPEATS = 1_000_000
HUGE_CHARS = 50 * 2**20
REPEATED = b'{"text": "one record, repeated a million times in a row"}\n'
GOOD = [
    {"id": "good-1", "text": "Rivers carry sediment from the mountains down to the sea."},
    {"id": "good-2", "text": "A compiler turns source code into machine instructions."},
    {"id": "good-3", "text": "The orchestra tuned to the oboe before the concert began."},
]


def jsonl(*lines: bytes | dict | list | str | None) -> bytes:
    return b"".join((ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n" for ln in lines)


def truncated_gzip() -> tuple[bytes, int]:
    """A .jsonl.gz cut in half, and how many whole lines gzip still hands out before it fails."""
    data = jsonl(*({"text": f"truncated gzip record number {i} of two hundred"} for i in range(200)))
    cut = gzip.compress(data, mtime=0)
    cut = cut[: len(cut) // 2]
    readable = 0
    with gzip.open(io.BytesIO(cut)) as fh:
        try:
            for _ in fh:
                readable += 1
        except EOFError:
            pass
    return cut, readable


def build_corpus(root: Path) -> dict[str, int]:
    """Write one file per hostile case into `root`; returns facts the assertions need."""
    root.mkdir(parents=True)
    (root / "good.jsonl").write_bytes(jsonl(*GOOD))
    (root / "invalid_json.jsonl").write_bytes(
        jsonl(b'{"text": "unterminated', b"{text: 'single quotes'}", b'{"text": "trailing"} garbage'))
    (root / "wrong_type.jsonl").write_bytes(jsonl(
        {"text": 42}, ["a", "list"], "just a string", None, {"text": {"nested": {"deeper": "x"}}},
        {"id": {"an": "object"}, "text": "an object is not an id, whatever it holds"}, {"text": ["list", "of", "strings"]}))
    (root / "missing_text.jsonl").write_bytes(jsonl({"body": "no text field"}, {"text": None}, {}))
    (root / "empty_text.jsonl").write_bytes(jsonl({"text": ""}, {"text": "   \t\n  "}, {"text": "\u0000\u0000"}))
    (root / "not_utf8.jsonl").write_bytes(jsonl(b'{"text": "caf\xe9 in latin-1"}', b'{"text": "\\ud800 alone"}'))
    (root / "not_utf8.txt").write_bytes(b"caf\xe9 in latin-1, a whole text file")
    (root / "nul_bytes.jsonl").write_bytes(jsonl(
        {"id": "nul-escaped", "text": "NUL \u0000escapes are stripped"}, b'{"text": "a raw \x00 byte"}', b"\x00" * 64))
    (root / "nul_bytes.txt").write_bytes(b"a text file\x00 with NUL\x00 bytes")
    (root / "huge.jsonl").write_bytes(b'{"text": "' + b"a" * HUGE_CHARS + b'"}\n')
    (root / "repeated.jsonl").write_bytes(REPEATED * N_REPEATS)
    (root / "deep.jsonl").write_bytes(jsonl(b"[" * 100_000, b'{"text": ' + b'{"a": ' * 50 + b"1" + b"}" * 51))
    (root / "deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    (root / "bad_array.json").write_bytes(b'[{"text": "an array that never ends"}, ')
    pq.write_table(pa.table({"body": ["the text is in the wrong column"]}), root / "wrong_schema.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), root / "int_text.parquet")
    (root / "not_parquet.parquet").write_bytes(b"PAR1 this is not a Parquet file")
    cut, readable = truncated_gzip()
    (root / "truncated.jsonl.gz").write_bytes(cut)
    (root / "not_gzip.jsonl.gz").write_bytes(jsonl({"text": "plain bytes behind a .gz name"}))
    (root / "empty.jsonl").write_bytes(b"")
    (root / "blank.jsonl").write_bytes(b"\n  \n\r\n")
    (root / "ignored.csv").write_text("text\nnever read\n")
    return {"gzip_lines": readable}


def settings_for(run_dir: Path, *paths: Path, extra: list[str] | None = None) -> Settings:
    sources = ", ".join(f'{{path="{p}"}}' for p in paths)
    return load_settings(None, [f'run_dir="{run_dir}"', f"ingest.sources=[{sources}]", *(extra or [])])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Settings, Ingested, Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("hostile")
    facts = build_corpus(root / "corpus")
    settings = settings_for(root / "runs", root / "corpus")
    return settings, ingest_corpus(settings, "hostile", progress=False), root / "corpus", facts


def quarantined(settings: Settings, path: Path) -> list[tuple[str, str]]:
    return query(settings, "SELECT locator, reason FROM quarantine WHERE run_id = 'hostile' AND source = ? "
                 "ORDER BY locator", [str(path)])


@pytest.mark.parametrize(("name", "expected"), [
    ("invalid_json.jsonl", [("line:1", "invalid_json"), ("line:2", "invalid_json"), ("line:3", "invalid_json")]),
    ("wrong_type.jsonl", [(f"line:{i}", "wrong_type") for i in range(1, 8)]),
    ("missing_text.jsonl", [(f"line:{i}", "missing_text") for i in range(1, 4)]),
    ("empty_text.jsonl", [(f"line:{i}", "empty_text") for i in range(1, 4)]),
    ("not_utf8.jsonl", [("line:1", "not_utf8"), ("line:2", "not_utf8")]),
    ("not_utf8.txt", [("file", "not_utf8")]),
    ("nul_bytes.jsonl", [("line:2", "invalid_json"), ("line:3", "invalid_json")]),  # raw NULs are not JSON
    ("huge.jsonl", [("line:1", "too_long")]),
    ("deep.jsonl", [("line:1", "invalid_json"), ("line:2", "wrong_type")]),
    ("deep.json", [("item:0", "invalid_json")]),
    ("bad_array.json", [("item:1", "invalid_json")]),  # item 0 is kept
    ("wrong_schema.parquet", [("file", "wrong_schema")]),
    ("int_text.parquet", [("row:0", "wrong_type"), ("row:1", "wrong_type")]),
    ("not_parquet.parquet", [("file", "bad_file")]),
    ("not_gzip.jsonl.gz", [("file", "bad_file")]),
    ("empty.jsonl", []),
    ("blank.jsonl", []),
])
def test_each_case_is_quarantined_with_its_reason(hostile, name, expected):
    settings, _, corpus, _ = hostile
    assert quarantined(settings, corpus / name) == expected


def test_quarantine_rows_explain_themselves(hostile):
    settings, *_ = hostile
    rows = query(settings, "SELECT reason, detail, excerpt FROM quarantine WHERE run_id = 'hostile'")
    assert all(detail for _, detail, _ in rows)
    assert all(len(excerpt) <= 200 for *_, excerpt in rows)
    details = {reason: detail for reason, detail, _ in rows}
    assert any("recursion" in detail.lower() for reason, detail, _ in rows if reason == "invalid_json")
    assert "no text column 'text'" in details["wrong_schema"] and "body" in details["wrong_schema"]
    assert f"{HUGE_CHARS} chars" in details["too_long"]


def test_nul_bytes_are_stripped_from_kept_documents(hostile):
    settings, _, corpus, _ = hostile
    texts = dict(query(settings, "SELECT doc_id, text FROM documents WHERE run_id = 'hostile'"))
    assert texts["nul-escaped"] == "NUL escapes are stripped"
    assert texts[str(corpus / "nul_bytes.txt")] == "a text file with NUL bytes"


def test_truncated_gzip_keeps_what_was_read_and_quarantines_the_rest(hostile):
    settings, _, corpus, facts = hostile
    path = corpus / "truncated.jsonl.gz"
    n = facts["gzip_lines"]
    assert 0 < n < 200
    assert quarantined(settings, path) == [(f"line:{n + 1}", "bad_file")]
    assert query(settings, "SELECT count(*) FROM documents WHERE run_id = 'hostile' AND source = ?",
                 [str(path)]) == [(n,)]


def test_a_million_repeats_are_one_document(hostile):
    settings, stats, corpus, _ = hostile
    path = str(corpus / "repeated.jsonl")
    first = f"{path}:line:1"
    assert query(settings, "SELECT doc_id FROM documents WHERE run_id = 'hostile' AND source = ?", [path]) == [(first,)]
    assert query(settings, "SELECT count(*), count(DISTINCT doc_id), min(duplicate_of), max(duplicate_of), "
                 "min(kind), max(kind) FROM duplicates WHERE run_id = 'hostile' AND source = ?", [path]) == [
        (N_REPEATS - 1, N_REPEATS - 1, first, first, "exact", "exact")]
    assert stats.exact_duplicates == N_REPEATS - 1


def test_every_record_is_accounted_for(hostile):
    settings, stats, *_ = hostile
    ((docs, dups, bad),) = query(settings, "SELECT (SELECT count(*) FROM documents WHERE run_id = $r), "
                                 "(SELECT count(*) FROM duplicates WHERE run_id = $r), "
                                 "(SELECT count(*) FROM quarantine WHERE run_id = $r)", {"r": "hostile"})
    assert (docs, dups, bad) == (stats.documents, stats.exact_duplicates + stats.near_duplicates, stats.quarantined)
    assert stats.records_read == docs + dups + bad
    assert {"good-1", "good-2", "good-3"} <= {d for (d,) in query(settings, "SELECT doc_id FROM documents")}


def test_huge_document_costs_a_few_times_its_size(tmp_path):
    path = tmp_path / "huge.jsonl"
    path.write_bytes(b'{"text": "' + b"b" * HUGE_CHARS + b'"}\n')
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl(*GOOD))
    settings = settings_for(tmp_path / "runs", path, good)
    tracemalloc.start()
    try:
        stats = ingest_corpus(settings, "huge", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.quarantine_by_reason == {"too_long": 1} and stats.documents == 3
    assert peak < 3.5 * HUGE_CHARS, f"peak {peak / 2**20:.0f} MiB for a {HUGE_CHARS / 2**20:.0f} MiB line"


def test_deeply_nested_record_does_not_crash_its_excerpt():
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    bad = clean_record(RawRecord("s", "line:1", {"text": 5, "meta": nested}), *_source_and_ingest())
    assert bad.reason == "wrong_type" and bad.excerpt


def _source_and_ingest():
    settings = load_settings(None, ['ingest.sources=[{path="x.jsonl"}]'])
    return settings.ingest.sources[0], settings.ingest


# ------------------------------------------------------------------- source-level mistakes: one CLI line


def run_cli(tmp_path: Path, source: Path) -> tuple[int, str]:
    reference = tmp_path / "ref.jsonl"
    reference.write_bytes(jsonl({"text": "a reference document"}))
    result = CliRunner().invoke(app, [
        "run", "--set", f'run_dir="{tmp_path / "runs"}"', "--set", f'ingest.sources=[{{path="{source}"}}]',
        "--set", f'reference.sources=[{{path="{reference}"}}]'], env={"COLUMNS": "300"})
    return result.exit_code, result.output


@pytest.mark.parametrize(("case", "message"), [("missing", "path does not exist"), ("empty_dir", "directory has no")])
def test_source_mistakes_are_one_line_from_the_cli(tmp_path, case, message):
    source = tmp_path / "no" / "such.jsonl"
    if case == "empty_dir":
        source = tmp_path / "only_csv"
        source.mkdir()
        (source / "a.csv").write_text("text\nnot a supported file\n")
    code, output = run_cli(tmp_path, source)
    assert code == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0] and str(source) in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was written: it failed before any work


def test_a_setting_found_wrong_mid_run_loses_its_prefect_traceback(tmp_path):
    """`cluster.k` above the corpus size is only found by the cluster stage; Prefect logs the task's failure
    with a traceback, which `quiet_user_tracebacks` (for user errors only) drops, so one line remains."""
    from core.artifacts import Embedded
    from influmix.quiet import DropUserTracebacks, quiet_user_tracebacks
    from tasks.cluster import cluster_documents

    settings = load_settings(None, [f'run_dir="{tmp_path}"', "cluster.k=8"])
    with pytest.raises(ConfigError) as info:
        cluster_documents(settings, Embedded("tiny-corpus", "all-MiniLM-L6-v2", 384, 0, 0.0, 0.0))
    logger, stream = logging.getLogger("prefect.task_runs"), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:  # only our handler: Prefect's would ship logs to an API
        patch.setattr(logger, "handlers", [logging.StreamHandler(stream)])
        patch.setattr(logger, "propagate", False)
        with quiet_user_tracebacks((ConfigError,)):
            for exc in (info.value, RuntimeError("a bug keeps its traceback")):
                try:
                    raise exc
                except Exception:
                    logger.exception("Task run failed with exception: %r", exc)  # as Prefect's engine logs it
    log = stream.getvalue()
    assert "setting `cluster.k`: 8 clusters" in log and log.count("Traceback") == 1
    assert log.index("Traceback") > log.index("a bug keeps its traceback")
    assert not [f for f in logger.filters if isinstance(f, DropUserTracebacks)]  # removed again on exit


def test_nothing_usable_is_one_clear_error(tmp_path):
    path = tmp_path / "all_bad.jsonl"
    path.write_bytes(jsonl({"text": ""}, {"body": "x"}, b"{nope"))
    settings = settings_for(tmp_path / "runs", path)
    with pytest.raises(IngestError) as info:
        ingest_corpus(settings, "bad", progress=False)
    message = str(info.value)
    assert "\n" not in message and "no usable documents" in message
    assert "empty_text: 1" in message and "missing_text: 1" in message and "invalid_json: 1" in message
    assert query(settings, "SELECT count(*) FROM quarantine WHERE run_id = 'bad'") == [(3,)]


# ------------------------------------------------------------------------------- property: accounting

_TEXTS = st.sampled_from(["alpha beta gamma", "delta epsilon zeta eta", "", "  ", "theta\u0000 iota", "x" * 50])
_RECORDS = st.one_of(
    st.builds(lambda t: {"text": t}, _TEXTS),
    st.builds(lambda i, t: {"id": i, "text": t}, st.sampled_from(["a", "b", 7, 7.0, None, "", ["x"]]), _TEXTS),
    st.sampled_from([{"body": "no text"}, {"text": 3}, [1, 2], "str", None]),
)
_LINES = st.lists(st.one_of(_RECORDS.map(lambda r: json.dumps(r).encode()),
                            st.sampled_from([b"{broken", b"\xff\xfe", b"", b"[" * 5000])), max_size=25)


_TABLE_QUERIES = (
    "SELECT doc_id, text, source, locator, domain, n_chars, content_hash FROM documents WHERE run_id = ? ORDER BY ALL",
    "SELECT source, locator, reason, detail, excerpt FROM quarantine WHERE run_id = ? ORDER BY ALL",
    "SELECT doc_id, source, duplicate_of, kind, similarity FROM duplicates WHERE run_id = ? ORDER BY ALL",
)


def _tables(settings: Settings, run_id: str) -> tuple[list, ...]:
    con = duckdb.connect(str(settings.database), read_only=True)
    try:
        return tuple(con.execute(sql, [run_id]).fetchall() for sql in _TABLE_QUERIES)
    finally:
        con.close()


def _ingest(settings: Settings, run_id: str) -> Ingested | None:
    try:
        return ingest_corpus(settings, run_id, progress=False)
    except IngestError as exc:
        assert "no usable documents" in str(exc) or "hold no records" in str(exc)
        return None


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_LINES, repeat=st.lists(st.integers(0, 24), max_size=10))
def test_property_every_record_accounted_once_and_deterministic(tmp_path, lines, repeat):
    lines = lines + [lines[i] for i in repeat if i < len(lines)]  # byte-identical repeats, out of order too
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    settings = settings_for(tmp_path / "runs", path, extra=["ingest.min_chars=2"])
    stats = _ingest(settings, "a")
    docs, bad, dups = _tables(settings, "a")
    assert len(docs) + len(bad) + len(dups) == sum(1 for line in lines if line.strip())
    assert len({d[0] for d in docs}) == len(docs)
    if stats is not None:
        assert stats.records_read == len(docs) + len(bad) + len(dups)
    _ingest(settings, "a")
    assert _tables(settings, "a") == (docs, bad, dups)  # ingesting twice gives identical tables
    with pytest.MonkeyPatch.context() as patch:  # and so does ingesting without the repeat caches
        patch.setattr(repeats, "MAX_LINE_BYTES", 0)
        _ingest(settings, "b")
    assert _tables(settings, "b") == (docs, bad, dups)
