"""The curation flow: ingest -> embed -> cluster -> per stage (pretrain -> probe -> distil -> select -> write) -> track."""

from __future__ import annotations

from prefect import flow, runtime

from core.config import load_settings
from influmix.report import RunResult, StageResult, run_metrics
from tasks.cluster import cluster_task
from tasks.distill import distill_task
from tasks.embed import embed_task
from tasks.ingest import ingest_task, reference_task
from tasks.mixture import write_mixture_task
from tasks.pretrain import pretrain_task, tokenizer_task
from tasks.probe import probe_task
from tasks.publish import publish_task
from tasks.runs import finish_run_task, mark_run_failed, start_run_task
from tasks.select import select_task
from tasks.track import track_task


@flow(name="curate", log_prints=True, on_failure=[mark_run_failed])
def curate(config: str | None = None, overrides: list[str] | None = None) -> RunResult:
    """Curate a pretraining mixture from the configured corpus (TOML/YAML `config` plus `key=value` overrides)."""
    settings = load_settings(config, overrides)
    flow_run_id = str(runtime.flow_run.id) if runtime.flow_run.id else None
    run_id = start_run_task(settings, flow_run_id)

    ingested = ingest_task(settings, run_id)
    reference_task(settings, run_id)
    embedded = embed_task(settings, run_id)
    clustered = cluster_task(settings, run_id)
    tokenizer = tokenizer_task(settings, run_id)

    stages = []
    for stage in range(settings.stages):
        checkpoint = pretrain_task(settings, run_id, stage)
        probes = probe_task(settings, run_id, stage)
        influence = distill_task(settings, run_id, stage)
        selection = select_task(settings, run_id, stage)
        mixture = write_mixture_task(settings, run_id, selection)
        stages.append(StageResult(checkpoint, probes, influence, selection, mixture))

    metrics, curves = run_metrics(ingested, embedded, clustered, tokenizer, stages)
    tracked = track_task(settings, run_id, metrics, curves, flow_run_id)
    publish_task(settings, run_id, tracked, flow_run_id)
    finish_run_task(settings, run_id, "completed", tracked.mlflow_run_id)
    return RunResult(run_id, str(settings.database), flow_run_id, tracked, metrics, stages)
