"""`influmix compare`: runs side by side, from DuckDB (what was selected) and their recorded configs.

What a curator asks when two runs differ: which settings changed, how the token budget was spent, which
domains and clusters gained or lost share, how much of the selection is the same, and whether the proxy
LM's reference loss moved. The MLflow compare link shows the same runs' curves.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from core import db, store
from core.config import flatten_settings
from core.store import mixture_summary


def load_runs(db_path: Path, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per run: its config (flattened), mixture summary and per-stage selection stats."""
    runs = {}
    for run_id in run_ids:
        summary = mixture_summary(db_path, run_id)
        with db.connect(db_path, read_only=True) as con:
            config_json = store.run_row(con, run_id).config_json
            stats = db.records(con, "run_selection_stats", {"run_id": run_id})
        runs[run_id] = {"config": flatten_settings(json.loads(config_json)), "summary": summary, "stats": stats}
    return runs


def config_differences(runs: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    keys = sorted({k for r in runs.values() for k in r["config"]} - {"run_id"})
    diffs = {}
    for key in keys:
        values = [r["config"].get(key, "-") for r in runs.values()]
        if len(set(values)) > 1:
            diffs[key] = values
    return diffs


def overlaps(db_path: Path, run_ids: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
    with db.connect(db_path, read_only=True) as con:
        return {(a, b): tuple(db.records(con, "mixture_overlap", {"run_a": a, "run_b": b})[0])
                for a, b in combinations(run_ids, 2)}


def share_table(title: str, runs: dict[str, dict[str, Any]], key: str, label: str) -> Table:
    """Token share of each domain/cluster in each run's last-stage mixture."""
    shares: dict[str, dict[str, float]] = {}
    for run_id, run in runs.items():
        stages = run["summary"]["stages"]
        for row in stages[-1][key] if stages else []:
            shares.setdefault(str(row[label]), {})[run_id] = row["share"] or 0.0
    table = Table(title=title)
    table.add_column(label)
    for run_id in runs:
        table.add_column(run_id, justify="right")
    for name in sorted(shares, key=lambda n: -max(shares[n].values())):
        table.add_row(name, *(f"{100 * shares[name].get(r, 0.0):.1f}%" for r in runs))
    return table


def mlflow_compare_hint(db_path: Path, run_ids: list[str], tracking_uri: str | None) -> str:
    with db.connect(db_path, read_only=True) as con:
        ids = [store.run_row(con, r).mlflow_run_id for r in run_ids]
    ids = [i for i in ids if i]
    if not ids:
        return "no MLflow runs recorded for these runs"
    if tracking_uri and tracking_uri.startswith("http"):
        return mlflow_compare_url(tracking_uri, ids)
    return f"MLflow run ids {', '.join(ids)} (open `mlflow ui --backend-store-uri {tracking_uri}` and compare them)"


def mlflow_compare_url(tracking_uri: str, mlflow_run_ids: list[str]) -> str:
    """MLflow's compare-runs page (metrics as tables and step curves) for these runs."""
    import mlflow

    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        experiments = sorted({client.get_run(i).info.experiment_id for i in mlflow_run_ids})
    except Exception:  # noqa: BLE001 - a down server still gets a usable link
        experiments = []
    compact = {"separators": (",", ":")}
    url = f"{tracking_uri.rstrip('/')}/#/compare-runs?runs={json.dumps(mlflow_run_ids, **compact)}"
    return url + (f"&experiments={json.dumps(experiments, **compact)}" if experiments else "")


def stage_cell(row: Any | None) -> str:
    """One run's stage in the comparison: a `run_selection_stats` row, or '-' when the run has no such stage."""
    if row is None:
        return "-"
    loss = f", ref loss {row.reference_loss:.4f}" if row.reference_loss is not None else ""
    return (f"{row.tokens:,}/{row.token_budget:,} tok, {row.n_documents:,} docs, score {row.mean_score:+.3g}, "
            f"{row.clusters_used} clusters{loss}")


def print_comparison(db_path: Path, run_ids: list[str], tracking_uri: str | None, console: Console) -> None:
    runs = load_runs(db_path, run_ids)
    diffs = config_differences(runs)
    t = Table(title="config differences")
    t.add_column("setting")
    for run_id in run_ids:
        t.add_column(run_id)
    for key, values in diffs.items():
        t.add_row(key, *values)
    if not diffs:
        t.add_row("(identical configs)", *["" for _ in run_ids])
    console.print(t)

    s = Table(title="selection per stage: tokens / budget, documents, mean influence, clusters used, reference loss")
    s.add_column("stage")
    for run_id in run_ids:
        s.add_column(run_id, justify="right")
    stages = sorted({row.stage for r in runs.values() for row in r["stats"]})
    for stage in stages:
        rows = [next((x for x in runs[r]["stats"] if x.stage == stage), None) for r in run_ids]
        s.add_row(str(stage), *(stage_cell(row) for row in rows))
    console.print(s)
    console.print(share_table("last-stage token share by domain", runs, "by_domain", "domain"))
    console.print(share_table("last-stage token share by cluster", runs, "by_cluster", "cluster"))
    for (a, b), (shared, either) in overlaps(db_path, run_ids).items():
        console.print(f"overlap {a} ~ {b}: {shared:,} of {either:,} selected documents shared "
                      f"(Jaccard {shared / max(either, 1):.3f})")
    console.print(mlflow_compare_hint(db_path, run_ids, tracking_uri), soft_wrap=True)
