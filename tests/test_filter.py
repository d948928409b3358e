"""The filter stage: each filter rejects what it must and keeps good text; the stage on a real DuckDB file.

Filters run for real (datatrove, py3langid); the stage test ingests a small corpus into a DuckDB file, filters
it, re-filters with other thresholds without re-ingesting, and reads the pool back through the same queries
the downstream stages use.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core import db
from core.artifacts import Filtered, Ingested
from core.config import ConfigError, Settings, load_settings
from runtime.policies import STAGE_SECTIONS
from tasks import filter as filter_stage
from tasks.filter import filter_documents, filter_task
from tasks.filter.rules import FILTER_NAMES, DocumentFilters, check_filters
from tasks.ingest import ingest_corpus

PROSE = (
    "The river rises in the hills above the town and runs for about forty miles before it reaches the sea. "
    "In the spring the water is high and fast, and the farmers who live along its banks have learned to move "
    "their animals to higher ground when the rain does not stop. The old bridge, which was built of stone more "
    "than two hundred years ago, has survived every flood so far. Children still fish from it in the summer, "
    "and on warm evenings the whole village seems to gather there to talk about the weather and the harvest. "
    "Nobody remembers who first called it the Sunday bridge."
)
CODE_DOC = (
    "The itertools module contains a number of commonly used iterators as well as functions for combining "
    "several iterators. This section will introduce the module's contents by showing small examples. The "
    "module's functions fall into a few broad classes: functions that create a new iterator based on an "
    "existing iterator, and functions for treating an iterator's elements as function arguments.\n\n"
    "itertools.count(start, step) returns an infinite stream of evenly spaced values. You can optionally "
    "supply the starting number, which defaults to 0, and the interval between numbers, which defaults to 1."
)
FRENCH = (
    "La rivière prend sa source dans les collines au-dessus de la ville et coule sur une soixantaine de "
    "kilomètres avant d'atteindre la mer. Au printemps, l'eau est haute et rapide, et les paysans qui vivent "
    "le long de ses rives ont appris à déplacer leurs bêtes vers les hauteurs quand la pluie ne cesse pas."
)
STEMMED = ("anarch origin term abus first use against earli work class radic includ digger english revolut "
           "sans culott french revolut whilst term still use pejor wai describ act us violent mean destroi "
           "organ societi also taken posit label self defin anarchist word anarch deriv ancient greek "
           "anarchia mean without ruler compos prefix without word archo mean ruler leader suffix denot "
           "abstract noun sixteenth centuri english word anarchi first appear meanin disord later "
           "applic histori polit philosophi movement classic period")
TWEET = "Ebola treatments - how far off? http://bbc.in/1qnvA5A"


def only(name: str, *overrides: str) -> DocumentFilters:
    """The filters of the default settings with every one but `name` switched off."""
    off = [f"filter.{other}.enabled=false" for other in FILTER_NAMES if other != name]
    return DocumentFilters(load_settings(None, [*off, f"filter.{name}.enabled=true", *overrides]).filter)


def verdict(filters: DocumentFilters, text: str) -> str | None:
    rejections = filters.judge(text)
    return rejections[0].detail if rejections else None


def test_language_rejects_confident_other_languages_and_keeps_unsure_text():
    filters = only("language")
    assert verdict(filters, FRENCH).startswith("fr (p=")
    assert verdict(filters, PROSE) is None and verdict(filters, CODE_DOC) is None
    assert verdict(filters, TWEET) is None  # a headline gets an unsure guess: kept
    assert verdict(only("language", 'filter.language.languages=["en", "fr"]'), FRENCH) is None


def test_gopher_quality_rejects_stemmed_text_and_keeps_prose_code_docs_and_tweets():
    filters = only("gopher_quality")
    assert verdict(filters, STEMMED) == "gopher_enough_stop_words"
    assert verdict(filters, PROSE) is None and verdict(filters, CODE_DOC) is None
    assert verdict(filters, TWEET) is None  # under skip_below_words: not judged
    assert verdict(only("gopher_quality", "filter.gopher_quality.skip_below_words=1"), TWEET) is not None
    assert verdict(only("gopher_quality", "filter.gopher_quality.min_stop_words=0"), STEMMED) is None


def test_gopher_repetition_rejects_repeated_lines_and_keeps_prose():
    filters = only("gopher_repetition")
    boilerplate = "\n".join(["Click here to unsubscribe from this mailing list today."] * 12)
    assert verdict(filters, boilerplate) == "dup_line_char_frac"
    assert verdict(filters, PROSE) is None and verdict(filters, CODE_DOC) is None


def test_fineweb_quality_rejects_unpunctuated_lists_and_keeps_prose():
    filters = only("fineweb_quality")
    listing = "\n".join(f"item number {i} of a long list of links and menu entries here" for i in range(20))
    assert verdict(filters, listing) == "line_punct_ratio"
    assert verdict(filters, PROSE) is None


def test_c4_quality_rejects_curly_brackets_and_lorem_ipsum_and_keeps_prose():
    filters = only("c4_quality")
    assert verdict(filters, PROSE.replace("stone", "stone {and mortar}")) == "curly_bracket"
    assert verdict(filters, "Lorem ipsum dolor sit amet. " + PROSE) == "lorem_ipsum"
    assert verdict(filters, PROSE) is None
    assert verdict(only("c4_quality", "filter.c4_quality.filter_curly_bracket=false"),
                   PROSE.replace("stone", "stone {and mortar}")) is None


def test_c4_sentences_are_linear_in_text_without_punctuation():
    """datatrove's fallback sentence regex is quadratic here (13 s at 8,000 characters); ours is not."""
    assert verdict(only("c4_quality"), "word " * 40_000) == "too_few_sentences"


