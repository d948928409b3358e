"""`influmix`: run the curation flow, inspect and export its mixtures.

User mistakes (bad config, missing files, unknown run) end in one red line and exit code 2, never a
traceback; `--debug` shows the traceback for bug reports.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers draws a "Loading weights" bar each time a shard loads the embedding model: no use, even on a terminal.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# MLflow draws a "Downloading artifacts" bar for every logged model, also into a worker's log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A fresh Prefect home migrates its database on first start: give the local server time.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import typer
from rich.console import Console

from core.config import ConfigError, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML or YAML settings file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a setting: section.key=value")]
DbOpt = Annotated[Path | None, typer.Option("--db", help="DuckDB file (default: from --config, else runs/influmix.duckdb)")]


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's mistake: one red line, no traceback.

    Only light modules here: every error path runs this, and importing a stage pulls in torch and
    sentence-transformers (8 s for one line). The stages' own errors are ValueErrors (tasks.embed.EmbedError,
    core.sources.IngestError), so they need no import of their own.
    """
    from core.db import DatabaseBusyError, NotADatabaseError
    from core.preflight import TrackingUnavailable
    from core.sources import IngestError

    return (ConfigError, IngestError, NotADatabaseError, LookupError, FileNotFoundError, ValueError,
            TrackingUnavailable, DatabaseBusyError)


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)
    raise typer.Exit(2)


def guarded(fn, debug: bool = False):
    try:
        return fn()
    except user_errors() as exc:
        if debug:
            raise
        fail(str(exc) or type(exc).__name__)


def database_for(config: Path | None, db_path: Path | None, overrides: list[str] | None = None) -> Path:
    """The DuckDB file a reading command opens: `--db`, else the one `--config`'s settings name."""
    path = db_path or load_settings(config, overrides).database
    if not path.exists():
        hint = "" if config or db_path else (": pass the run's settings with --config (the database is "
                                             "<run_dir>/influmix.duckdb) or the file with --db")
        raise FileNotFoundError(f"no influmix database at {path}{hint}")
    return path


def run_environment(settings) -> dict[str, str]:
    """What the run's process and children need: its Prefect home, and the served stack's URLs when it is up.

    One Prefect home per run directory (`<run_dir>/prefect`, also the served stack's), so a run made without
    the stack shows in its UI later, unless PREFECT_HOME says otherwise.
    """
    from influmix.services import prefect_home, served_env

    env = {"PREFECT_HOME": os.environ.get("PREFECT_HOME") or str(prefect_home(settings))}
    for key, value in served_env(settings).items():  # report into the served UIs when `influmix serve` runs
        if not os.environ.get(key):
            env[key] = value
            console.print(f"using the served stack: {key}={value}", highlight=False)
    return env


def prefect_settings(env: dict[str, str]):
    """Prefect reads its settings once, when imported (`resume` has imported it already): apply them again."""
    import prefect.settings

    return prefect.settings.temporary_settings(
        updates={getattr(prefect.settings, key): value for key, value in env.items() if key.startswith("PREFECT_")})


def curate_and_report(settings, config: Path | None, overrides: list[str], debug: bool) -> None:
    """Preflight (sources, embedding model, tracking server, Prefect API), then the flow, then its report card.

    The cheap checks come before the heavy imports, so a typo in a path costs a second, not fifteen.
    """
    import warnings
    from contextlib import nullcontext

    env = run_environment(settings)
    os.environ.update(env)

    with warnings.catch_warnings():  # Prefect, imported here, cannot make the home yet: it is made after the checks
        warnings.filterwarnings("ignore", message="Failed to create the Prefect home directory")
        from tasks.embed import check_embed_model
        from tasks.ingest import check_sources

    guarded(lambda: check_sources(settings), debug)
    guarded(lambda: check_embed_model(settings), debug)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # after the checks: a typo writes nothing

    from prefect.settings import get_current_settings

    from core.preflight import check_tracking, local_prefect, prefect_api_problem
    from flows.curate import curate
    from influmix import reaper
    from influmix.quiet import quiet_user_tracebacks
    from influmix.report import print_run_report
    from influmix.services import prefect_api_url, server_of_home

    guarded(lambda: check_tracking(settings), debug)
    with prefect_settings(env):
        problem = prefect_api_problem()
        if problem:
            err.print(f"[bold yellow]warning:[/bold yellow] {problem}", highlight=False)
        if problem or not get_current_settings().api.url:
            if (server := server_of_home(Path(env["PREFECT_HOME"]))) is not None:
                fail(f"a Prefect server (pid {server.pid}) runs on {env['PREFECT_HOME']}, but not at "
                     f"{prefect_api_url(settings)} (`serve.prefect_port`?), and a temporary server beside it "
                     "would share its SQLite database: point PREFECT_API_URL at it, or check `influmix services`")
            reaper.watch()  # the temporary Prefect server must not outlive a killed run

        started = time.perf_counter()
        with local_prefect() if problem else nullcontext(), \
                nullcontext() if debug else quiet_user_tracebacks(user_errors()):
            result = guarded(lambda: curate(str(config) if config else None, overrides), debug)
        print_run_report(settings, result, time.perf_counter() - started, console)


@app.command()
def run(config: ConfigOpt = None, set_: SetOpt = None, debug: bool = False) -> None:
    """Run the whole curation flow and print its report card."""
    settings = guarded(lambda: load_settings(config, set_), debug)
    curate_and_report(settings, config, list(set_ or []), debug)


