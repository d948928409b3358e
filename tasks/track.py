"""Track the run: its `runs` row in DuckDB from start to finish, and the whole flow run in MLflow (config,
metrics with steps, plots, datasets, the influence model in the registry under an alias).

A run stores its exact settings (in `runs.config_json` and `<run_dir>/<run_id>/settings.json`) and the
process running it, so `influmix resume RUN_ID` can finish it after a crash with the same settings.
Everything MLflow gets is read back from what the stages wrote (DuckDB and the stage folders), so the
MLflow stage can be re-run on its own.
"""

from __future__ import annotations

import os
import secrets
import socket
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from core import db, store
from core.artifacts import Run, Tracked
from core.config import Settings, flatten_settings, load_settings
from core.preflight import TrackingUnavailable, check_tracking, tracking_problem
from core.tracking import tracking_scope
from models.students import load_student
from runtime.policies import STAGE_CACHE, retry_on_network_error

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
PYFUNC_CODE = Path(__file__).resolve().parents[1] / "runtime" / "influence_pyfunc.py"
MODELS_PACKAGE = Path(__file__).resolve().parents[1] / "models"
PYFUNC_REQUIREMENTS = ["torch", "safetensors", "numpy", "scipy", "tokenizers", "transformers", "pandas"]


def new_run_id() -> str:
    """Sortable by time, unique without coordination."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def start_run(settings: Settings, prefect_flow_run_id: str | None = None) -> Run:
    """Register the run, after checking the tracking server answers (a deployment has no CLI preflight)."""
    check_tracking(settings)
    run_id = settings.run_id or new_run_id()
    pinned = settings.model_copy(update={"run_id": run_id})
    run_dir = settings.stage_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(pinned.model_dump_json(indent=2), encoding="utf-8")
    with db.connect(settings.database) as con:
        db.run(con, "insert_run", {
            "run_id": run_id, "config_hash": settings.config_hash(), "config_json": pinned.model_dump_json(),
            "prefect_flow_run_id": prefect_flow_run_id, "host": socket.gethostname(), "pid": os.getpid(),
        })
    return Run(run_id, str(settings.database), str(run_dir), prefect_flow_run_id)


def finish_run(settings: Settings, run: Run, status: str, mlflow_run_id: str | None = None) -> None:
    with db.connect(settings.database) as con:
        db.run(con, "finish_run", {"run_id": run.run_id, "status": status, "mlflow_run_id": mlflow_run_id})


def mark_run_failed(flow, flow_run, state) -> None:
    """Prefect on_failure hook: the flow's `runs` row says failed instead of running forever."""
    params = flow_run.parameters or {}
    settings = load_settings(params.get("config"), params.get("overrides"))
    with db.connect(settings.database) as con:
        db.run(con, "fail_run", {"prefect_flow_run_id": str(flow_run.id)})


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


def reward_figure(rounds_by_stage: dict[int, list[store.OraclePull]]):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for stage, rounds in rounds_by_stage.items():
        rewards = np.array([r.reward for r in rounds], dtype=float)
        if len(rewards):
            ax.plot(np.arange(len(rewards)), rewards, ".", alpha=0.35, label=f"stage {stage} reward")
            ax.plot(np.arange(len(rewards)), np.cumsum(rewards) / np.arange(1, len(rewards) + 1), label=f"stage {stage} running mean")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("arm pull")
    ax.set_ylabel("reward (oracle values in spread units)")
    ax.set_title("oracle bandit rewards")
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


def track_run(settings: Settings, run: Run, metrics: dict[str, float], curves: dict[str, list[float]]) -> Tracked:
    """Log the run to MLflow; if the server went away, say so in one line and how to finish the run later."""
    run_id = run.run_id
    try:
        return _log_run(settings, run_id, metrics, curves, run.prefect_flow_run_id)
    except Exception as exc:
        problem = tracking_problem(settings)
        if problem is None:
            raise
        raise TrackingUnavailable(f"{problem}; every stage's results are saved in {settings.database}: "
                                  f"`influmix resume {run_id}` tracks them once it is back") from exc