def test_switched_off_filters_do_not_run_and_all_on_run_in_order():
    off = [f"filter.{name}.enabled=false" for name in FILTER_NAMES]
    assert DocumentFilters(load_settings(None, off).filter).names == []
    on = [f"filter.{name}.enabled=true" for name in FILTER_NAMES]
    assert DocumentFilters(load_settings(None, on).filter).names == list(FILTER_NAMES)
    assert DocumentFilters(load_settings().filter).names == ["language", "gopher_quality", "gopher_repetition"]


def test_an_unknown_language_is_one_line_naming_the_setting():
    with pytest.raises(ConfigError) as info:
        check_filters(load_settings(None, ['filter.language.languages=["en", "klingon"]']))
    assert str(info.value).startswith("setting `filter.language.languages`: 'klingon'") and "\n" not in str(info.value)


# ------------------------------------------------------------------------------- the stage on DuckDB


LIBRARY = (
    "When the library reopened after the winter, the first thing visitors noticed was the light. The architects "
    "had replaced the old roof with glass panels, so that readers on the upper floor could work without lamps "
    "until late in the afternoon. Some of the older members complained that the new chairs were too hard, but "
    "most of them agreed that the building had never looked better, and the number of people who came to "
    "borrow books in the first month was twice as high as in the same month of the previous year."
)
BREAD = (
    "Bread has been made in much the same way for thousands of years. Flour is mixed with water and a little "
    "salt, and yeast is added so that the dough will rise. After it has been kneaded and left to rest, the "
    "dough is shaped into loaves and baked in a hot oven. Bakers often say that the most important ingredient "
    "is time, because a dough that is allowed to rise slowly develops a deeper flavour and a better crust than "
    "one that is rushed into the oven before it is ready."
)


def corpus(path: Path) -> dict[str, str]:
    docs = {"prose": PROSE, "code": CODE_DOC, "french": FRENCH, "stemmed": STEMMED, "tweet": TWEET,
            "boiler": "\n".join(["Click here to unsubscribe from this mailing list today."] * 12),
            "library": LIBRARY, "bread": BREAD}
    path.write_text("".join(json.dumps({"id": k, "text": v, "domain": "test"}) + "\n" for k, v in docs.items()))
    return docs


def rows(settings: Settings, name: str, params) -> list[tuple]:
    with db.connect(settings.database, read_only=True) as con:
        return db.rows(con, name, params)


