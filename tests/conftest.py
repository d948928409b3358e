"""Shared fixtures: tiny real settings over the bundled sample, one Prefect harness, one end-to-end run."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import tomllib
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
# A proxy LM small enough for unit tests to train and probe in seconds.
SMALL_LM = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def sample_texts(n: int = 300, max_chars: int | None = None) -> list[str]:
    """The first n texts of the bundled sample corpus: real, multi-domain, junk included."""
    texts = []
    with gzip.open(SAMPLE / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"][:max_chars])
            if len(texts) == n:
                break
    return texts


def query(settings, sql: str, params: list | dict | None = None) -> list[tuple]:
    """Rows of one SQL statement against a run's DuckDB file, opened read-only (what tests assert on)."""
    import duckdb

    con = duckdb.connect(str(settings.database), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def free_port() -> int:
    """A TCP port nobody listens on right now, for servers the tests start on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def environment_left_as_found():
    """`influmix run` called in-process (CliRunner) exports its Prefect home and served URLs, as a process
    entry point should; without this, the next test's children would inherit another test's PREFECT_HOME."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


# What must never appear in a served process's log: a traceback, or SQLite refusing a write.
SERVICE_LOG_PROBLEMS = ("Traceback (most recent call last)", "database is locked")


# An exception's own line in a traceback, nested (`|`) or not: `AttributeError: ...`, `ExceptionGroup: ...`.
RAISED = re.compile(r"^[\s|]*[A-Za-z_][\w.]*(Error|Exception|Group|Exit|Interrupt)\b(:.*)?$")


def service_log_problems(folder: Path, excerpt: int = 12, scan: int = 2000) -> list[str]:
    """Every traceback or lock error in the service logs under `folder`, as `log:line:`, what follows it, and
    the exceptions raised in the `scan` lines after it: a deep server stack's cause is at its end, far below
    the first lines (CI once showed 40 lines of middleware frames and no cause)."""
    found = []
    for log in sorted(folder.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines):
            if any(problem in line for problem in SERVICE_LOG_PROBLEMS):
                raised = list(dict.fromkeys(r.strip(" |") for r in lines[number + 1:number + scan] if RAISED.match(r)))
                found.append(f"{log.name}:{number + 1}:\n" + "\n".join(lines[number:number + excerpt])
                             + "\n  ...\n  raised: " + "\n  raised: ".join(raised[:6]))
    return found


def tiny_sizes() -> list[str]:
    """configs/tiny.toml (the sizes of a toy run, shared with the soak and the scale benchmark's test) as
    `section.key=value` overrides, so tests can layer them with paths of their own."""
    with (REPO / "configs" / "tiny.toml").open("rb") as fh:
        tiny = tomllib.load(fh)
    flat = [(f"{section}.{key}", value) for section, table in tiny.items() if isinstance(table, dict)
            for key, value in table.items()]
    flat += [(key, value) for key, value in tiny.items() if not isinstance(value, dict)]
    return [f"{key}={json.dumps(value)}" for key, value in flat]


def tiny_overrides(run_dir: Path, corpus_records: int = 240) -> list[str]:
    """A whole run at toy scale: real data, real models, seconds per stage on 2 CPU cores."""
    return [
        f'run_dir="{run_dir}"',
        (f'ingest.sources=[{{path="{SAMPLE / "corpus.jsonl.gz"}", max_records={corpus_records}}}, '
         f'{{path="{SAMPLE / "broken.jsonl"}", domain="unknown"}}]'),
        f'reference.sources=[{{path="{SAMPLE / "reference.jsonl.gz"}"}}]',
        *tiny_sizes(),
        "track.alias_min_spearman=-1.0",  # 16 held-out probes rank by chance; test_tracking tests the gate itself
    ]


BANDIT_PATH = ['probe.sampling="bandit"', "probe.group_rollouts=true", 'select.method="bandit"']
"""The shared end-to-end run spends its probes with the oracle bandit and its group rewards, an option since
the cascade made it tie (the defaults run in `second_run` and `make demo`): the bandit's tests read its rows."""


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the session (~14 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory, prefect_harness):
    """The real flow, once, at tiny scale: (settings, RunResult)."""
    from core.config import load_settings
    from flows.curate import curate

    run_dir = tmp_path_factory.mktemp("e2e") / "runs"
    overrides = [*tiny_overrides(run_dir), *BANDIT_PATH]
    result = curate(None, overrides)
    return load_settings(None, overrides), result


@pytest.fixture(scope="session")
def second_run(e2e_run):
    """A second run beside the first, with the product's own defaults (uniform probes, no rollouts, top-k and
    the cascade) where the first ran the bandit: what `influmix compare` is for."""
    from flows.curate import curate

    settings, _ = e2e_run
    overrides = [*tiny_overrides(settings.run_dir), "track.registered_model=influmix-influence-second"]
    return curate(None, overrides)
