"""Ingest on real data: the bundled sample (data/sample/) plus small files written here; real DuckDB files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]

from core.artifacts import Ingested
from core.config import Settings, SourceSettings, load_settings
from tasks.ingest import (
    IngestError,
    ingest_corpus,
    ingest_task,
    load_reference,
    reference_task,
)
from tasks.ingest.readers import BadRecord, RawRecord, iter_source
from tests.conftest import query

SAMPLE = ROOT / "data" / "sample"
CORPUS, BROKEN, REFERENCE = SAMPLE / "corpus.jsonl.gz", SAMPLE / "broken.jsonl", SAMPLE / "reference.jsonl.gz"
REASONS = {"invalid_json", "not_utf8", "missing_text", "wrong_type", "empty_text", "too_long", "duplicate_id"}


def make_settings(tmp: Path, sources: list[dict], **ingest) -> Settings:
    return Settings.model_validate(
        {
            "run_dir": str(tmp),
            "ingest": {"sources": sources, **ingest},
            "reference": {"sources": [{"path": str(REFERENCE)}]},
        }
    )


def counts(settings: Settings, run_id: str) -> dict[str, int]:
    return {
        table: query(settings, f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id])[0][0]
        for table in ("documents", "quarantine", "duplicates")
    }


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> tuple[Settings, Ingested]:
    settings = make_settings(
        tmp_path_factory.mktemp("sample"), [{"path": str(CORPUS)}, {"path": str(BROKEN)}]
    )
    return settings, ingest_corpus(settings, "sample", progress=False)


def test_sample_files_are_small_and_stratified():
    assert CORPUS.stat().st_size < 5e6 and REFERENCE.stat().st_size < 1e6
    with gzip.open(CORPUS, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    assert 1_500 <= len(records) <= 2_500
    assert {r["domain"] for r in records} == {
        "dictionary",
        "email",
        "literature",
        "news",
        "reviews",
        "speech",
        "techdoc",
        "tweets",
        "wiki",
    }
    subsets = {r["id"].split(":")[0] for r in records}
    assert "gcide" not in subsets and not any(s.startswith("gensim-") for s in subsets)
    assert {"wikivital-fr", "wikivital-es", "scattertext-guardianheadline", "spamassassin"} <= subsets
    assert max(len(r["text"]) for r in records) <= 3_000
    assert set(records[0]) == {"id", "text", "source", "domain", "topic"}


def test_every_quarantine_reason_with_its_record(sample_run):
    settings, stats = sample_run
    got = query(
        settings,
        "SELECT reason, locator, detail, excerpt FROM quarantine WHERE run_id = 'sample' AND source = ?",
        [str(BROKEN)],
    )
    by_line = {locator: (reason, detail, excerpt) for reason, locator, detail, excerpt in got}
    assert {reason for reason, *_ in got} == REASONS
    assert by_line["line:1"][0] == "invalid_json"
    assert by_line["line:2"][0] == "not_utf8" and "invalid UTF-8" in by_line["line:2"][1]
    assert by_line["line:3"][0] == "empty_text"
    assert by_line["line:4"][0] == "missing_text" and "'text'" in by_line["line:4"][1]
    assert by_line["line:5"][0] == "wrong_type" and "int" in by_line["line:5"][1]
    assert by_line["line:6"][0] == "wrong_type" and "list" in by_line["line:6"][1]
    assert by_line["line:7"][0] == "not_utf8" and "surrogate" in by_line["line:7"][1]
    assert by_line["line:8"][0] == "duplicate_id"
    assert by_line["line:9"][0] == "too_long" and "250000" in by_line["line:9"][1]
    assert all(excerpt is not None and len(excerpt) <= 200 for *_, excerpt in got)
    # the sample corpus itself only loses its few fragments under `ingest.min_chars` visible characters
    fragments = query(settings, "SELECT reason, count(*) FROM quarantine WHERE run_id = 'sample' AND source = ? "
                      "GROUP BY 1", [str(CORPUS)])
    assert fragments == [("empty_text", 12)]
    assert stats.quarantined == len(got) + 12 == sum(stats.quarantine_by_reason.values())
    assert set(stats.quarantine_by_reason) == REASONS


def test_exact_and_near_duplicates_are_dropped(sample_run):
    settings, stats = sample_run
    dups = {
        doc_id: (of, kind, sim)
        for doc_id, of, kind, sim in query(
            settings, "SELECT doc_id, duplicate_of, kind, similarity FROM duplicates WHERE run_id = 'sample'"
        )
    }
    assert dups["broken:exact-duplicate"][1:] == ("exact", 1.0)
    of, kind, sim = dups["broken:near-duplicate"]
    assert kind == "near" and 0.8 <= sim <= 1.0  # estimated Jaccard; the true one is 0.96
    assert stats.exact_duplicates >= 1 and stats.near_duplicates >= 1
    assert stats.exact_duplicates + stats.near_duplicates == len(dups)
    kept = {d for (d,) in query(settings, "SELECT doc_id FROM documents WHERE run_id = 'sample'")}
    assert not kept & set(dups)
    assert {of for of, *_ in dups.values()} <= kept | set(dups)
    near_text = query(settings, "SELECT text FROM documents WHERE doc_id = ?", [of])[0][0]
    line = json.loads(BROKEN.read_bytes().splitlines()[10])
    assert line["id"] == "broken:near-duplicate" and line["text"] != near_text


def test_documents_are_clean_unique_and_counted(sample_run):
    settings, stats = sample_run
    n, distinct, empty, hashes = query(
        settings,
        "SELECT count(*), count(DISTINCT doc_id), count(*) FILTER (WHERE length(trim(text)) = 0), "
        "count(DISTINCT content_hash) FROM documents WHERE run_id = 'sample'",
    )[0]
    assert n == distinct == hashes == stats.documents and empty == 0
    assert (
        stats.records_read
        == stats.documents + stats.quarantined + stats.exact_duplicates + stats.near_duplicates
    )
    by_domain = dict(
        query(settings, "SELECT domain, count(*) FROM documents WHERE run_id = 'sample' GROUP BY 1")
    )
    assert by_domain == stats.by_domain and len(by_domain) == 9
    assert query(settings, "SELECT text FROM documents WHERE doc_id = 'broken:nul-bytes'")[0][0] == (
        "NUL characters are stripped, the rest of this record is kept."
    )
    metrics = stats.as_metrics()
    assert metrics["documents"] == stats.documents and metrics["quarantine.too_long"] == 1.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_rerun_same_run_id_gives_identical_counts(sample_run):
    settings, first = sample_run
    before = counts(settings, "sample")
    again = ingest_corpus(settings, "sample", progress=False)
    assert counts(settings, "sample") == before
    assert (again.documents, again.quarantined, again.exact_duplicates, again.near_duplicates) == (
        first.documents,
        first.quarantined,
        first.exact_duplicates,
        first.near_duplicates,
    )
    assert again.quarantine_by_reason == first.quarantine_by_reason and again.by_domain == first.by_domain


def test_parquet_text_and_json_array_inputs(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    pq.write_table(
        pa.table(
            {
                "doc": ["parquet document one about rivers", "parquet document two about hills", None],
                "key": ["p1", "p2", "p3"],
                "extra": [1, 2, 3],
            }
        ),
        data / "part.parquet",
        row_group_size=2,
    )
    (data / "note.txt").write_bytes(
        b"A plain text file.\r\nIt is one document.\r\n\r\nWith two paragraphs.\r\n"
    )
    (data / "array.json").write_text(
        json.dumps([{"text": "an item of a JSON array of records", "id": "a1"}, 7]), encoding="utf-8"
    )
    (data / "ignored.csv").write_text("text\nnot read\n", encoding="utf-8")
    settings = make_settings(
        tmp_path,
        [
            {"path": str(data / "*.parquet"), "text_field": "doc", "id_field": "key", "domain": "tabular"},
            {"path": str(data / "note.txt"), "domain": "notes"},
            {"path": str(data / "array.json")},
        ],
    )
    stats = ingest_corpus(settings, "mixed", progress=False)
    docs = dict(query(settings, "SELECT doc_id, text FROM documents WHERE run_id = 'mixed'"))
    assert docs["p1"] == "parquet document one about rivers" and "p2" in docs
    assert docs[str(data / "note.txt")] == "A plain text file.\nIt is one document.\n\nWith two paragraphs."
    assert docs["a1"] == "an item of a JSON array of records"
    assert stats.by_domain == {"tabular": 2, "notes": 1, "unknown": 1}
    reasons = set(query(settings, "SELECT reason, locator FROM quarantine WHERE run_id = 'mixed'"))
    assert reasons == {("missing_text", "row:2"), ("wrong_type", "item:1")}

    # a directory source reads every supported file inside (here: all four minus the csv)
    settings = make_settings(tmp_path, [{"path": str(data), "text_field": "doc"}])
    stats = ingest_corpus(settings, "dir", progress=False)
    assert stats.records_read == 3 + 1 + 2


def test_parquet_without_text_column_is_quarantined_not_fatal(tmp_path):
    """One file with the wrong schema costs that file (a `wrong_schema` row), not the run ..."""
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "a usable document next to the broken file"}])
    settings = make_settings(tmp_path, [{"path": str(tmp_path / "t.parquet")}, {"path": str(good)}])
    stats = ingest_corpus(settings, "r", progress=False)
    assert stats.documents == 1 and stats.quarantine_by_reason == {"wrong_schema": 1}
    ((locator, detail),) = query(settings, "SELECT locator, detail FROM quarantine WHERE run_id = 'r'")
    assert locator == "file" and "no text column 'text'" in detail and "body" in detail
    # ... but a corpus with nothing usable left is one clear error that says why, after writing the rows
    settings = make_settings(tmp_path, [{"path": str(tmp_path / "t.parquet")}])
    with pytest.raises(IngestError, match=r"no usable documents.*wrong_schema: 1.*t\.parquet.*no text column"):
        ingest_corpus(settings, "r", progress=False)
    assert query(settings, "SELECT reason FROM quarantine WHERE run_id = 'r'") == [("wrong_schema",)]


def test_hf_streaming_source(tmp_path):
    path = write_jsonl(
        tmp_path / "hf.jsonl",
        [
            {"text": "streamed through the datasets library", "label": 1},
            {"text": "a second streamed record", "label": 0},
            {"text": "   ", "label": 0},
        ],
    )
    settings = make_settings(
        tmp_path, [{"hf": "json", "hf_data_files": [str(path)], "id_field": None, "domain": "hf"}]
    )
    stats = ingest_corpus(settings, "hf", progress=False)
    assert stats.documents == 2 and stats.quarantine_by_reason == {"empty_text": 1}
    ids = sorted(d for (d,) in query(settings, "SELECT doc_id FROM documents WHERE run_id = 'hf'"))
    assert ids == ["hf:json[train]:row:0", "hf:json[train]:row:1"]


def test_missing_path_and_empty_glob_raise_clear_errors(tmp_path):
    for path, message in [
        (tmp_path / "nope.jsonl", "path does not exist"),
        (tmp_path / "*.jsonl", "glob matches no"),
        (tmp_path, "directory has no"),
    ]:
        settings = make_settings(tmp_path / "db", [{"path": str(path)}])
        with pytest.raises(IngestError) as info:
            ingest_corpus(settings, "r", progress=False)
        assert str(path) in str(info.value) and message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(IngestError, match="ingest.sources"):
        ingest_corpus(make_settings(tmp_path, []), "r", progress=False)


def test_record_rules_min_max_ids_and_caps(tmp_path):
    path = write_jsonl(
        tmp_path / "rules.jsonl",
        [
            {"id": "a", "text": "short", "domain": "x"},
            {"id": "b", "text": "long enough text here", "domain": "x"},
            {
                "id": "b",
                "text": "long enough  text\nhere",
                "domain": "x",
            },  # same id, same (collapsed) text: exact dup
            {"id": "b", "text": "another text with the same id"},
            {"id": 7, "text": "integer ids are fine too"},
            {"id": ["x"], "text": "list ids are not"},
            {"text": "no id at all, falls back to the locator"},
            {"id": "c", "text": "x" * 41},
            {"id": "never", "text": "past max_records"},
        ],
    )
    settings = make_settings(tmp_path, [{"path": str(path), "max_records": 8}], min_chars=10, max_chars=40)
    stats = ingest_corpus(settings, "rules", progress=False)
    assert stats.records_read == 8
    assert stats.quarantine_by_reason == {"empty_text": 1, "duplicate_id": 1, "wrong_type": 1, "too_long": 1}
    assert stats.exact_duplicates == 1
    ids = {d for (d,) in query(settings, "SELECT doc_id FROM documents WHERE run_id = 'rules'")}
    assert ids == {"b", "7", f"{path}:line:7"}


def test_load_reference(tmp_path):
    settings = make_settings(tmp_path, [{"path": str(CORPUS)}])
    assert load_reference(settings, "ref").documents == 149  # 150 records, one under `ingest.min_chars`
    assert load_reference(settings, "ref").documents == 149  # re-run replaces
    assert query(settings, "SELECT count(*), count(DISTINCT domain) FROM reference_documents")[0] == (149, 2)
    small = load_settings(
        None,
        overrides=[
            f"run_dir='{tmp_path}'",
            "reference.max_documents=10",
            f"reference.sources=[{{path='{BROKEN}'}}]",
        ],
    )
    assert load_reference(small, "small").documents == 4  # broken.jsonl: only 4 usable, distinct records
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}, {"body": "x"}])
    bad = load_settings(None, overrides=[f"run_dir='{tmp_path}'", f"reference.sources=[{{path='{empty}'}}]"])
    with pytest.raises(IngestError, match="no usable reference"):
        load_reference(bad, "bad")


def test_prefect_wrappers_wrap_the_plain_functions():
    assert ingest_task.name == "ingest" and ingest_task.fn is ingest_corpus
    assert reference_task.name == "reference" and reference_task.fn is load_reference


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=60), st.text(max_size=40).map(lambda t: json.dumps({"text": t}).encode())
        ),
        max_size=6,
    )
)
def test_reader_never_raises_on_bad_bytes(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    lines = [line.replace(b"\n", b" ") for line in lines]
    path.write_bytes(b"\n".join(lines))
    items = list(iter_source(SourceSettings(path=str(path))))
    assert all(isinstance(i, RawRecord | BadRecord) for i in items)
    if lines:
        lines[0] = lines[0].removeprefix(b"\xef\xbb\xbf")
    assert len(items) == sum(1 for line in lines if line.strip())
