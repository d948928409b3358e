"""The model-aware stage loop, shared by the curation flow and the selection benchmark.

Stage s pretrains the proxy (from scratch, or from stage s-1's checkpoint on stage s-1's mixture), probes
it, distils the probes, measures the head of the ranking again (the cascade) and selects the next mixture. The flow runs the loop with the stage tasks; the
benchmark runs the very same loop with another selection step (MATES top-k, ...) and plain functions, so
what the benchmark measures is what `influmix run` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from core.artifacts import Corpus, StageResult
from core.config import Settings


@dataclass(frozen=True)
class StageSteps:
    """What one model-aware stage runs, in order; each step takes and returns stage artifacts."""

    pretrain: Callable[..., Any]
    probe: Callable[..., Any]
    distill: Callable[..., Any]
    select: Callable[..., Any]
    write: Callable[..., Any]
    rerank: Callable[..., Any] | None = None  # the cascade; None: select without a second look

    def with_select(self, select: Callable[..., Any]) -> StageSteps:
        """The same stage with another selection step (a benchmark's baseline selector)."""
        return replace(self, select=select)


def model_aware_stages(settings: Settings, corpus: Corpus, steps: StageSteps, stages: range | None = None,
                       done: list[StageResult] | None = None,
                       on_stage: Callable[[list[StageResult]], Any] | None = None) -> list[StageResult]:
    """Run `settings.stages` stages (or `stages`, continuing `done`), each on the previous one's mixture;
    `on_stage` sees the stages so far as each one finishes (the flow logs them to MLflow there)."""
    tokenized, embedded, clustered = corpus.tokenized, corpus.embedded, corpus.clustered
    results = list(done or [])
    for stage in stages if stages is not None else range(settings.stages):
        previous = results[-1] if results else None
        checkpoint = steps.pretrain(settings, tokenized, stage, previous.checkpoint if previous else None,
                                    previous.mixture if previous else None)
        probes = steps.probe(settings, checkpoint, tokenized, clustered)
        influence = steps.distill(settings, probes, tokenized, embedded)
        reranked = steps.rerank(settings, checkpoint, tokenized, influence, probes) if steps.rerank else None
        selection = steps.select(settings, influence, clustered, probes, reranked)
        mixture = steps.write(settings, selection)
        results.append(StageResult(checkpoint, probes, influence, selection, mixture, reranked))
        if on_stage is not None:
            on_stage(results)
    return results
