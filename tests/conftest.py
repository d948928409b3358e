"""Shared fixtures: tiny real settings over the bundled sample, one Prefect harness, one end-to-end run."""

from __future__ import annotations

import gzip
import json
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


def tiny_overrides(run_dir: Path, corpus_records: int = 240) -> list[str]:
    """A whole run at toy scale: real data, real models, seconds per stage on 2 CPU cores."""
    return [
        f'run_dir="{run_dir}"',
        (f'ingest.sources=[{{path="{SAMPLE / "corpus.jsonl.gz"}", max_records={corpus_records}}}, '
         f'{{path="{SAMPLE / "broken.jsonl"}", domain="unknown"}}]'),
        f'reference.sources=[{{path="{SAMPLE / "reference.jsonl.gz"}"}}]',
        "reference.max_documents=40",
        "embed.max_seq_length=64",
        "cluster.k=4",
        "proxy.vocab_size=512",
        "proxy.seq_len=64",
        "proxy.batch_size=4",
        "proxy.steps_per_stage=12",
        "proxy.warmup_steps=2",
        "proxy.tokenizer_max_docs=200",
        "probe.n_probes=24",
        "probe.reference_sequences=8",
        "distill.epochs=40",
        "select.token_budget=6000",
        "stages=2",
    ]


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
    overrides = tiny_overrides(run_dir)
    result = curate(None, overrides)
    return load_settings(None, overrides), result


@pytest.fixture(scope="session")
def second_run(e2e_run):
    """A second run beside the first, with other bandit settings: what `influmix compare` is for."""
    from flows.curate import curate

    settings, _ = e2e_run
    overrides = [*tiny_overrides(settings.run_dir), "select.ucb_alpha=0.0", "select.exploit_batch=4",
                 "track.registered_model=influmix-influence-second"]
    return curate(None, overrides)
