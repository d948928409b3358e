"""Filter: judge every ingested document with the quality filters of `filter.*`, between ingest and embed.

Each enabled filter (`tasks/filter/rules.py`: language ID, Gopher quality and repetition, FineWeb, C4) judges
every document on its own, so the counts per filter are independent and their overlap can be read off. A
rejected document keeps its row in `documents`; its verdicts go to `filtered_documents` (one row per
rejecting filter) and one quarantine row names the first filter, in `FILTER_NAMES` order, that rejected it
(reason = that filter, detail = its own reason and the other filters that agreed, excerpt = the text's
start). Every downstream read of the pool goes through the `pool_documents` view, which leaves the
rejected documents out. So a re-run of this stage with other thresholds needs no re-ingest: it deletes its
verdicts and quarantine rows and judges the documents anew, all in one transaction.

Streaming: documents are read in keyset pages of `PAGE_SIZE` (the corpus is never held in memory) and
verdicts reach DuckDB in Arrow batches.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
from prefect import task
from tqdm.auto import tqdm

from core import db
from core.artifacts import Filtered, Ingested
from core.config import Settings
from runtime.policies import STAGE_CACHE
from tasks.filter.rules import FILTER_NAMES, DocumentFilters, Rejection, check_filters

__all__ = ["FILTER_NAMES", "check_filters", "filter_documents", "filter_task"]

log = logging.getLogger(__name__)

PAGE_SIZE = 1_000
EXCERPT_CHARS = 200


def _pages(con, run_id: str):
    """Pages of (doc_id, text, source, locator, domain) over every ingested document, in doc_id order."""
    after = ""
    while True:
        page = db.records(con, "filter_documents_page", {"run_id": run_id, "after": after, "page_size": PAGE_SIZE})
        if not page:
            return
        yield page
        after = page[-1].doc_id


def quarantine_detail(rejections: list[Rejection]) -> str:
    first, *others = rejections
    also = "; also " + ", ".join(f"{r.filter}: {r.detail}" for r in others) if others else ""
    return f"{first.detail}{also}"[:500]


class _Rows:
    """Rows for one `sql/` insert statement, flushed as an Arrow table every PAGE_SIZE rows."""

    def __init__(self, con, statement: str, columns: list[str]):
        self.con, self.statement, self.columns, self.rows = con, statement, columns, []

    def add(self, *values) -> None:
        self.rows.append(values)
        if len(self.rows) >= PAGE_SIZE:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            table = pa.table(dict(zip(self.columns, zip(*self.rows, strict=True), strict=True)))
            db.insert_arrow(self.con, self.statement, table)
            self.rows = []


def filter_documents(settings: Settings, ingested: Ingested, progress: bool = True) -> Filtered:
    """Judge the run's ingested documents with `settings.filter`; verdicts replace any earlier ones."""
    check_filters(settings)
    run_id = ingested.run_id
    filters = DocumentFilters(settings.filter)
    stats = Filtered(run_id=run_id, filters=filters.names, by_filter=dict.fromkeys(filters.names, 0),
                        chars_by_filter=dict.fromkeys(filters.names, 0), first_by_filter=dict.fromkeys(filters.names, 0))
    started = time.perf_counter()
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_run_filtered", [run_id])
        db.run(con, "delete_filter_quarantine", {"run_id": run_id, "filters": list(FILTER_NAMES)})
        total = db.records(con, "count_ingested_documents", {"run_id": run_id})[0].documents
        verdicts = _Rows(con, "insert_filtered_documents", ["run_id", "doc_id", "filter", "detail"])
        quarantine = _Rows(con, "insert_quarantine", ["run_id", "source", "locator", "reason", "detail", "excerpt"])
        with tqdm(total=total, desc="filter", unit="doc", disable=None if progress else True, mininterval=0.5) as bar:
            for page in _pages(con, run_id):
                for doc in page:
                    doc_id, text, source, locator = doc.doc_id, doc.text, doc.source, doc.locator
                    rejections = filters.judge(text)
                    for rejection in rejections:
                        verdicts.add(run_id, doc_id, rejection.filter, rejection.detail[:500])
                        stats.by_filter[rejection.filter] += 1
                        stats.chars_by_filter[rejection.filter] += len(text)
                    if rejections:
                        first = rejections[0].filter
                        stats.first_by_filter[first] += 1
                        quarantine.add(run_id, source, locator, first, quarantine_detail(rejections),
                                       text[:EXCERPT_CHARS])
                stats.documents += len(page)
                bar.update(len(page))
        verdicts.flush()
        quarantine.flush()
    stats.filtered = sum(stats.first_by_filter.values())
    stats.kept = stats.documents - stats.filtered
    stats.errors = dict(filters.errors)
    stats.seconds = round(time.perf_counter() - started, 3)
    log.info("filter %s: %s", run_id, stats)
    return stats


filter_task = task(filter_documents, name="filter", cache_policy=STAGE_CACHE, persist_result=True)
