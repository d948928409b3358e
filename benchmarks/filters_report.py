"""The filter benchmark's language-ID comparison and its markdown summary (`benchmarks/filters.py` runs both)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.filter.rules import FILTER_NAMES, LANGUAGE_CHARS

FOREIGN = {"wikivital-fr": "fr", "wikivital-es": "es"}
ENGLISH_SAMPLE = 3_000
THRESHOLD = 0.65  # filter.language.threshold's default: rejected = top language not English at p >= this


def _py3langid() -> Callable[[str], tuple[str, float]]:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True).classify


def _langid() -> Callable[[str], tuple[str, float]]:
    from langid.langid import LanguageIdentifier, model

    return LanguageIdentifier.from_modelstring(model, norm_probs=True).classify


def _lingua() -> Callable[[str], tuple[str, float]]:
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def classify(text: str) -> tuple[str, float]:
        best = detector.compute_language_confidence_values(text)[0]
        return best.language.iso_code_639_1.name.lower(), best.value

    return classify


CANDIDATES = {"py3langid": _py3langid, "langid": _langid, "lingua-language-detector": _lingua}


def language_id_candidates(page: list[tuple]) -> dict[str, Any]:
    """Each installed candidate on every French/Spanish wiki record plus a seeded sample of the rest.

    `page` rows are (doc_id, text, source, locator, domain). The rest is counted as English, so its
    "rejected" share is an upper bound on false positives (the pool holds a few non-English emails and
    reviews: read the samples).
    """
    foreign = [(FOREIGN[r[0].split(":")[0]], r[4], r[1]) for r in page if r[0].split(":")[0] in FOREIGN]
    rest = [r for r in page if r[0].split(":")[0] not in FOREIGN]
    english = [("en", r[4], r[1]) for r in random.Random(0).sample(rest, min(ENGLISH_SAMPLE, len(rest)))]
    out: dict[str, Any] = {"foreign_documents": len(foreign), "english_sample": len(english),
                           "threshold": THRESHOLD, "chars_read": LANGUAGE_CHARS, "candidates": {}}
    for name, load in CANDIDATES.items():
        try:
            started = time.perf_counter()
            classify = load()
            loaded = time.perf_counter() - started
        except ImportError:
            out["candidates"][name] = "not installed"
            continue
        started = time.perf_counter()
        guesses = [classify(text[:LANGUAGE_CHARS]) for _, _, text in foreign + english]
        seconds = time.perf_counter() - started
        on_foreign, on_english = guesses[: len(foreign)], guesses[len(foreign):]
        rejected = Counter(domain for (_, domain, _), (lang, p) in zip(english, on_english, strict=True)
                           if lang != "en" and p >= THRESHOLD)
        out["candidates"][name] = {
            "load_seconds": round(loaded, 2), "ms_per_1k_docs": round(seconds / len(guesses) * 1e6, 1),
            "foreign_top1_correct": round(sum(lang == want for (want, _, _), (lang, _) in zip(foreign, on_foreign,
                                                                                           strict=True)) / len(foreign), 4),
            "foreign_rejected": round(sum(lang != "en" and p >= THRESHOLD for lang, p in on_foreign) / len(foreign), 4),
            "english_top1_en": round(sum(lang == "en" for lang, _ in on_english) / len(english), 4),
            "english_rejected": round(sum(rejected.values()) / len(english), 4),
            "english_rejected_by_domain": dict(sorted(rejected.items())),
        }
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _filter_table(profile: dict[str, Any], domains: list[str], enabled: list[str] | None,
                  names: list[str]) -> list[str]:
    head = ["filter", *(["on by default"] if enabled is not None else []), "docs removed", "chars removed",
            *domains, "ms / 1k docs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in [*names, "any"]:
        row = profile["filters"][name] if name in profile["filters"] else profile["any"]
        cells = [f"`{name}`" if name != "any" else "**any filter**"]
        if enabled is not None:
            cells.append("" if name == "any" else ("yes" if name in enabled else "no"))
        cells += [_pct(row["share_documents"]), _pct(row["share_chars"]),
                  *(_pct(row["by_domain"][d]["share_documents"]) for d in domains),
                  str(row.get("ms_per_1k_docs", profile["stage_ms_per_1k_docs"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(result: dict[str, Any], path: Path) -> None:
    domains = sorted(result["ingested_by_domain"])
    docs = sum(v["documents"] for v in result["ingested_by_domain"].values())
    intro = (f"On {result['device']}, {result['date']}. Shares of documents (per domain: of "
             "that domain's documents) each filter rejects on its own; filters overlap (see filters.json). The "
             "`any filter` row's time is the whole stage's, per 1k documents.")
    lines = [f"# Quality filters on the shared corpus ({docs:,} documents after ingest)", "", intro, ""]
    for name, profile in result["profiles"].items():
        titles = {"defaults": "The default settings: what a run's pool loses",
                  "influmix": "Every filter on, influmix thresholds",
                  "datatrove": "Every filter on, datatrove's own web thresholds (every document judged, Gopher's "
                               "50-word minimum)"}
        names = result["enabled_by_default"] if name == "defaults" else list(FILTER_NAMES)
        enabled = result["enabled_by_default"] if name == "influmix" else None
        lines += [f"## {titles.get(name, name)}", "", f"`{profile.get('command', result['command'])}`", "",
                  *_filter_table(profile, domains, enabled, names), ""]
    influmix = result["profiles"].get("influmix")
    if influmix:
        lines += ["## Overlap (every filter on, influmix thresholds): documents both filters reject", "",
                  "| | " + " | ".join(f"`{b}`" for b in FILTER_NAMES) + " |", "|" + "---|" * (len(FILTER_NAMES) + 1)]
        for a in FILTER_NAMES:
            lines.append(f"| `{a}` | " + " | ".join(str(influmix["overlap"][a].get(b, 0)) for b in FILTER_NAMES) + " |")
        lines.append("")
    lid = result["language_id"]
    heading = (f"## Language ID candidates that ship their model ({lid['foreign_documents']} French/Spanish wiki "
               f"records + {lid['english_sample']} others; rejected = not English at p >= {lid['threshold']})")
    columns = "| package | ms / 1k docs | load s | fr/es top-1 correct | fr/es rejected | others top-1 en | others rejected |"
    lines += [heading, "", columns, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in lid["candidates"].items():
        if isinstance(row, str):
            lines.append(f"| {name} | {row} | | | | | |")
            continue
        lines.append(f"| {name} | {row['ms_per_1k_docs']} | {row['load_seconds']} | {_pct(row['foreign_top1_correct'])} "
                     f"| {_pct(row['foreign_rejected'])} | {_pct(row['english_top1_en'])} | "
                     f"{_pct(row['english_rejected'])} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
