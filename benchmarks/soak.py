"""The served stack left up for an hour, as an operator leaves it: are scheduled runs made and run, and do
the service logs stay clean?

    python -m benchmarks.soak --minutes 60 --every 10      # ~65 min; writes benchmarks/results/soak.json

It starts `influmix serve` over its own run directory and free ports, registers infra/prefect.yaml's
deployments plus `curate-soak` (the nightly's definition at test scale on the bundled sample, with an
interval schedule of `--every` minutes whose first run is due two minutes after deploying), and then only
watches: every minute it reads the scheduled flow runs and `influmix services`. At the end it counts the
scheduled runs by state, checks each completed one has a FINISHED MLflow run, stops the stack and scans
every service log for tracebacks and `database is locked` (before and after `influmix stop`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
TINY = REPO / "configs" / "tiny.toml"
BIN = Path(sys.executable).parent
LOG_PROBLEMS = ("Traceback (most recent call last)", "database is locked")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def soak_overrides(run_dir: Path) -> list[str]:
    """A whole run at test scale on the bundled sample (sizes: configs/tiny.toml): about a minute on 2 cores."""
    return [f'run_dir="{run_dir}"',
            (f'ingest.sources=[{{path="{SAMPLE / "corpus.jsonl.gz"}", max_records=240}}, '
             f'{{path="{SAMPLE / "broken.jsonl"}", domain="unknown"}}]'),
            f'reference.sources=[{{path="{SAMPLE / "reference.jsonl.gz"}"}}]']


def sh(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout, check=False,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def log_problems(folder: Path) -> list[dict[str, Any]]:
    found = []
    for log in sorted(folder.glob("*.log")):
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), start=1):
            if any(p in line for p in LOG_PROBLEMS):
                found.append({"log": log.name, "line": number, "text": line.strip()[:300]})
    return found


def deploy(settings, env: dict[str, str], workdir: Path, every_min: float) -> datetime:
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    nightly = next(d for d in spec["deployments"] if d["name"] == "curate-nightly")
    first = datetime.now(UTC) + timedelta(minutes=2)
    spec["deployments"].append({**nightly, "name": "curate-soak", "parameters": {
        "config": str(TINY), "overrides": soak_overrides(settings.run_dir)}, "schedules": [
        {"interval": int(every_min * 60), "anchor_date": first.isoformat(), "active": True}]})
    prefect_file = workdir / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec))
    proc = sh([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)], env)
    if proc.returncode:
        raise SystemExit(f"prefect deploy failed:\n{proc.stdout}\n{proc.stderr}")
    return first


def stack_env(services: Path) -> dict[str, str]:
    """What `source <run_dir>/services/env` gives an operator's shell (`influmix serve` writes it)."""
    lines = (services / "env").read_text().splitlines()
    return dict(line.removeprefix("export ").split("=", 1) for line in lines if "=" in line)


def flow_runs(env: dict[str, str], deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as c:
        return c.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))


def mlflow_runs(settings, env: dict[str, str]) -> dict[str, str]:
    """MLflow run status by the Prefect flow run it belongs to."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(settings.track.experiment)
    if experiment is None:
        return {}
    return {r.data.tags.get("prefect.flow_run_id", ""): r.info.status for r in client.search_runs([experiment.experiment_id])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the stack stays up after deploying")
    parser.add_argument("--every", type=float, default=10.0, help="minutes between curate-soak's scheduled runs")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "soak")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args(argv)

    from core.config import load_settings

    args.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = (args.workdir / "runs").resolve()
    serve_args = [f'run_dir="{run_dir}"', f"serve.prefect_port={free_port()}", f"serve.mlflow_port={free_port()}"]
    settings = load_settings(None, serve_args)
    cli_args = [a for item in serve_args for a in ("--set", item)]
    started = time.monotonic()
    up = sh([str(BIN / "influmix"), "serve", *cli_args])
    if up.returncode:
        raise SystemExit(f"influmix serve failed:\n{up.stdout}\n{up.stderr}")
    samples: list[dict[str, Any]] = []
    services = settings.run_dir / "services"
    try:
        env = {**stack_env(services), "PWD": str(REPO)}
        first = deploy(settings, env, args.workdir, args.every)
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            runs = flow_runs(env, "curate-soak")
            shown = sh([str(BIN / "influmix"), "services", *cli_args]).stdout
            samples.append({"at": datetime.now(UTC).isoformat(timespec="seconds"),
                            "states": sorted(str(r.state_type.value) for r in runs),
                            "next_shown": [line.strip() for line in shown.splitlines() if "curate-" in line]})
            print(samples[-1], flush=True)
            time.sleep(60)
        runs = flow_runs(env, "curate-soak")
        nightly = flow_runs(env, "curate-nightly")
        tracked = mlflow_runs(settings, env)
        before_stop = log_problems(services)
    finally:
        down = sh([str(BIN / "influmix"), "stop", *cli_args])
    after_stop = log_problems(services)
    scheduled = [r for r in runs if r.auto_scheduled]
    done = [r for r in scheduled if r.state_type.value == "COMPLETED"]
    result = {
        "command": " ".join(["python -m benchmarks.soak", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "minutes_up": round((time.monotonic() - started) / 60, 1), "first_due": first.isoformat(timespec="seconds"),
        "every_minutes": args.every,
        "curate_soak_runs_by_state": {s: sum(str(r.state_type.value) == s for r in scheduled)
                                      for s in sorted({str(r.state_type.value) for r in scheduled})},
        "curate_nightly_upcoming": sorted(str(r.expected_start_time) for r in nightly if r.auto_scheduled)[:3],
        "completed_with_finished_mlflow_run": sum(tracked.get(str(r.id)) == "FINISHED" for r in done),
        "completed": len(done),
        "log_problems_before_stop": before_stop, "log_problems_after_stop": after_stop,
        "stop_returncode": down.returncode, "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
