"""What a person reads at the end: a run's summary from DuckDB, as data and as rich tables.

Used by `influmix show RUN_ID`, by the demo's final report card, and by the MLflow tracking stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from core import db


def mixture_summary(db_path: Path, run_id: str) -> dict[str, Any]:
    """Run header plus, for every stage, the mixture's tokens and its composition by domain and cluster."""
    with db.connect(db_path, read_only=True) as con:
        header = db.rows(con, "get_run", {"run_id": run_id})
        if not header:
            raise LookupError(f"no run {run_id!r} in {db_path}")
        run_id_, config_hash, _, status, started, finished, mlflow_run_id, flow_run_id, *_ = header[0]
        stages = []
        for stage, _, budget, tokens, n_docs, created in db.rows(con, "mixture_headers", {"run_id": run_id}):
            params = {"run_id": run_id, "stage": stage}
            stages.append({
                "stage": stage, "token_budget": budget, "tokens": tokens, "documents": n_docs,
                "created_at": str(created),
                "by_domain": [dict(zip(("domain", "documents", "tokens", "share"), r))
                              for r in db.rows(con, "mixture_by_domain", params)],
                "by_cluster": [dict(zip(("cluster", "documents", "tokens", "share", "mean_score", "cluster_size"), r))
                               for r in db.rows(con, "mixture_by_cluster", params)],
            })
        pool = [dict(zip(("domain", "documents", "tokens", "share"), r))
                for r in db.rows(con, "pool_by_domain", {"run_id": run_id})]
    return {"run_id": run_id_, "status": status, "config_hash": config_hash, "started_at": str(started),
            "finished_at": str(finished), "mlflow_run_id": mlflow_run_id, "prefect_flow_run_id": flow_run_id,
            "pool_by_domain": pool, "stages": stages}


def _share(x: float | None) -> str:
    return f"{100 * (x or 0):.1f}%"


def composition_tables(summary: dict[str, Any], max_clusters: int = 12) -> list[Table]:
    pool = {row["domain"]: row["share"] for row in summary["pool_by_domain"]}
    tables = []
    for stage in summary["stages"]:
        t = Table(title=f"stage {stage['stage']} mixture by domain: {stage['tokens']:,} / {stage['token_budget']:,} tokens, "
                        f"{stage['documents']:,} documents")
        for col in ("domain", "documents", "tokens", "share", "pool share"):
            t.add_column(col, justify="left" if col == "domain" else "right")
        for row in stage["by_domain"]:
            t.add_row(row["domain"], f"{row['documents']:,}", f"{row['tokens']:,}", _share(row["share"]),
                      _share(pool.get(row["domain"])))
        tables.append(t)
        c = Table(title=f"stage {stage['stage']} mixture by cluster (top {max_clusters})")
        for col in ("cluster", "documents", "tokens", "share", "mean score", "cluster size"):
            c.add_column(col, justify="right")
        for row in stage["by_cluster"][:max_clusters]:
            c.add_row(str(row["cluster"]), f"{row['documents']:,}", f"{row['tokens']:,}", _share(row["share"]),
                      f"{row['mean_score']:+.3g}", f"{row['cluster_size']:,}")
        tables.append(c)
    return tables


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold]run[/bold] {summary['run_id']}  status={summary['status']}  config={summary['config_hash']}")
    for table in composition_tables(summary):
        console.print(table)


