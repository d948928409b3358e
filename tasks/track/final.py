"""The track stage: complete the run's MLflow run (it was opened when the flow started and every stage
logged into it as it finished) with what only the whole run has: final metrics, plots, the mixture of every
stage as an MLflow dataset, and the influence model in the registry.

Everything is read back from what the stages wrote (DuckDB and the stage folders), so the track stage can
be re-run on its own (`influmix resume`), and anything the live logging could not send is sent here.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import matplotlib.pyplot as plt

from core import db, store
from core.artifacts import Corpus, Run, StageResult, Tracked, run_metrics
from core.config import Settings
from core.tracking import log_metric_points, mlflow_client, tracking_scope
from tasks.track.figures import composition_figure, reward_figure
from tasks.track.lifecycle import lost_server_is_resumable, open_tracked_run
from tasks.track.points import log_missing_points
from tasks.track.registry import log_influence_model


def track_run(settings: Settings, run: Run, corpus: Corpus, stages: list[StageResult]) -> Tracked:
    """Finish the run in MLflow; if the server went away, say so in one line and how to finish the run later."""
    with lost_server_is_resumable(settings, run.run_id), tracking_scope(settings.mlflow_uri):
        return _complete_run(settings, run, corpus, stages)


def _complete_run(settings: Settings, run: Run, corpus: Corpus, stages: list[StageResult]) -> Tracked:
    import mlflow

    experiment_id, mlflow_run_id = run.experiment_id, run.mlflow_run_id
    if not mlflow_run_id or not experiment_id:  # a run registered before runs were opened at the start
        experiment_id, mlflow_run_id = open_tracked_run(settings, run.run_id, run.prefect_flow_run_id)
    client = mlflow_client(settings.mlflow_uri)
    log_missing_points(client, replace(run, mlflow_run_id=mlflow_run_id, experiment_id=experiment_id), corpus, stages)
    logged = client.get_run(mlflow_run_id).data.metrics
    metrics, _ = run_metrics(corpus, stages)
    log_metric_points(client, mlflow_run_id, [(k, v, 0) for k, v in metrics.items() if k not in logged])

    summary = store.mixture_summary(settings.database, run.run_id)
    source = str(settings.database.resolve())
    with db.connect(settings.database, read_only=True) as con:
        rounds = {s: store.oracle_pulls(con, run.run_id, s) for s in range(len(stages))}
        pool = con.execute(db.sql("pool_documents_metadata"), {"run_id": run.run_id}).df()
        mixtures = {s: con.execute(db.sql("mixture_documents"), {"run_id": run.run_id, "stage": s}).df()
                    for s in range(len(stages))}
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")  # schema/type-hint hints
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_figure(composition_figure(summary), "plots/mixture_composition.png")
        mlflow.log_figure(reward_figure(rounds), "plots/bandit_rewards.png")
        plt.close("all")
        mlflow.log_dict(summary, "mixture_summary.json")
        mlflow.log_input(mlflow.data.from_pandas(pool, source=source, name=f"{run.run_id}-pool"), context="pool")
        for stage, mixture in mixtures.items():
            dataset = mlflow.data.from_pandas(mixture.drop(columns=["text"]), source=source,
                                              name=f"{run.run_id}-mixture-stage{stage}")
            mlflow.log_input(dataset, context="mixture" if stage == len(stages) - 1 else f"mixture-stage{stage}")
        version, alias_version, note = (log_influence_model(mlflow, settings, stages[-1].influence)
                                        if stages else (None, None, "no stages"))
        if note:
            mlflow.set_tag("influmix.alias", note)
    return Tracked(mlflow_run_id, experiment_id, settings.mlflow_uri, settings.track.registered_model, version,
                   alias_version, note)