@app.command()
def resume(run_id: str, config: ConfigOpt = None, db: DbOpt = None, debug: bool = False) -> None:
    """Finish a crashed or failed run with its own settings: finished stages are reused, the rest redone."""
    from influmix.runs import resume_settings_file

    path = guarded(lambda: resume_settings_file(database_for(config, db), run_id), debug)
    settings = guarded(lambda: load_settings(path), debug)
    console.print(f"resuming {run_id} with {path}", highlight=False)
    curate_and_report(settings, path, [], debug)


@app.command()
def show(run_id: str, config: ConfigOpt = None, db: DbOpt = None, debug: bool = False) -> None:
    """Print a run's mixture summary from DuckDB."""
    from influmix.report import mixture_summary, print_summary

    summary = guarded(lambda: mixture_summary(database_for(config, db), run_id), debug)
    print_summary(summary, console)


@app.command()
def compare(run_ids: list[str], config: ConfigOpt = None, set_: SetOpt = None, db: DbOpt = None,
            debug: bool = False) -> None:
    """Compare runs side by side: config differences, tokens, shares, overlap, influence, reference loss."""
    from influmix.compare import print_comparison

    if len(set(run_ids)) < 2:
        fail("compare needs at least two different run ids")
    settings = guarded(lambda: load_settings(config, set_))
    path = db or settings.database
    guarded(lambda: print_comparison(path, run_ids, settings.mlflow_uri, console), debug)


PlainOpt = Annotated[bool, typer.Option("--plain", help="for scripts: tab-separated, no header; run id, status, "
                                                      "started, finished, config hash")]


def _when(timestamp) -> str:
    return f"{timestamp:%Y-%m-%d %H:%M:%S}" if timestamp else ""


@app.command()
def runs(config: ConfigOpt = None, db: DbOpt = None, plain: PlainOpt = False) -> None:
    """List the runs in the database, newest first."""
    from core import db as database

    def list_runs():
        with database.connect(database_for(config, db), read_only=True) as con:
            return database.rows(con, "list_runs")

    found = [(run_id, status, _when(started), _when(finished), config_hash)
             for run_id, status, started, finished, config_hash in guarded(list_runs)]
    if plain:
        for row in found:
            typer.echo("\t".join(row))
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)  # run ids stay whole on an 80-column terminal or a pipe
    table.add_column("run id", no_wrap=True, min_width=max((len(r[0]) for r in found), default=6))
    table.add_column("status", no_wrap=True)
    table.add_column("started")
    table.add_column("finished")
    table.add_column("config", no_wrap=True, overflow="ellipsis", min_width=8)
    for row in found:
        table.add_row(*row)
    console.print(table)


@app.command()
def export(run_id: str, out: Path, stage: int = -1, config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Export a stage's mixture (default: the last) to .parquet, .jsonl or .jsonl.gz for training."""
    from influmix.report import mixture_summary

    path = guarded(lambda: database_for(config, db))
    stages = [s["stage"] for s in guarded(lambda: mixture_summary(path, run_id))["stages"]]
    if not stages:
        fail(f"run {run_id} has no mixture yet")
    chosen = stages[-1] if stage < 0 else stage
    if chosen not in stages:
        fail(f"run {run_id} has no stage {chosen} (stages: {stages})")
    # a stage module (Prefect, torch): imported only once the cheap checks have passed
    from tasks.mixture import export_mixture

    rows = guarded(lambda: export_mixture(path, run_id, chosen, out))
    console.print(f"wrote {rows:,} documents of {run_id} stage {chosen} to {out}")


@app.command()
def serve(config: ConfigOpt = None, set_: SetOpt = None, debug: bool = False) -> None:
    """Start the Prefect server + UI, a process worker and the MLflow server on 127.0.0.1 (health-checked)."""
    from influmix.services import ServiceError, services_dir
    from influmix.services import serve as start_services

    settings = guarded(lambda: load_settings(config, set_), debug)
    try:
        urls = start_services(settings, echo=lambda line: console.print(line, highlight=False, soft_wrap=True))
    except ServiceError as exc:
        fail(f"{exc}\n(services already started keep running: `influmix stop` stops them)")
    console.print(f"Prefect UI  {urls['prefect-server']}\nMLflow UI   {urls['mlflow-server']}\n"
                  f"clients:    source {services_dir(settings) / 'env'}", highlight=False)


@app.command()
def stop(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Stop the services `influmix serve` started (only those: by their pid files)."""
    from influmix.services import stop as stop_services

    settings = guarded(lambda: load_settings(config, set_))
    if not stop_services(settings, echo=lambda line: console.print(line, highlight=False)):
        console.print("nothing was running")


@app.command()
def services(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Show whether each served process is up and healthy, and when each deployment runs next."""
    from rich.table import Table

    from influmix.services import next_scheduled_runs, status

    settings = guarded(lambda: load_settings(config, set_))
    table = Table("service", "pid", "healthy", "url")
    rows = status(settings)
    for name, pid, healthy, url in rows:
        table.add_row(name, str(pid or "-"), "yes" if healthy else "no", url)
    console.print(table)
    if any(name == "prefect-server" and healthy for name, _, healthy, _ in rows):
        schedule = Table("deployment", "next scheduled run")
        for deployment, due in next_scheduled_runs(settings):
            schedule.add_row(deployment, due)
        console.print(schedule)


@app.command(name="config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the effective settings (defaults, file and overrides) as JSON."""
    settings = guarded(lambda: load_settings(config, set_))
    console.print_json(settings.model_dump_json())


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
