"""Several processes on one DuckDB file: they take turns ("database busy, waiting"), never corrupt it, and
readers never see half a mixture."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time

import duckdb

from tests.conftest import REPO

INFLUMIX = [sys.executable, "-m", "influmix.cli"]


def test_reader_waits_for_a_writer_then_answers(tmp_path, e2e_run):
    settings, result = e2e_run
    database = tmp_path / "copy.duckdb"
    shutil.copy(settings.database, database)
    holder = duckdb.connect(str(database))  # another process's long write, as far as the reader can tell
    reader = subprocess.Popen([*INFLUMIX, "show", result.run_id, "--db", str(database)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = reader.stderr.readline()
        assert "busy" in line and "waiting" in line, line
        time.sleep(1)
        assert reader.poll() is None  # still waiting, not failed
    finally:
        holder.close()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert result.run_id in out and "Traceback" not in err


def test_concurrent_writers_and_a_reader_keep_every_mixture_whole(tmp_path, e2e_run):
    settings, result = e2e_run
    database = tmp_path / "copy.duckdb"
    shutil.copy(settings.database, database)
    client = [sys.executable, "-m", "tests.concurrent_client"]
    barrier = tmp_path / "barrier"
    procs = [subprocess.Popen([*client, "write", str(database), result.run_id, str(100 + k), "6", str(k), str(barrier)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    procs.append(subprocess.Popen([*client, "read", str(database), result.run_id, "12"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    assert "checked" in outputs[-1][0]
    writes = sorted((float(start), float(end), k) for k in range(2)
                    for _, start, end in (line.split() for line in outputs[k][0].splitlines() if line.startswith("wrote")))
    assert len(writes) == 12
    writers_in_time_order = [k for _, _, k in writes]
    switches = sum(a != b for a, b in itertools.pairwise(writers_in_time_order))
    assert switches >= 2, writers_in_time_order  # A..B..A: the writers' transactions interleaved, not one after the other
    con = duckdb.connect(str(database), read_only=True)
    try:
        rows = con.execute("SELECT m.stage, m.n_documents, count(*) FROM mixtures m JOIN mixture_members mm "
                           "USING (run_id, stage) WHERE m.run_id = ? AND m.stage >= 100 "
                           "GROUP BY m.stage, m.n_documents ORDER BY m.stage", [result.run_id]).fetchall()
    finally:
        con.close()
    assert [r[0] for r in rows] == [100, 101] and all(r[1] == r[2] for r in rows)
