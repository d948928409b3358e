"""The document filters the `filter` stage runs: datatrove's heuristics and py3langid, one verdict each.

* `language` -- py3langid, whose model ships inside the package (datatrove's LanguageFilter downloads
  fastText's lid.176 at run time, and fasttext-langdetect does too). A document is rejected only when its
  top language is not in `filter.language.languages` *and* has at least `threshold` probability: a short
  headline or tweet gets an unsure guess (py3langid calls many English headlines Nigerian Pidgin at p 0.1-0.5),
  and unsure is kept. Only the first `LANGUAGE_CHARS` characters are read: the cost is linear in length and a
  document's language does not change half-way often enough to pay for more.
* `gopher_quality`, `gopher_repetition`, `fineweb_quality`, `c4_quality` -- datatrove's filters, called on
  single Documents with the thresholds of their settings section (passed through under datatrove's names).

Departures from datatrove's defaults, each measured on the shared corpus (benchmarks/results/filters.md,
README "Quality filters"), each to keep good documents of some domain that web-tuned rules reject:
* Words are whitespace-separated (`WhitespaceWords`), as in the Gopher paper, not spaCy tokens. spaCy splits
  punctuation into tokens of its own, so Gopher's "80% of words contain a letter" rule rejects most
  dictionary pages and Python docs (their punctuation density), and it is 15x slower.
* Each filter judges only documents of at least `skip_below_words` words. Gopher drops documents under 50
  words outright; this pool holds tweets and reviews by design, and ratio rules (stop words, top n-gram
  share) say nothing about a ten-word text, so they are kept and left to the influence model.
* Thresholds where reference text is repetitive or symbol-dense by design (see the settings' descriptions in
  core/config.py): letters in half the words, not 80%; no end-of-line-ellipsis rule; repetition by
  characters, not by line/paragraph counts; n-gram repetition at 1.5x / 2x Gopher's shares; 'pcm' kept
  with 'en'.

Sentences (C4's `min_num_sentences`) end at datatrove's terminal punctuation, matched in linear time:
datatrove's own fallback sentence regex is quadratic on text without punctuation (13 s for 8,000 characters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import regex

from core.config import ConfigError, FilterSettings, LanguageFilterSettings

FILTER_NAMES = ("language", "gopher_quality", "gopher_repetition", "fineweb_quality", "c4_quality")
"""Every filter, in the order they are applied; a rejected document's quarantine row names the first."""
LANGUAGE_CHARS = 4_000
Judge = Callable[[str], "str | None"]  # text -> None (keep) or why it is rejected


@dataclass(frozen=True, slots=True)
class Rejection:
    filter: str
    detail: str


@cache
def _word_tokenizer():
    """datatrove's WordTokenizer interface over whitespace words and linear-time sentences."""
    from datatrove.utils.text import TERMINAL_PUNCTUATION
    from datatrove.utils.word_tokenizers import WordTokenizer

    ends = regex.escape("".join(sorted(TERMINAL_PUNCTUATION)))
    piece = regex.compile(rf"[^{ends}\n]+(?:[{ends}\n]+[\"'”]?)?|[{ends}\n]+[\"'”]?")  # no backtracking past a run

    class WhitespaceWords(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            spans = []
            for match in piece.finditer(text):
                body = match.group().rstrip("\"'”")
                if body and body[-1] in TERMINAL_PUNCTUATION or body.endswith("\n"):
                    spans.append(match.span())
            return spans

        def sent_tokenize(self, text: str) -> list[str]:
            return [s for a, b in self.span_tokenize(text) if (s := text[a:b].strip())]

    return WhitespaceWords()


@cache
def language_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> list[str]:
    return sorted(language_identifier().labels)


def language_judge(cfg: LanguageFilterSettings) -> Judge:
    identifier, keep = language_identifier(), set(cfg.languages)
    shown = ", ".join(cfg.languages)

    def judge(text: str) -> str | None:
        language, probability = identifier.classify(text[:LANGUAGE_CHARS])
        if language in keep or probability < cfg.threshold:
            return None
        return f"{language} (p={probability:.2f}; keeps {shown})"

    return judge


def datatrove_judge(name: str, cfg) -> Judge:
    """One of datatrove's filters with the settings section's thresholds, as a text -> verdict function."""
    from datatrove.data import Document
    from datatrove.pipeline.filters.base_filter import get_filter_result
    from datatrove.pipeline.filters.c4_filters import C4QualityFilter
    from datatrove.pipeline.filters.fineweb_quality_filter import FineWebQualityFilter
    from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
    from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter

    classes = {"gopher_quality": GopherQualityFilter, "gopher_repetition": GopherRepetitionFilter,
               "fineweb_quality": FineWebQualityFilter, "c4_quality": C4QualityFilter}
    step = classes[name](**cfg.model_dump(exclude={"enabled", "skip_below_words"}), language=_word_tokenizer())

    def judge(text: str) -> str | None:
        keep, reason = get_filter_result(step.filter(Document(text=text, id="")))
        return None if keep else (reason or name)

    return judge


class DocumentFilters:
    """The enabled filters of `filter.*`, applied to one text at a time."""

    def __init__(self, cfg: FilterSettings):
        self.judges: list[tuple[str, int, Judge]] = []
        for name in FILTER_NAMES:
            section = getattr(cfg, name)
            if cfg.enabled and section.enabled:
                judge = language_judge(section) if name == "language" else datatrove_judge(name, section)
                self.judges.append((name, section.skip_below_words, judge))
        self.errors: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        return [name for name, *_ in self.judges]

    def judge(self, text: str) -> list[Rejection]:
        """Every enabled filter's rejection of `text`, in FILTER_NAMES order.

        A filter that raises on a text (a library bug) does not judge it: the document is kept and the
        error counted, since one odd document must not end the stage.
        """
        words = len(text.split())
        rejections = []
        for name, skip_below_words, judge in self.judges:
            if words < skip_below_words:
                continue
            try:
                detail = judge(text)
            except Exception:  # noqa: BLE001 - see the docstring
                self.errors[name] = self.errors.get(name, 0) + 1
                continue
            if detail is not None:
                rejections.append(Rejection(name, detail))
        return rejections


def check_filters(settings) -> None:
    """Fail fast, before any heavy work, on a language py3langid does not know (one line, names the setting)."""
    cfg = settings.filter.language
    if not cfg.enabled:
        return
    unknown = sorted(set(cfg.languages) - set(known_languages()))
    if unknown:
        raise ConfigError(f"setting `filter.language.languages`: {', '.join(map(repr, unknown))} is not a language "
                          f"py3langid knows (ISO 639-1 codes such as 'en', 'fr', 'es'; {len(known_languages())} known)")
