"""Every way one record can be bad is one quarantine row with its reason, and costs nothing else.

One directory holds a file per case, each case planted between good records. A single `ingest_corpus` over
it must quarantine each case with its reason and a detail that says why, and keep exactly the good records
(count and ids). `ingest.corrupt_gzip` and the invisible-only rule are tested on their own files below;
`tests/test_reader_fuzz.py` throws generated values and bytes at the readers.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import Settings, load_settings
from tasks.ingest import ingest_corpus
from tasks.ingest.clean import strip_invisible, visible_chars
from tests.conftest import query

WORDS = [
    "river", "mountain", "compiler", "orchestra", "harvest", "lantern", "glacier", "archive", "meadow",
    "circuit", "harbor", "novel", "violin", "canyon", "ledger", "comet", "pepper", "quarry", "saddle",
    "timber", "velvet", "walnut", "yonder", "zephyr", "basalt", "cobalt", "dynamo", "ember", "falcon",
    "garnet", "hazel", "indigo", "jasper", "kelp", "lilac", "marble", "nectar", "opal", "prairie",
    "quartz",
]


def good_records(prefix: str, n: int, seed: int) -> list[dict]:
    """`n` good records with ids `<prefix>-<i>` and texts no other good record comes near (dedup keeps all)."""
    rng = random.Random(seed)
    return [{"id": f"{prefix}-{i}", "text": " ".join(rng.choices(WORDS, k=14)) + ".", "domain": "good"}
            for i in range(n)]


def line(value) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def jsonl(*values) -> bytes:
    return b"".join(line(v) + b"\n" for v in values)


def text(*extra: str) -> str:
    return "a usable text of a record that is bad elsewhere" + "".join(extra)


# case name -> (file name, bad line(s) as JSON values or raw bytes, expected reason, phrase in the detail)
JSONL_CASES: dict[str, tuple[object, str, str]] = {
    "invalid_json": (b"{text: 'single quotes'}", "invalid_json", "Expecting property name"),
    "deep_nesting": (b"[" * 100_000, "invalid_json", "recursion"),
    "latin1_line": ('{"text": "caf\u00e9 cr\u00e8me"}'.encode("latin-1"), "not_utf8", "Latin-1"),
    "utf16_no_bom_line": ('{"text": "sixteen bits per character"}'.encode("utf-16-le"), "invalid_json", "UTF-16"),
    "surrogate_text": (b'{"text": "lone \\ud800 surrogate in a text that is long enough"}', "not_utf8", "surrogate"),
    "surrogate_id": (b'{"id": "\\udfff", "text": "' + text().encode() + b'"}', "not_utf8", "id field"),
    "surrogate_domain": (b'{"domain": "\\ud83d", "text": "' + text().encode() + b'"}', "not_utf8", "domain field"),
    "missing_text": ({"body": text()}, "missing_text", "no field 'text'"),
    "null_text": ({"text": None}, "missing_text", "is null"),
    "number_text": ({"text": 42}, "wrong_type", "int"),
    "huge_int_text": (b'{"text": ' + b"7" * 5000 + b"}", "wrong_type", "5,000 digits"),
    "list_text": ({"text": ["a", "list"]}, "wrong_type", "list"),
    "not_an_object": (["a", "list", "record"], "wrong_type", "record is list"),
    "huge_int_record": (b"9" * 6000, "wrong_type", "6,000 digits"),
    "huge_int_id": (b'{"id": ' + b"1" * 5000 + b', "text": "' + text().encode() + b'"}', "wrong_type", "5,000 digits"),
    "bool_id": ({"id": True, "text": text()}, "wrong_type", "bool"),
    "list_id": ({"id": ["x"], "text": text()}, "wrong_type", "list"),
    "dict_id": ({"id": {"an": "object"}, "text": text()}, "wrong_type", "dict"),
    "fraction_id": ({"id": 1.5, "text": text()}, "wrong_type", "1.5"),
    "nan_id": (b'{"id": NaN, "text": "' + text().encode() + b'"}', "wrong_type", "nan"),
    "inf_id": (b'{"id": 1e999, "text": "' + text().encode() + b'"}', "wrong_type", "inf"),
    "float_beyond_2_53_id": ({"id": 1e300, "text": text()}, "wrong_type", "not an exact integer"),
    "long_id": ({"id": "x" * 5000, "text": text()}, "bad_id", "5,000 characters"),
    "control_id": ({"id": "a\u0000b", "text": text()}, "bad_id", "U+0000"),
    "list_domain": ({"domain": ["news"], "text": text()}, "wrong_type", "domain field 'domain' is list"),
    "float_domain": ({"domain": 2.5, "text": text()}, "wrong_type", "float"),
    "long_domain": ({"domain": "d" * 500, "text": text()}, "bad_domain", "500 characters"),
    "control_domain": ({"domain": "news\u0007wire", "text": text()}, "bad_domain", "control characters"),
    "empty_text": ({"text": "   \t\n "}, "empty_text", "0 visible characters"),
    "invisible_only": ({"text": "\ufeff\u200b\u200d\u2060\u00ad"}, "empty_text", "U+FEFF"),
    "one_word": ({"text": "Grueling."}, "empty_text", "9 visible characters (min_chars=20)"),
    "too_long": ({"text": "y" * 300_000}, "too_long", "300000 chars"),
    "duplicate_id": ({"id": "good-case-duplicate_id-0", "text": text(" but with another text")},
                     "duplicate_id", "already used"),
}


def _write_cases(root: Path) -> dict[str, list[str]]:
    """One file per case: good, bad, good. Returns every good id written, per file."""
    good: dict[str, list[str]] = {}
    for n, (name, (bad, _, _)) in enumerate(JSONL_CASES.items()):
        before, after = good_records(f"good-case-{name}", 2, seed=n)
        (root / f"{name}.jsonl").write_bytes(jsonl(before, bad, after))
        good[name] = [before["id"], after["id"]]
    return good


def _write_file_cases(root: Path) -> dict[str, list[str]]:
    """Whole-file cases, each next to good records (in the same file where the format allows it)."""
    good = {}
    records = good_records("good-file", 14, seed=99)
    (root / "utf16_file.jsonl").write_bytes(jsonl(*records[:2]).decode().encode("utf-16"))
    (root / "not_gzip.jsonl.gz").write_bytes(jsonl(*records[2:4]))
    pq.write_table(pa.table({"body": ["wrong column"]}), root / "wrong_schema.parquet")
    (root / "not_parquet.parquet").write_bytes(b"PAR1 but not Parquet")
    (root / "deep_array.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    # Parquet: timestamps as ids, one of them beyond Python's datetime (year > 9999): a row each, no error
    stamps = pa.array([0, 10**15, 0], pa.int64()).cast(pa.timestamp("s"))
    pq.write_table(pa.table({"text": [text("."), text("!"), text("?")], "id": stamps}), root / "timestamp_id.parquet")
    pq.write_table(pa.table({"text": pa.array([{"a": 1}, None], pa.struct([("a", pa.int64())])),
                             "id": ["struct-0", "struct-1"]}), root / "struct_text.parquet")
    # an unread column may hold anything: these rows are good
    pq.write_table(pa.table({"text": [records[6]["text"], records[7]["text"]],
                             "id": [records[6]["id"], records[7]["id"]],
                             "meta": pa.array([[1, 2], None], pa.list_(pa.int64()))}), root / "odd_unread.parquet")
    # a JSON array: a huge number item and a list item between good objects
    (root / "array.json").write_bytes(b"[" + line(records[8]) + b", " + b"5" * 5000 + b", [1], "
                                      + line(records[9]) + b"]")
    # a huge number in a field that is never read costs nothing
    (root / "huge_unread.jsonl").write_bytes(line(records[10])[:-1] + b', "n": ' + b"3" * 9000 + b"}\n"
                                             + jsonl(records[11]))
    # an array that breaks after two good items: the two are kept, the rest is one row
    (root / "broken_array.json").write_bytes(b"[" + line(records[12]) + b",\n" + line(records[13])
                                             + b', {"text": "cut off' + b"]" * 3)
    good["file"] = [r["id"] for r in records[6:14]]
    return good


FILE_CASES = [
    ("utf16_file.jsonl", [("file", "not_utf8")], "UTF-16 LE"),
    ("not_gzip.jsonl.gz", [("file", "bad_file")], "Not a gzipped file"),
    ("wrong_schema.parquet", [("file", "wrong_schema")], "no text column 'text'"),
    ("not_parquet.parquet", [("file", "bad_file")], "file unreadable"),
    ("deep_array.json", [("item:0", "invalid_json")], "recursion"),
    ("timestamp_id.parquet", [("row:0", "wrong_type"), ("row:1", "wrong_type"), ("row:2", "wrong_type")],
     "is datetime"),
    ("struct_text.parquet", [("row:0", "wrong_type"), ("row:1", "missing_text")], "dict"),
    ("odd_unread.parquet", [], ""),
    ("array.json", [("item:1", "wrong_type"), ("item:2", "wrong_type")], "5,000 digits"),
    ("huge_unread.jsonl", [], ""),
    ("broken_array.json", [("item:2", "invalid_json")], "the rest of the array is not read"),
]


def settings_for(run_dir: Path, source: Path, *extra: str) -> Settings:
    return load_settings(None, [f'run_dir="{run_dir}"', f'ingest.sources=[{{path="{source}"}}]', *extra])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    corpus = root / "corpus"
    corpus.mkdir()
    good = {**_write_cases(corpus), **_write_file_cases(corpus)}
    settings = settings_for(root / "runs", corpus)
    return settings, ingest_corpus(settings, "mixed", progress=False), corpus, good


def rows_of(settings: Settings, path: Path) -> list[tuple[str, str, str]]:
    return query(settings, "SELECT locator, reason, detail FROM quarantine WHERE run_id = 'mixed' AND source = ? "
                 "ORDER BY locator", [str(path)])


@pytest.mark.parametrize("name", list(JSONL_CASES))
def test_each_bad_record_is_one_row_with_its_reason(mixed, name):
    settings, _, corpus, _ = mixed
    _, reason, phrase = JSONL_CASES[name]
    ((locator, got, detail),) = rows_of(settings, corpus / f"{name}.jsonl")
    assert (locator, got) == ("line:2", reason)
    assert phrase in detail, detail


@pytest.mark.parametrize(("name", "expected", "phrase"), FILE_CASES)
def test_each_bad_file_or_value_is_quarantined(mixed, name, expected, phrase):
    settings, _, corpus, _ = mixed
    rows = rows_of(settings, corpus / name)
    assert [(locator, reason) for locator, reason, _ in rows] == expected
    assert not rows or phrase in rows[0][2], rows[0][2]


def test_a_corpus_of_every_bad_kind_keeps_every_good_record(mixed):
    settings, stats, _, good = mixed
    expected = sorted(doc_id for ids in good.values() for doc_id in ids)
    kept = [d for (d,) in query(settings, "SELECT doc_id FROM documents WHERE run_id = 'mixed' ORDER BY doc_id")]
    assert kept == expected and stats.documents == len(expected) == 2 * len(JSONL_CASES) + 8
    assert stats.exact_duplicates == stats.near_duplicates == 0
    n_bad = len(JSONL_CASES) + sum(len(rows) for _, rows, _ in FILE_CASES)
    assert stats.quarantined == n_bad and stats.records_read == stats.documents + n_bad
    assert {"wrong_type", "bad_id", "bad_domain", "not_utf8", "empty_text"} <= set(stats.quarantine_by_reason)


def test_integer_ids_and_domain_codes_are_kept_as_strings(tmp_path):
    path = tmp_path / "codes.jsonl"
    a, b, c = (r["text"] for r in good_records("codes", 3, seed=8))
    path.write_bytes(jsonl({"id": 7, "domain": 3, "text": a}, {"id": 8.0, "domain": " ", "text": b},
                           {"id": "  ", "text": c}))
    settings = settings_for(tmp_path / "runs", path)
    ingest_corpus(settings, "codes", progress=False)
    assert set(query(settings, "SELECT doc_id, domain FROM documents")) == {
        ("7", "3"), ("8", "unknown"), (f"{path}:line:3", "unknown")}  # a blank id falls back to the locator


# -------------------------------------------------------------------------------- invisible characters


@pytest.mark.parametrize("invisible", ["\ufeff", "\u200b\u200c\u200d", "\u2060\u2061", "\u00a0\u3000", "\x01\x7f",
                                       "\u3164\u115f", "\ufe0f\u034f", "\U000e0041\U000e007f", "\u202e\u2066"])
def test_invisible_only_text_is_empty(invisible):
    assert strip_invisible(f"  {invisible} \n") == "" and visible_chars(invisible, 5) == 0


def test_invisible_characters_are_stripped_at_the_ends_only():
    assert strip_invisible("\ufeff\u200b Hello\u200dworld \u2060\n") == "Hello\u200dworld"
    assert visible_chars("a\u200bb c", 10) == 3
    assert visible_chars("x" * 10**6, 20) == 20  # counting stops at what min_chars needs


# ----------------------------------------------------------------------------------- ingest.corrupt_gzip


def corrupt_crc_gzip(n: int) -> tuple[bytes, int]:
    """A .jsonl.gz whose CRC-32 is wrong, and how many lines Python's gzip hands out before it notices."""
    data = jsonl(*good_records("gz", n, seed=5))
    raw = bytearray(gzip.compress(data, mtime=0))
    raw[-8] ^= 0xFF  # the CRC-32 in the member's trailer
    readable = 0
    with gzip.open(io.BytesIO(bytes(raw))) as fh:
        try:
            for _ in fh:
                readable += 1
        except gzip.BadGzipFile:
            pass
    return bytes(raw), readable


