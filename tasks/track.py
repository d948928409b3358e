"""Track the whole flow run in MLflow: config, metrics with steps, plots, datasets, the influence model.

Everything is read back from what the stages wrote (DuckDB and the stage directories), so tracking is one
stage at the end that can be re-run on its own; the influence model goes to the registry under an alias.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from prefect import task

from core import db
from core.config import Settings
from core.preflight import TrackingUnavailable, tracking_problem
from core.tracking import tracking_scope
from influmix.report import mixture_summary
from runtime.policies import STAGE_CACHE, retry_on_network_error

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
PYFUNC_CODE = Path(__file__).resolve().parents[1] / "runtime" / "influence_pyfunc.py"


@dataclass
class TrackInfo:
    mlflow_run_id: str
    experiment_id: str
    tracking_uri: str
    registered_model: str
    model_version: str | None


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else key, item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


def composition_figure(summary: dict[str, Any]):
    """Token share by domain for the pool and every stage's mixture, as stacked bars."""
    columns = [("pool", {r["domain"]: r["share"] for r in summary["pool_by_domain"]})]
    columns += [(f"stage {s['stage']}", {r["domain"]: r["share"] for r in s["by_domain"]}) for s in summary["stages"]]
    domains = sorted({d for _, shares in columns for d in shares})
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(columns))
    for domain in domains:
        heights = np.array([shares.get(domain, 0.0) or 0.0 for _, shares in columns])
        ax.bar([c[0] for c in columns], heights, bottom=bottom, label=domain)
        bottom += heights
    ax.set_ylabel("token share")
    ax.set_title("mixture composition by domain")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def reward_figure(rounds_by_stage: dict[int, list[tuple]]):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for stage, rounds in rounds_by_stage.items():
        rewards = np.array([r[4] for r in rounds], dtype=float)
        if len(rewards):
            ax.plot(np.arange(len(rewards)), rewards, ".", alpha=0.35, label=f"stage {stage} reward")
            ax.plot(np.arange(len(rewards)), np.cumsum(rewards) / np.arange(1, len(rewards) + 1), label=f"stage {stage} running mean")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("arm pull")
    ax.set_ylabel("reward (z-scored influence)")
    ax.set_title("bandit rewards")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def ensure_experiment(mlflow, settings: Settings) -> str:
    experiment = mlflow.get_experiment_by_name(settings.track.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.mlflow_uri.startswith("sqlite:"):
        location = (settings.run_dir / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(settings.track.experiment, artifact_location=location)


def track_run(settings: Settings, run_id: str, metrics: dict[str, float], curves: dict[str, list[float]],
              prefect_flow_run_id: str | None = None) -> TrackInfo:
    """Log the run to MLflow; if the server went away, say so in one line and how to finish the run later."""
    try:
        return _log_run(settings, run_id, metrics, curves, prefect_flow_run_id)
    except Exception as exc:
        problem = tracking_problem(settings)
        if problem is None:
            raise
        raise TrackingUnavailable(f"{problem}; every stage's results are saved in {settings.database}: "
                                  f"`influmix resume {run_id}` tracks them once it is back") from exc


def _log_run(settings: Settings, run_id: str, metrics: dict[str, float], curves: dict[str, list[float]],
             prefect_flow_run_id: str | None) -> TrackInfo:
    with tracking_scope(settings.mlflow_uri):
        return _log_to_active_store(settings, run_id, metrics, curves, prefect_flow_run_id)


def _log_to_active_store(settings: Settings, run_id: str, metrics: dict[str, float], curves: dict[str, list[float]],
                         prefect_flow_run_id: str | None) -> TrackInfo:
    import mlflow

    experiment_id = ensure_experiment(mlflow, settings)
    summary = mixture_summary(settings.database, run_id)
    last_stage = settings.stages - 1
    tags = {"influmix.run_id": run_id, "influmix.config_hash": settings.config_hash()}
    if prefect_flow_run_id:
        tags["prefect.flow_run_id"] = prefect_flow_run_id
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")  # schema/type-hint hints
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_id, tags=tags) as active:
        mlflow.log_params(flatten("", settings.model_dump(mode="json"), {}))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)})
        for key, values in curves.items():
            for step, value in enumerate(values):
                mlflow.log_metric(key, float(value), step=step)
        with db.connect(settings.database, read_only=True) as con:
            rounds = {s: db.rows(con, "load_bandit_rounds", {"run_id": run_id, "stage": s}) for s in range(settings.stages)}
            pool = con.execute(db.sql("pool_documents_metadata"), {"run_id": run_id}).df()
            mixture = con.execute(db.sql("mixture_documents"), {"run_id": run_id, "stage": last_stage}).df()
        for stage, stage_rounds in rounds.items():
            for step, r in enumerate(stage_rounds):
                mlflow.log_metrics({f"bandit_reward_stage{stage}": r[4], f"bandit_tokens_stage{stage}": r[7]}, step=step)
        mlflow.log_figure(composition_figure(summary), "plots/mixture_composition.png")
        mlflow.log_figure(reward_figure(rounds), "plots/bandit_rewards.png")
        plt.close("all")
        mlflow.log_dict(summary, "mixture_summary.json")
        mlflow.log_input(mlflow.data.from_pandas(pool, source=str(settings.database.resolve()), name=f"{run_id}-pool"),
                         context="pool")
        mlflow.log_input(mlflow.data.from_pandas(mixture.drop(columns=["text"]), source=str(settings.database.resolve()),
                                                 name=f"{run_id}-mixture-stage{last_stage}"), context="mixture")
        version = log_influence_model(mlflow, settings, run_id, last_stage)
    return TrackInfo(active.info.run_id, experiment_id, settings.mlflow_uri, settings.track.registered_model, version)


def log_influence_model(mlflow, settings: Settings, run_id: str, stage: int) -> str | None:
    """Register the last stage's influence model (embedding head or token model) and point the alias at it.

    The fine-tuned encoder is not registered: its weights are a whole SentenceTransformer per stage.
    """
    from models.token_influence import is_token_model

    model_dir = settings.stage_dir(run_id, stage) / "influence"
    if is_token_model(model_dir):
        example = pd.DataFrame({"text": ["An example document.", "Another one."]})
        requirements = ["torch", "safetensors", "numpy", "tokenizers", "scipy"]
    elif (model_dir / "influence_head.safetensors").exists():
        from models.influence import load_head

        example = np.zeros((2, load_head(model_dir).in_dim), dtype=np.float32)
        requirements = ["torch", "safetensors", "numpy"]
    else:
        return None
    info = mlflow.pyfunc.log_model(
        name="influence_model", python_model=str(PYFUNC_CODE), artifacts={"influence_head": str(model_dir)},
        registered_model_name=settings.track.registered_model, input_example=example,
        pip_requirements=requirements, code_paths=None,
    )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(settings.track.registered_model, settings.track.model_alias, version)
    return version


track_task = task(track_run, name="track", cache_policy=STAGE_CACHE, persist_result=True,
                  retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_network_error)
