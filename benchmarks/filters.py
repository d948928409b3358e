"""The filter benchmark (issue 15): what each quality filter removes from the shared corpus, per domain.

Ingests the shared corpus (115k records) with the default ingest settings, then runs the real filter stage
(`tasks.filter.filter_documents`) with every filter switched on, under two profiles: `influmix` (the
thresholds of `filter.*`, i.e. the defaults unless `--set` says otherwise) and `datatrove` (datatrove's own
web thresholds: every filter judges every document, Gopher's 50-word minimum). For each: the share of
documents and of characters each filter rejects, overall and per domain, the overlap between filters, the
rules that fired and a seeded sample of what each filter rejected (to be read: false positives are named in
README.md). Then each filter's time per 1k documents alone, and the language-ID candidates that ship their
model (py3langid, langid, lingua -- those installed) on the French/Spanish wiki records plus a sample.
Writes `benchmarks/results/filters.json` and `filters.md`.

    OMP_NUM_THREADS=1 python -m benchmarks.filters            # about 15 min on 2 CPU cores
    python -m benchmarks.filters --max-records 5000 --out /tmp/filters.json --workdir /tmp/filters
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import SHARED_CORPUS
from benchmarks.filters_report import language_id_candidates, write_markdown
from core import db
from core.artifacts import Ingested
from core.config import FilterSettings, Settings, load_settings
from tasks.filter import filter_documents
from tasks.filter.rules import FILTER_NAMES, DocumentFilters
from tasks.ingest import ingest_corpus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUN_ID = "filters"
ALL_ON = [f"filter.{name}.enabled=true" for name in FILTER_NAMES]
DATATROVE = [*(f"filter.{name}.skip_below_words=1" for name in FILTER_NAMES), "filter.gopher_quality.min_doc_words=50",
             "filter.gopher_repetition.dup_line_frac=0.3", "filter.gopher_repetition.dup_para_frac=0.3",
             "filter.gopher_quality.max_non_alpha_words_ratio=0.8", "filter.gopher_quality.max_ellipsis_lines_ratio=0.3",
             'filter.language.languages=["en"]',
             "filter.gopher_repetition.top_n_grams=[[2, 0.2], [3, 0.18], [4, 0.16]]",
             "filter.gopher_repetition.dup_n_grams=[[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.1]]"]
PROFILES = {"defaults": None, "influmix": [], "datatrove": DATATROVE}
"""`defaults`: only the filters on by default (what a run's pool loses); the others switch every filter on."""
TIMING_DOCS = 3_000
SAMPLES_PER_DOMAIN = 6


def settings_for(workdir: Path, corpus: Path, max_records: int | None, overrides: list[str]) -> Settings:
    cap = f", max_records={max_records}" if max_records else ""
    return load_settings(None, [f'run_dir="{workdir}"', f'ingest.sources=[{{path="{corpus}"{cap}}}]', *overrides])


def shares(part: dict[str, tuple[int, int]], whole: dict[str, tuple[int, int]]) -> dict[str, dict[str, float]]:
    """{domain: {documents, share_documents, share_chars}} of `part` (domain -> (docs, chars)) in `whole`."""
    return {domain: {"documents": part.get(domain, (0, 0))[0],
                     "share_documents": round(part.get(domain, (0, 0))[0] / docs, 4),
                     "share_chars": round(part.get(domain, (0, 0))[1] / max(chars, 1), 4)}
            for domain, (docs, chars) in sorted(whole.items())}


def overall(part: dict[str, tuple[int, int]], whole: dict[str, tuple[int, int]]) -> dict[str, float]:
    docs, chars = (sum(v[i] for v in part.values()) for i in (0, 1))
    all_docs, all_chars = (sum(v[i] for v in whole.values()) for i in (0, 1))
    return {"documents": docs, "share_documents": round(docs / all_docs, 4), "chars": chars,
            "share_chars": round(chars / all_chars, 4)}


def rule_of(name: str, detail: str) -> str:
    """The rule that fired: datatrove's reason, or the language py3langid saw."""
    return detail.split(" ", 1)[0] if name == "language" else detail


def subset_of(doc_id: str) -> str:
    """The part of the shared corpus a document comes from: `pydoc:genindex`, `spamassassin:easy-ham`, ..."""
    source, _, rest = doc_id.partition(":")
    kind = re.match(r"[a-z]+(?:[-_.][a-z]+)*", rest)
    return f"{source}:{kind.group()}" if kind else source


def time_filters(settings: Settings, texts: list[str]) -> dict[str, float]:
    """Milliseconds per 1k documents of each filter alone (its own skip_below_words applies)."""
    out = {}
    for name in FILTER_NAMES:
        alone = FilterSettings(**{other: getattr(settings.filter, other).model_copy(update={"enabled": other == name})
                                  for other in FILTER_NAMES})
        filters = DocumentFilters(alone)
        filters.judge(texts[0])  # models loaded, imports done
        started = time.perf_counter()
        for text in texts:
            filters.judge(text)
        out[name] = round((time.perf_counter() - started) / len(texts) * 1e6, 1)
    return out


def measure_profile(settings: Settings, whole: dict[str, tuple[int, int]], texts: list[str]) -> dict[str, Any]:
    stats = filter_documents(settings, Ingested(RUN_ID), progress=True)
    with db.connect(settings.database, read_only=True) as con:
        counts = db.rows(con, "filter_counts", {"run_id": RUN_ID})
        union = {d: (n, c) for d, n, c in db.rows(con, "filter_union_by_domain", {"run_id": RUN_ID})}
        overlap = db.rows(con, "filter_overlap", {"run_id": RUN_ID})
        samples = db.rows(con, "filter_samples", {"run_id": RUN_ID, "per_domain": SAMPLES_PER_DOMAIN,
                                                  "seed": "0", "chars": 400})
        details = db.rows(con, "filter_details", {"run_id": RUN_ID})
    timing = time_filters(settings, texts)
    filters: dict[str, Any] = {}
    for name in FILTER_NAMES:
        part = {d: (n, c) for f, d, n, c in counts if f == name}
        rules = Counter((domain, rule_of(name, detail)) for f, domain, detail, _ in details if f == name)
        subsets = Counter(subset_of(doc_id) for f, _, _, doc_id in details if f == name)
        by_domain = shares(part, whole)
        for (domain, rule), n in sorted(rules.items()):
            by_domain[domain].setdefault("rules", {})[rule] = n
        overall_rules = Counter()
        for (_, rule), n in rules.items():
            overall_rules[rule] += n
        filters[name] = {**overall(part, whole), "by_domain": by_domain, "ms_per_1k_docs": timing[name],
                         "rules": dict(overall_rules.most_common(12)), "by_subset": dict(subsets.most_common()),
                         "settings": getattr(settings.filter, name).model_dump()}
    return {
        "stage_seconds": stats.seconds, "stage_ms_per_1k_docs": round(stats.seconds / stats.documents * 1e6, 1),
        "documents": stats.documents, "filters": filters,
        "any": {**overall(union, whole), "by_domain": shares(union, whole)},
        "overlap": {a: {b: n for a2, b, n in overlap if a2 == a} for a in FILTER_NAMES},
        "samples": {name: [{"domain": d, "doc_id": i, "rule": rule_of(name, det), "detail": det, "n_chars": n,
                            "text": t} for f, d, i, det, n, t in samples if f == name] for name in FILTER_NAMES},
    }


def fragment_shares(corpus: Path, thresholds: tuple[int, ...] = (10, 20, 30)) -> dict[str, Any]:
    """Per domain, the share of records with fewer visible characters than each candidate `ingest.min_chars`."""
    import gzip

    from tasks.ingest.clean import strip_invisible, visible_chars

    totals: Counter[str] = Counter()
    short = {t: Counter() for t in thresholds}
    with gzip.open(corpus, "rt", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            totals[record["domain"]] += 1
            visible = visible_chars(strip_invisible(record["text"]), max(thresholds))
            for t in thresholds:
                short[t][record["domain"]] += visible < t
    return {str(t): {"records": sum(short[t].values()), "share": round(sum(short[t].values()) / sum(totals.values()), 4),
                     "by_domain": {d: round(short[t][d] / n, 4) for d, n in sorted(totals.items())}}
            for t in thresholds}


def versions() -> dict[str, str]:
    from benchmarks.provenance import device_and_versions

    device, found = device_and_versions("cpu")
    for name in ("datatrove", "py3langid", "langid", "lingua-language-detector", "regex"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return {"device": device, **found}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(SHARED_CORPUS / "corpus.jsonl.gz"))
    parser.add_argument("--max-records", type=int, help="ingest only the corpus's first N records")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench-filters"))
    parser.add_argument("--out", default=str(RESULTS / "filters.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a filter.* setting of the influmix profile (the datatrove profile adds its own)")
    parser.add_argument("--reuse-ingest", action="store_true", help="keep the documents already in --workdir")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated subset of the profiles")
    parser.add_argument("--merge", action="store_true", help="keep the other profiles (and ingest figures) in --out")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    command = " ".join([Path(sys.executable).name, "-m", "benchmarks.filters", *(sys.argv[1:] if argv is None else argv)])
    base = settings_for(Path(args.workdir), Path(args.corpus), args.max_records, args.overrides)
    ingest = None
    with db.connect(base.database) as con:
        ingested = db.rows(con, "count_ingested_documents", {"run_id": RUN_ID})[0][0]
    if not (args.reuse_ingest and ingested):
        ingest = ingest_corpus(base, RUN_ID, progress=True).as_metrics()
    with db.connect(base.database, read_only=True) as con:
        whole = {d: (n, c) for d, n, c in db.rows(con, "ingested_by_domain", {"run_id": RUN_ID})}
        page = db.rows(con, "filter_documents_page", {"run_id": RUN_ID, "after": "", "page_size": 10**9})
    texts = [text for _, text, *_ in random.Random(0).sample(page, min(TIMING_DOCS, len(page)))]
    previous = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).exists() else {}
    profiles = dict(previous.get("profiles", {}))
    for kept in profiles.values():  # measured by an earlier command: keep saying which
        kept.setdefault("command", previous.get("command"))
        kept.setdefault("date", previous.get("date"))
    for name in args.profiles.split(","):
        extra = PROFILES[name]
        switches = [] if extra is None else [*ALL_ON, *extra]
        settings = settings_for(Path(args.workdir), Path(args.corpus), args.max_records, [*args.overrides, *switches])
        profiles[name] = {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                          "overrides": [*args.overrides, *(extra or [])], **measure_profile(settings, whole, texts)}
    profiles = {name: profiles[name] for name in PROFILES if name in profiles}
    result = {
        "benchmark": "filters", **versions(), "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "corpus": args.corpus,
        "ingest": ingest or previous.get("ingest", "reused"),
        "ingested_by_domain": {d: {"documents": n, "chars": c} for d, (n, c) in whole.items()},
        "enabled_by_default": [name for name in FILTER_NAMES if getattr(load_settings().filter, name).enabled],
        "min_chars_candidates": fragment_shares(Path(args.corpus)),
        "profiles": profiles, "language_id": language_id_candidates(page),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    write_markdown(result, out.with_suffix(".md"))
    return result


if __name__ == "__main__":
    main()
