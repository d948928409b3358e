"""The command line as a user meets it: clear one-line errors, and `show`/`export` on a real run."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq


def influmix(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "influmix.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600, check=False)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_missing_config_file(tmp_path):
    assert_clean_error(influmix("run", "--config", str(tmp_path / "missing.toml")), "does not exist")


def test_bad_setting_value(tmp_path):
    assert_clean_error(influmix("config", "--set", "select.token_budget=-1"), "select.token_budget")


def test_missing_input_path_fails_before_any_work(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'run_dir = "{tmp_path}/runs"\n[[ingest.sources]]\npath = "{tmp_path}/nope/*.jsonl"\n'
                   f'[[reference.sources]]\npath = "{tmp_path}/ref.jsonl"\n')
    (tmp_path / "ref.jsonl").write_text('{"text": "reference text"}\n')
    assert_clean_error(influmix("run", "--config", str(cfg)), "nope")


def test_unknown_run(tmp_path, e2e_run):
    settings, _ = e2e_run
    assert_clean_error(influmix("show", "run-does-not-exist", "--db", str(settings.database)), "run-does-not-exist")


def test_show_prints_mixture_summary(e2e_run):
    settings, result = e2e_run
    proc = influmix("show", result.run_id, "--db", str(settings.database))
    assert proc.returncode == 0, proc.stderr
    assert result.run_id in proc.stdout
    assert "by domain" in proc.stdout and "by cluster" in proc.stdout


def test_export_parquet_and_jsonl(tmp_path, e2e_run):
    settings, result = e2e_run
    out = tmp_path / "mix.parquet"
    proc = influmix("export", result.run_id, str(out), "--db", str(settings.database))
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.num_rows > 0 and {"doc_id", "text", "domain", "n_tokens"} <= set(table.column_names)
    assert sum(table.column("n_tokens").to_pylist()) <= settings.select.token_budget
    out_jsonl = tmp_path / "mix.jsonl.gz"
    proc = influmix("export", result.run_id, str(out_jsonl), "--stage", "0", "--db", str(settings.database))
    assert proc.returncode == 0, proc.stderr
    with gzip.open(out_jsonl, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    assert rows and all(r["stage"] == 0 and r["text"] for r in rows)


def test_compare_two_runs(e2e_run, second_run):
    settings, first = e2e_run
    proc = influmix("compare", first.run_id, second_run.run_id, "--db", str(settings.database),
                    "--set", f'run_dir="{settings.run_dir}"')
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "select.ucb_alpha" in out and "select.exploit_batch" in out  # the config differences
    assert "token share by domain" in out and "Jaccard" in out
    assert first.tracked.mlflow_run_id in out and second_run.tracked.mlflow_run_id in out


def test_compare_needs_two_runs(e2e_run):
    settings, first = e2e_run
    assert_clean_error(influmix("compare", first.run_id, first.run_id, "--db", str(settings.database)), "two")
