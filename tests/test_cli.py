"""The command line as a user meets it: clear one-line errors, and `show`/`export` on a real run."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def influmix(*args: str, cwd=None, columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": str(columns)}
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
    assert "probe.sampling" in out and "select.method" in out  # the config differences
    assert "token share by domain" in out and "Jaccard" in out
    assert first.tracked.mlflow_run_id in out and second_run.tracked.mlflow_run_id in out


def test_compare_needs_two_runs(e2e_run):
    settings, first = e2e_run
    assert_clean_error(influmix("compare", first.run_id, first.run_id, "--db", str(settings.database)), "two")


def test_a_file_that_is_no_database_is_one_line(tmp_path):
    parquet, text = tmp_path / "mix.parquet", tmp_path / "notes.txt"
    pq.write_table(pa.table({"doc_id": ["a", "b"]}), parquet)
    text.write_text("not a database\n")
    for path in (parquet, text):
        for command in ("runs", "show"):
            args = [command, "--db", str(path)] if command == "runs" else [command, "run-x", "--db", str(path)]
            proc = influmix(*args)
            assert_clean_error(proc, str(path), "is not a DuckDB database")
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_no_database_found_hints_at_config(tmp_path):
    proc = influmix("runs", cwd=tmp_path)
    assert_clean_error(proc, "no influmix database at runs/influmix.duckdb", "--config", "--db")


def test_error_paths_stay_light(tmp_path):
    """A one-line error must not load the stages' heavy libraries (it took 8 s when it imported torch)."""
    code = ("import sys\nfrom influmix.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n"
            "    print('exit', exc.code)\n"
            "print('heavy:', sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'prefect', 'mlflow') "
            "if m in sys.modules))")
    for args in (["runs", "--db", str(tmp_path / "missing.duckdb")], ["show", "run-x", "--db", str(tmp_path / "x.txt")],
                 ["config", "--set", "select.token_budget=-1"]):
        (tmp_path / "x.txt").write_text("text")
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                              check=False, env={**os.environ, "COLUMNS": "200"})
        assert "exit 2" in proc.stdout and "heavy: []" in proc.stdout, (args, proc.stdout, proc.stderr)


def test_runs_ids_stay_whole_when_piped(e2e_run, second_run):
    import re

    settings, first = e2e_run
    for columns in (80, 200):
        proc = influmix("runs", "--db", str(settings.database), columns=columns)
        assert proc.returncode == 0, proc.stderr
        for run_id in (first.run_id, second_run.run_id):
            assert re.search(rf"(^|\s){re.escape(run_id)}(\s|$)", proc.stdout, re.MULTILINE), proc.stdout
        assert not re.search(r"\d:\d\d\.\d", proc.stdout), proc.stdout  # seconds without their fractions
    plain = influmix("runs", "--db", str(settings.database), "--plain", columns=40)
    assert plain.returncode == 0, plain.stderr
    rows = [line.split("\t") for line in plain.stdout.splitlines()]
    assert {r[0] for r in rows} >= {first.run_id, second_run.run_id} and all(len(r) == 5 for r in rows)
    by_id = {r[0]: r for r in rows}
    assert by_id[first.run_id][1] == "completed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", by_id[first.run_id][2])
    assert by_id[first.run_id][4] == settings.config_hash()


def test_export_refuses_a_missing_folder(tmp_path, e2e_run):
    settings, result = e2e_run
    out = tmp_path / "no-such-folder" / "mix.parquet"
    assert_clean_error(influmix("export", result.run_id, str(out), "--db", str(settings.database)),
                       "no-such-folder", "does not exist")
    assert not out.parent.exists()


def test_one_prefect_home_per_run_directory(tmp_path, monkeypatch):
    """`influmix run` and the served stack share `<run_dir>/prefect`: a run made without the stack shows in its UI."""
    from core.config import load_settings
    from influmix import services
    from influmix.cli import run_environment

    monkeypatch.delenv("PREFECT_HOME", raising=False)
    settings = load_settings(None, [f'run_dir="{tmp_path / "runs"}"'])
    served = {s.name: s for s in services.plan(settings)}
    home = run_environment(settings)["PREFECT_HOME"]
    assert home == served["prefect-server"].env["PREFECT_HOME"] == served["prefect-worker"].env["PREFECT_HOME"]
    assert home == str((tmp_path / "runs" / "prefect").resolve())
    assert served["prefect-server"].pid_file == services.prefect_home(settings) / "server.pid"  # Prefect's own
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "elsewhere"))
    assert run_environment(settings)["PREFECT_HOME"] == str(tmp_path / "elsewhere")