@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_a_gzip_that_fails_its_checksum(tmp_path, mode):
    raw, readable = corrupt_crc_gzip(3000)
    assert 0 < readable <= 3000  # the CRC is checked at the end: every line may come out before it
    path = tmp_path / "crc.jsonl.gz"
    path.write_bytes(raw)
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl(*good_records("other", 2, seed=6)))
    sources = f'ingest.sources=[{{path="{path}"}}, {{path="{good}"}}]'
    settings = load_settings(None, [f'run_dir="{tmp_path / "runs"}"', sources, f'ingest.corrupt_gzip="{mode}"'])
    stats = ingest_corpus(settings, "gz", progress=False)
    ((locator, reason, detail),) = query(settings, "SELECT locator, reason, detail FROM quarantine")
    assert reason == "bad_file" and "CRC check failed" in detail
    if mode == "drop":  # the default: nothing from a file known to be damaged somewhere
        assert locator == "file" and "none of its records were used" in detail
        assert stats.documents == 2
    else:
        assert locator == f"line:{readable + 1}" and stats.documents == readable + 2


def test_a_truncated_gzip_keeps_what_was_read_under_either_mode(tmp_path):
    data = gzip.compress(jsonl(*good_records("cut", 3000, seed=7)), mtime=0)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    stats = ingest_corpus(settings_for(tmp_path / "runs", path), "cut", progress=False)
    assert stats.quarantine_by_reason == {"bad_file": 1} and stats.documents > 1000


