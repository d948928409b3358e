"""Fuzzing the readers and cleaning: generated JSON values and raw bytes never raise, and lose no good record.

Hostile JSON values hold what `json.dumps` would never write: number literals past Python's 4,300-digit
int limit, `NaN` / `1e999`, lone surrogates, nesting past the recursion limit, in any field (text, id,
domain or an unread one). They are written as JSON lines, gzip'd JSON lines and JSON arrays, between good
records; raw byte lines (and raw bytes heading a file) go the same way. Each example runs the real readers
and `clean_record` in-process (no DuckDB: ingest's accounting is `tests/test_hostile.py`'s property).
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.config import IngestSettings, SourceSettings
from tasks.ingest.clean import CleanDoc, clean_record
from tasks.ingest.readers import BadRecord, RawRecord, iter_source


class Literal(str):
    """JSON text written as is: what json.dumps refuses or cannot produce."""


def to_json(value) -> str:
    if isinstance(value, Literal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: lone surrogates become \udXXX escapes, NaN/Infinity as such


LITERALS = st.one_of(
    st.integers(4_000, 9_000).map(lambda n: Literal("-" * (n % 2) + "9" * n)),  # around the int limit
    st.sampled_from([Literal(x) for x in ("1e999", "-1e999", "NaN", "Infinity", "-0", "1" * 5000 + ".5")]),
    st.integers(500, 3_000).map(lambda n: Literal("[" * n + "]" * n)),  # up to past the recursion limit
)
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=30),  # lone surrogates too
    LITERALS,
)
VALUES = st.recursive(LEAVES, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                     st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                      max_leaves=8)
RECORDS = st.fixed_dictionaries({}, optional={"id": VALUES, "text": VALUES, "domain": VALUES, "meta": VALUES})
HOSTILE = st.one_of(RECORDS, VALUES)

SOURCE = {"id_field": "id", "domain_field": "domain"}
INGEST = IngestSettings()
WORDS = ["alder", "birch", "cedar", "dunes", "ember", "fjord", "grove", "heath", "inlet", "juniper", "knoll", "larch", "marsh"]


def good_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"fuzz-good-{i}", "text": " ".join(rng.choices(WORDS, k=10)), "domain": "good"} for i in range(n)]


def interleave(good: list, hostile: list) -> list:
    """good[0], hostile[0], good[1], hostile[1], ...: a good record first, so no file starts hostile."""
    out = []
    for i in range(max(len(good), len(hostile))):
        out += good[i: i + 1] + hostile[i: i + 1]
    return out


def read_and_clean(path: Path) -> tuple[list, list]:
    """Every item of the file and the cleaning outcome of every raw record: nothing may raise."""
    source = SourceSettings(path=str(path), **SOURCE)
    items = list(iter_source(source))
    assert all(isinstance(item, RawRecord | BadRecord) for item in items)
    outcomes = [clean_record(item, source, INGEST) for item in items if isinstance(item, RawRecord)]
    assert all(isinstance(o, CleanDoc | BadRecord) for o in outcomes)
    return items, outcomes


def kept(outcomes: list) -> set[tuple[str, str]]:
    return {(o.doc_id, o.text) for o in outcomes if isinstance(o, CleanDoc)}


def expected(good: list[dict]) -> set[tuple[str, str]]:
    return {(r["id"], r["text"]) for r in good}


FUZZ = hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(hostile=st.lists(HOSTILE, max_size=6), compress=st.booleans())
def test_json_lines_of_hostile_values(tmp_path, hostile, compress):
    good = good_records(len(hostile) + 1, seed=len(hostile))
    lines = [to_json(v).encode() for v in interleave(good, hostile)]
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / ("fuzz.jsonl.gz" if compress else "fuzz.jsonl")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    items, outcomes = read_and_clean(path)
    assert len(items) == len(lines)
    assert expected(good) <= kept(outcomes)


@FUZZ
@given(hostile=st.lists(HOSTILE, max_size=6))
def test_json_arrays_of_hostile_values(tmp_path, hostile):
    """An array is decoded item by item: every good item before the first item that breaks it is kept."""
    good = good_records(len(hostile) + 1, seed=len(hostile))
    values = interleave(good, hostile)
    path = tmp_path / "fuzz.json"
    path.write_text("[" + ",\n".join(to_json(v) for v in values) + "]", encoding="utf-8")
    items, outcomes = read_and_clean(path)
    broken = [int(i.locator.split(":")[1]) for i in items if isinstance(i, BadRecord) and i.reason == "invalid_json"]
    assert len(broken) <= 1 and len(items) == (broken[0] + 1 if broken else len(values))
    before = broken[0] if broken else len(values)
    assert expected([v for v in values[:before] if v in good]) <= kept(outcomes)


@FUZZ
@given(lines=st.lists(st.binary(max_size=80), max_size=8), compress=st.booleans())
def test_raw_byte_lines(tmp_path, lines, compress):
    good = good_records(len(lines) + 1, seed=len(lines))
    raw = [line.replace(b"\n", b" ") for line in lines]
    all_lines = interleave([json.dumps(r).encode() for r in good], raw)
    data = b"\n".join(all_lines) + b"\n"
    path = tmp_path / ("fuzz.jsonl.gz" if compress else "fuzz.jsonl")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    items, outcomes = read_and_clean(path)
    assert len(items) == sum(1 for line in all_lines if line.removeprefix(b"\xef\xbb\xbf").strip())
    assert expected(good) <= kept(outcomes)


@FUZZ
@given(head=st.binary(max_size=64), body=st.binary(max_size=200),
       suffix=st.sampled_from([".jsonl", ".json", ".txt", ".jsonl.gz", ".parquet"]),
       cut=st.integers(0, 400))
def test_any_bytes_as_any_file_never_raise(tmp_path, head, body, suffix, cut):
    """Whole files of arbitrary bytes (BOM-like heads, truncated or fake gzip, fake Parquet): items, no error."""
    data = head + b"\n" + json.dumps(good_records(1, 0)[0]).encode() + b"\n" + body
    if suffix == ".jsonl.gz" and cut % 2:
        data = gzip.compress(data, mtime=0)[: cut or None]  # a real gzip, maybe cut short
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    read_and_clean(path)
