"""What a person reads at the end: a run's mixture summary (core/store.py) as rich tables, and the report card.

Used by `influmix show RUN_ID` and by `influmix run` / `make demo` after the flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from core.artifacts import RunResult
from core.store import mixture_summary


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


def run_facts(result: RunResult, seconds: float) -> dict[str, Any]:
    """The demo's report card: what went in, what was dropped, what was learnt, what was picked."""
    m = result.metrics
    facts: dict[str, Any] = {
        "records read": int(m.get("records_read", 0)),
        "documents kept": int(m.get("documents", 0)),
        "exact duplicates dropped": int(m.get("exact_duplicates", 0)),
        "near duplicates dropped": int(m.get("near_duplicates", 0)),
        "quarantined records": int(m.get("quarantined", 0)),
        "filtered by the quality filters": int(m.get("filter.filtered", 0)),
        "documents embedded (new / reused from earlier runs)":
            f"{int(m.get('embed_new', 0)):,} / {int(m.get('embed_reused', 0)):,}",
        "token counts (new / reused)": f"{int(m.get('token_counts_new', 0)):,} / {int(m.get('token_counts_reused', 0)):,}"
                                       + (" (tokenizer reused)" if m.get("tokenizer_reused") else ""),
        "clusters": int(m.get("clusters", 0)),
    }
    for stage in result.stages:
        s = stage.checkpoint.stage
        facts[f"stage {s} proxy LM reference loss"] = float(stage.checkpoint.reference_loss)
        probes = stage.probes
        facts[f"stage {s} documents measured ({probes.oracle} oracle)"] = (
            f"{probes.measured:,} in {probes.pulls} pulls over {probes.arms_pulled} arms" if probes.arms_pulled
            else f"{probes.measured:,}, a uniform sample of the pool")
        if probes.group_rewards:
            facts[f"stage {s} arm rollouts (group rewards)"] = int(probes.group_rewards)
        if probes.exact_agreement is not None:
            facts[f"stage {s} fast-vs-exact probe Spearman"] = float(probes.exact_agreement)
        facts[f"stage {s} influence model held-out Spearman"] = float(stage.influence.heldout_spearman)
        if stage.reranked is not None and stage.reranked.measured:
            agreement = stage.reranked.agreement
            facts[f"stage {s} cascade: head measured again (influence vs oracle Spearman)"] = (
                f"{stage.reranked.measured:,} documents ({agreement:.2f})" if agreement is not None
                else f"{stage.reranked.measured:,} documents")
            if stage.reranked.weight is not None:
                facts[f"stage {s} cascade: weight the shrunk estimates keep on the measurements"] = (
                    round(stage.reranked.weight, 3))
        facts[f"stage {s} tokens selected / budget"] = f"{stage.selection.tokens:,} / {stage.selection.token_budget:,}"
    facts["wall time (s)"] = round(seconds, 1)
    return facts


def run_locations(settings, result: RunResult) -> list[str]:
    """Where the run's outputs live, and the command that opens each."""
    lines = [f"DuckDB   {Path(result.database).resolve()}  (influmix show {result.run_id} --db {result.database})"]
    if result.tracked is not None:
        lines.append(f"MLflow   run {result.tracked.mlflow_run_id} in {result.tracked.tracking_uri}"
                     f"  (mlflow ui --backend-store-uri {result.tracked.tracking_uri})")
        tracked = result.tracked
        if tracked.model_version:
            alias = f"({tracked.alias_note})" if tracked.alias_note else f"@{settings.track.model_alias}"
            lines.append(f"Registry {tracked.registered_model} v{tracked.model_version} {alias}")
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