def test_parquet_timestamps_python_cannot_hold_cost_their_row_only(tmp_path):
    stamps = pa.array([10**15, 0], pa.int64()).cast(pa.timestamp("s"))
    with pytest.raises((OverflowError, ValueError)):
        stamps.to_pylist()  # what used to end the run
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": stamps, "id": ["a", "b"]}), path)
    settings = settings_for(tmp_path / "runs", path)
    with pytest.raises(Exception, match="no usable documents"):
        ingest_corpus(settings, "ts", progress=False)
    assert query(settings, "SELECT locator, reason FROM quarantine ORDER BY locator") == [
        ("row:0", "wrong_type"), ("row:1", "wrong_type")]


def test_a_hugging_face_stream_that_breaks_on_its_data_is_one_row(tmp_path):
    """A data error ends that stream as `bad_file` (the run goes on); only connection errors raise (retried)."""
    broken = tmp_path / "hf.jsonl"
    broken.write_bytes(jsonl(*good_records("hf", 2, seed=9)) + b'{"text": broken\n')
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl(*good_records("after-hf", 2, seed=10)))
    sources = f'ingest.sources=[{{hf="json", hf_data_files=["{broken}"]}}, {{path="{good}"}}]'
    settings = load_settings(None, [f'run_dir="{tmp_path / "runs"}"', sources])
    stats = ingest_corpus(settings, "hf", progress=False)
    ((source, reason, detail),) = query(settings, "SELECT source, reason, detail FROM quarantine")
    assert (source, reason) == ("hf:json[train]", "bad_file") and "JSON parse error" in detail
    assert {d for (d,) in query(settings, "SELECT doc_id FROM documents")} >= {"after-hf-0", "after-hf-1"}
    assert stats.documents >= 2