def _log_run(settings: Settings, run_id: str, metrics: dict[str, float], curves: dict[str, list[float]],
             prefect_flow_run_id: str | None) -> Tracked:
    with tracking_scope(settings.mlflow_uri):
        return _log_to_active_store(settings, run_id, metrics, curves, prefect_flow_run_id)


def _log_to_active_store(settings: Settings, run_id: str, metrics: dict[str, float], curves: dict[str, list[float]],
                         prefect_flow_run_id: str | None) -> Tracked:
    import mlflow

    experiment_id = ensure_experiment(mlflow, settings)
    summary = store.mixture_summary(settings.database, run_id)
    last_stage = settings.stages - 1
    tags = {"influmix.run_id": run_id, "influmix.config_hash": settings.config_hash()}
    if prefect_flow_run_id:
        tags["prefect.flow_run_id"] = prefect_flow_run_id
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")  # schema/type-hint hints
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_id, tags=tags) as active:
        mlflow.log_params(flatten_settings(settings.model_dump(mode="json")))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)})
        for key, values in curves.items():
            for step, value in enumerate(values):
                mlflow.log_metric(key, float(value), step=step)
        with db.connect(settings.database, read_only=True) as con:
            rounds = {s: store.oracle_pulls(con, run_id, s) for s in range(settings.stages)}
            pool = con.execute(db.sql("pool_documents_metadata"), {"run_id": run_id}).df()
            mixture = con.execute(db.sql("mixture_documents"), {"run_id": run_id, "stage": last_stage}).df()
        for stage, pulls in rounds.items():
            measured = np.cumsum([p.n_measured for p in pulls])
            for step, (pull, total) in enumerate(zip(pulls, measured, strict=True)):
                mlflow.log_metrics({f"bandit_reward_stage{stage}": pull.reward,
                                    f"bandit_measured_stage{stage}": float(total)}, step=step)
        mlflow.log_figure(composition_figure(summary), "plots/mixture_composition.png")
        mlflow.log_figure(reward_figure(rounds), "plots/bandit_rewards.png")
        plt.close("all")
        mlflow.log_dict(summary, "mixture_summary.json")
        mlflow.log_input(mlflow.data.from_pandas(pool, source=str(settings.database.resolve()), name=f"{run_id}-pool"),
                         context="pool")
        mlflow.log_input(mlflow.data.from_pandas(mixture.drop(columns=["text"]), source=str(settings.database.resolve()),
                                                 name=f"{run_id}-mixture-stage{last_stage}"), context="mixture")
        version = log_influence_model(mlflow, settings, run_id, last_stage)
    return Tracked(active.info.run_id, experiment_id, settings.mlflow_uri, settings.track.registered_model, version)


def log_influence_model(mlflow, settings: Settings, run_id: str, stage: int) -> str | None:
    """Register the stage's influence model (any student but the fine-tuned encoder) and point the alias at it.

    The model is "code + weights": runtime/influence_pyfunc.py and the `models` package travel with it
    (code_paths), so it loads wherever its requirements are installed, with or without influmix. The
    fine-tuned encoder is not registered: its weights are a whole SentenceTransformer per stage.
    """
    model_dir = settings.stage_dir(run_id, stage) / "influence"
    student = load_student(model_dir)
    if student.name == "finetuned":
        return None
    if student.reads == "text":
        example: Any = pd.DataFrame({"text": ["An example document.", "Another one."]})
    else:
        example = np.zeros((2, student.in_dim), dtype=np.float32)
    info = mlflow.pyfunc.log_model(
        name="influence_model", python_model=str(PYFUNC_CODE), artifacts={"influence_model": str(model_dir)},
        registered_model_name=settings.track.registered_model, input_example=example,
        pip_requirements=PYFUNC_REQUIREMENTS, code_paths=[str(MODELS_PACKAGE)],
    )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(settings.track.registered_model, settings.track.model_alias, version)
    return version


start_run_task = task(start_run, name="start-run", cache_policy=NO_CACHE)
finish_run_task = task(finish_run, name="finish-run", cache_policy=NO_CACHE)
track_task = task(track_run, name="track", cache_policy=STAGE_CACHE, persist_result=True,
                  retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_network_error)