def query(settings: Settings, sql: str) -> list[tuple]:
    with db.connect(settings.database, read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture
def ingested(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setattr(filter_stage, "PAGE_SIZE", 3)  # several pages and flushes on a small corpus
    docs = corpus(tmp_path / "corpus.jsonl")
    settings = load_settings(None, [f'run_dir="{tmp_path / "runs"}"', f'ingest.sources=[{{path="{tmp_path / "corpus.jsonl"}"}}]'])
    assert ingest_corpus(settings, "f", progress=False).documents == len(docs)
    return settings


def test_stage_records_verdicts_quarantines_and_the_pool_skips_them(ingested):
    settings = ingested
    stats = filter_documents(settings, Ingested("f"), progress=False)
    assert (stats.documents, stats.filtered, stats.kept) == (8, 3, 5)
    assert stats.by_filter == {"language": 1, "gopher_quality": 3, "gopher_repetition": 1}  # they overlap
    assert stats.first_by_filter == {"language": 1, "gopher_quality": 2, "gopher_repetition": 0}
    assert query(settings, "SELECT doc_id, filter FROM filtered_documents ORDER BY ALL") == [
        ("boiler", "gopher_quality"), ("boiler", "gopher_repetition"), ("french", "gopher_quality"),
        ("french", "language"), ("stemmed", "gopher_quality")]
    assert query(settings, "SELECT reason, detail FROM quarantine ORDER BY ALL") == [  # one row per document
        ("gopher_quality", "gopher_enough_stop_words"),
        ("gopher_quality", "gopher_enough_stop_words; also gopher_repetition: dup_line_char_frac"),
        ("language", "fr (p=1.00; keeps en, pcm); also gopher_quality: gopher_enough_stop_words")]
    pool = {"prose", "code", "tweet", "library", "bread"}
    assert rows(settings, "count_documents", {"run_id": "f"}) == [(5,)]
    page = rows(settings, "documents_page", {"run_id": "f", "after": "", "page_size": 100})
    assert {doc_id for doc_id, _ in page} == pool
    assert {r[0] for r in rows(settings, "pool_documents_metadata", {"run_id": "f"})} == pool
    assert rows(settings, "count_ingested_documents", {"run_id": "f"}) == [(8,)]  # nothing was deleted
    metrics = stats.as_metrics()
    assert metrics["filter.language"] == 1.0 and metrics["filter.kept"] == 5.0
    assert all(isinstance(v, float) and re.fullmatch(r"[A-Za-z0-9_.\-]+", k) for k, v in metrics.items())


def test_refiltering_with_other_thresholds_needs_no_reingest(ingested):
    settings = ingested
    filter_documents(settings, Ingested("f"), progress=False)
    looser = settings.model_copy(update={"filter": load_settings(None, [
        "filter.language.enabled=false", "filter.gopher_quality.min_stop_words=0"]).filter})
    stats = filter_documents(looser, Ingested("f"), progress=False)
    assert stats.by_filter == {"gopher_quality": 0, "gopher_repetition": 1} and stats.filtered == 1
    assert query(settings, "SELECT doc_id FROM filtered_documents") == [("boiler",)]
    assert query(settings, "SELECT reason FROM quarantine") == [("gopher_repetition",)]  # the old rows are gone
    assert rows(settings, "count_documents", {"run_id": "f"}) == [(7,)]
    ingest_corpus(settings, "f", progress=False)  # a re-ingest drops the verdicts with the documents
    assert query(settings, "SELECT count(*) FROM filtered_documents") == [(0,)]


def test_stats_of_a_run_with_several_rejections_per_document(ingested):
    settings = load_settings(None, [f'run_dir="{ingested.run_dir}"', "filter.gopher_quality.skip_below_words=1",
                                    "filter.c4_quality.enabled=true", "filter.c4_quality.skip_below_words=1"])
    stats = filter_documents(settings, Ingested("f"), progress=False)
    assert isinstance(stats, Filtered) and stats.filters == ["language", "gopher_quality", "gopher_repetition",
                                                                "c4_quality"]
    assert sum(stats.first_by_filter.values()) == stats.filtered < sum(stats.by_filter.values())
    ((detail,),) = query(settings, "SELECT detail FROM quarantine WHERE locator = 'line:5'")  # the tweet
    assert "; also c4_quality: too_few_sentences" in detail


def test_the_task_wraps_the_function_and_caches_on_its_sections():
    assert filter_task.name == "filter" and filter_task.fn is filter_documents
    assert STAGE_SECTIONS["filter"] == ("ingest", "filter")
    assert all("filter" in STAGE_SECTIONS[stage] for stage in ("embed", "cluster", "tokenizer"))
