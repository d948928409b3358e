"""Show the run where people look: Prefect artifacts (mixture table, MLflow link) and cross-links both ways.

The MLflow run already carries the Prefect flow-run id as a tag (tasks/track.py); here the Prefect flow run
gets the MLflow run id as a tag, a markdown artifact with the mixture's composition and a link artifact to
the MLflow run, so each UI leads to the other.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from core import store
from core.artifacts import Run, Tracked
from core.config import Settings


def mlflow_run_url(settings: Settings, tracked: Tracked) -> str:
    """The MLflow UI page of the run: the tracking server itself, else the served UI over the same store."""
    base = tracked.tracking_uri if tracked.tracking_uri.startswith("http") else \
        f"http://{settings.serve.host}:{settings.serve.mlflow_port}"
    return f"{base.rstrip('/')}/#/experiments/{tracked.experiment_id}/runs/{tracked.mlflow_run_id}"


def mixture_markdown(summary: dict[str, Any], mlflow_url: str, max_clusters: int = 10) -> str:
    pool = {row["domain"]: row["share"] or 0.0 for row in summary["pool_by_domain"]}
    lines = [f"# Mixture of {summary['run_id']}", "", f"MLflow run: [{mlflow_url}]({mlflow_url})", ""]
    for stage in summary["stages"]:
        lines += [(f"## Stage {stage['stage']}: {stage['tokens']:,} / {stage['token_budget']:,} tokens, "
                  f"{stage['documents']:,} documents"), "",
                  "| domain | documents | tokens | share | pool share |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['domain']} | {r['documents']:,} | {r['tokens']:,} | {100 * (r['share'] or 0):.1f}% "
                  f"| {100 * pool.get(r['domain'], 0.0):.1f}% |" for r in stage["by_domain"]]
        lines += ["", "| cluster | documents | tokens | share | mean influence |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['cluster']} | {r['documents']:,} | {r['tokens']:,} | {100 * (r['share'] or 0):.1f}% "
                  f"| {r['mean_score'] or 0:+.4f} |" for r in stage["by_cluster"][:max_clusters]]
        lines.append("")
    return "\n".join(lines)


def artifact_key(run_id: str, kind: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    safe = "".join(c if c.isalnum() else "-" for c in run_id.lower())
    return f"{kind}-{safe}"[:200]


def tag_flow_run(flow_run_id: str, tags: list[str]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        client.update_flow_run(flow_run_id, tags=sorted(set(flow_run.tags) | set(tags)))


def publish_run(settings: Settings, run: Run, tracked: Tracked) -> str:
    """Create the artifacts and tags; returns the MLflow run URL they point at."""
    run_id, flow_run_id = run.run_id, run.prefect_flow_run_id
    url = mlflow_run_url(settings, tracked)
    summary = store.mixture_summary(settings.database, run_id)
    create_markdown_artifact(markdown=mixture_markdown(summary, url), key=artifact_key(run_id, "mixture"),
                             description=f"influmix mixture composition of {run_id}")
    create_link_artifact(link=url, link_text=f"MLflow run {tracked.mlflow_run_id}", key=artifact_key(run_id, "mlflow"),
                         description="the MLflow run with params, step metrics, plots and the influence model")
    if flow_run_id:
        tag_flow_run(flow_run_id, [f"influmix-run:{run_id}", f"mlflow-run:{tracked.mlflow_run_id}"])
    return url


publish_task = task(publish_run, name="publish", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
