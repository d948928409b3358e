"""The curation flow: ingest -> filter -> embed -> cluster -> tokenize -> per stage (pretrain -> probe -> distil
-> rerank -> select -> write) -> track. Each task returns what it wrote (core/artifacts.py); the next one receives it.
The MLflow run opens with the flow and gets each stage's metrics as the stage finishes."""

from __future__ import annotations

from prefect import flow, runtime

from core.artifacts import Corpus, RunResult, run_metrics
from core.config import load_settings
from flows.stages import StageSteps, model_aware_stages
from tasks.cluster import cluster_task
from tasks.distill import distill_task
from tasks.embed import embed_task
from tasks.filter import filter_task
from tasks.ingest import ingest_task, reference_task
from tasks.mixture import write_mixture_task
from tasks.pretrain import pretrain_task
from tasks.probe import probe_task
from tasks.publish import publish_task
from tasks.rerank import rerank_task
from tasks.select import select_task
from tasks.tokenizer import tokenizer_task
from tasks.track import finish_run_task, log_progress_task, mark_run_failed, start_run_task, track_task

STAGE_TASKS = StageSteps(pretrain_task, probe_task, distill_task, select_task, write_mixture_task, rerank=rerank_task)


@flow(name="curate", log_prints=True, on_failure=[mark_run_failed])
def curate(config: str | None = None, overrides: list[str] | None = None) -> RunResult:
    """Curate a pretraining mixture from the configured corpus (TOML/YAML `config` plus `key=value` overrides)."""
    settings = load_settings(config, overrides)
    run = start_run_task(settings, str(runtime.flow_run.id) if runtime.flow_run.id else None)

    ingested = ingest_task(settings, run.run_id)
    reference = reference_task(settings, run.run_id)
    pool = filter_task(settings, ingested)
    embedded = embed_task(settings, pool)
    clustered = cluster_task(settings, embedded)
    tokenized = tokenizer_task(settings, pool, reference)
    corpus = Corpus(ingested, reference, embedded, clustered, tokenized, pool)
    log_progress_task(settings, run, corpus, [])
    stages = model_aware_stages(settings, corpus, STAGE_TASKS,
                                on_stage=lambda done: log_progress_task(settings, run, corpus, done))

    tracked = track_task(settings, run, corpus, stages)
    publish_task(settings, run, tracked)
    finish_run_task(settings, run, "completed", tracked.mlflow_run_id)
    metrics, _ = run_metrics(corpus, stages)
    return RunResult(run.run_id, run.database, run.prefect_flow_run_id, tracked, metrics, corpus, stages)