def report_card(facts: dict[str, Any]) -> Table:
    """The demo's closing table: one row per measured fact."""
    t = Table(title="influmix run summary", show_header=True)
    t.add_column("what")
    t.add_column("value", justify="right")
    for key, value in facts.items():
        t.add_row(key, f"{value:,.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value))
    return t


@dataclass
class StageResult:
    """What one pretraining stage produced, as returned by its tasks."""

    checkpoint: Any
    probes: Any
    influence: Any
    selection: Any
    mixture: dict


@dataclass
class RunResult:
    run_id: str
    database: str
    prefect_flow_run_id: str | None
    tracked: Any
    metrics: dict[str, float]
    stages: list[StageResult] = field(default_factory=list)


def run_metrics(ingested, embedded, clustered, tokenizer, stages: list[StageResult]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Final metrics (one value) and curves (a value per step: per stage, per training step)."""
    metrics: dict[str, float] = {}
    for part in (ingested, embedded, clustered, tokenizer):
        metrics.update(part.as_metrics())
    curves: dict[str, list[float]] = {"train_loss": []}
    for result in stages:
        curves["train_loss"].extend(result.checkpoint.losses)
        for part in (result.checkpoint, result.probes, result.influence, result.selection):
            for key, value in part.as_metrics().items():
                curves.setdefault(key, []).append(float(value))
    for key, values in curves.items():
        if key != "train_loss" and values:
            metrics[f"final_{key}"] = values[-1]
    return metrics, curves


def run_facts(result: RunResult, seconds: float) -> dict[str, Any]:
    """The demo's report card: what went in, what was dropped, what was learnt, what was picked."""
    m = result.metrics
    facts: dict[str, Any] = {
        "records read": int(m.get("records_read", 0)),
        "documents kept": int(m.get("documents", 0)),
        "exact duplicates dropped": int(m.get("exact_duplicates", 0)),
        "near duplicates dropped": int(m.get("near_duplicates", 0)),
        "quarantined records": int(m.get("quarantined", 0)),
        "clusters": int(m.get("clusters", 0)),
    }
    for stage in result.stages:
        s = stage.checkpoint.stage
        facts[f"stage {s} proxy LM reference loss"] = float(stage.checkpoint.reference_loss)
        facts[f"stage {s} exact probes taken"] = int(stage.probes.probes)
        if stage.probes.fast_probes:
            facts[f"stage {s} fast probes taken"] = int(stage.probes.fast_probes)
        if stage.probes.fast_spearman is not None:
            facts[f"stage {s} fast-vs-exact probe Spearman"] = float(stage.probes.fast_spearman)
        facts[f"stage {s} influence model held-out Spearman"] = float(stage.influence.heldout_spearman)
        facts[f"stage {s} tokens selected / budget"] = f"{stage.selection.tokens:,} / {stage.selection.token_budget:,}"
    facts["wall time (s)"] = round(seconds, 1)
    return facts


def run_locations(settings, result: RunResult) -> list[str]:
    """Where the run's outputs live, and the command that opens each."""
    lines = [f"DuckDB   {Path(result.database).resolve()}  (influmix show {result.run_id} --db {result.database})"]
    if result.tracked is not None:
        lines.append(f"MLflow   run {result.tracked.mlflow_run_id} in {result.tracked.tracking_uri}"
                     f"  (mlflow ui --backend-store-uri {result.tracked.tracking_uri})")
        if result.tracked.model_version:
            lines.append(f"Registry {result.tracked.registered_model} v{result.tracked.model_version}"
                         f" @{settings.track.model_alias}")
    lines.append(f"Prefect  {prefect_location(result.prefect_flow_run_id)}")
    return lines


def prefect_location(flow_run_id: str | None) -> str:
    """A link into the Prefect UI when a server is configured, else how to open the local one."""
    import os

    if not flow_run_id:
        return "not recorded"
    api = os.environ.get("PREFECT_API_URL", "")
    if api.endswith("/api"):
        return f"{api[:-4]}/runs/flow-run/{flow_run_id}"
    from prefect.settings import get_current_settings

    home = get_current_settings().home
    return f"flow run {flow_run_id}  (PREFECT_HOME={home} prefect server start)"


def print_run_report(settings, result: RunResult, seconds: float, console: Console | None = None) -> None:
    console = console or Console()
    summary = mixture_summary(Path(result.database), result.run_id)
    for table in composition_tables(summary):
        console.print(table)
    console.print(report_card(run_facts(result, seconds)))
    for line in run_locations(settings, result):
        console.print(line, soft_wrap=True, highlight=False)
