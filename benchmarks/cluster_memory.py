"""Peak memory and time of the cluster stage on synthetic embeddings, for the code in this tree or another.

    python -m benchmarks.cluster_memory                        # 100k and 1M, this tree's tasks/cluster.py
    python -m benchmarks.cluster_memory --code /tmp/before --label before   # e.g. `git archive` of an older commit

Each measurement runs `tasks.cluster.cluster_documents` alone in a fresh process (its peak RSS from
`os.wait4`, like benchmarks/scale.py) on a DuckDB file holding only `embeddings`: unit-norm 384-d vectors
around 32 seeded centres (what matters for memory is the matrix, not its meaning), copied afresh for
every measurement so that no version pays for deleting another's clusters. The labels each run
wrote are saved, so runs of two code versions on the same file are compared (adjusted Rand index).
Results are merged into `benchmarks/results/cluster_memory.json` under `--label`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scale import device, git_state, versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cluster_memory.json"
RUN_ID = "synthetic"
DIM, CENTRES, CHUNK = 384, 32, 50_000

CHILD = """
import json, sys, time
import numpy as np
from core import db
from core.config import load_settings
from tasks.cluster import cluster_documents
database, k, labels_out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
settings = load_settings(None, [f'db_path="{database}"', f'run_dir="{database}.runs"', f"cluster.k={k}"])
started = time.perf_counter()
stats = cluster_documents(settings, "synthetic")
seconds = time.perf_counter() - started
with db.connect(database, read_only=True) as con:
    labels = con.sql("SELECT cluster_id FROM cluster_assignments WHERE run_id = 'synthetic' ORDER BY doc_id").fetchnumpy()
np.save(labels_out, labels["cluster_id"].astype(np.int32))
print(json.dumps({"seconds": seconds, "inertia": stats.inertia, "smallest": stats.smallest, "largest": stats.largest}))
"""
FLOOR = "import tasks.cluster, core.db, core.config"


def synthetic_database(path: Path, n: int, seed: int = 0) -> Path:
    """`n` unit-norm 384-d embeddings around `CENTRES` seeded centres, in `embeddings` (made once per size)."""
    from core import db

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with db.connect(tmp) as con:
        for start in range(0, n, CHUNK):
            rows = min(CHUNK, n - start)
            x = centres[rng.integers(0, CENTRES, rows)] + 1.5 * rng.standard_normal((rows, DIM)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            write_embeddings(con, RUN_ID, [f"d{start + i:08d}" for i in range(rows)], x)
    tmp.rename(path)
    return path


def write_embeddings(con, run_id: str, doc_ids: list[str], vectors: np.ndarray, model: str = "synthetic") -> None:
    """Vectors for documents that have no real text (a synthetic pool), stored as the embed stage stores
    them: a document row each, its vector in `embedding_cache` (keyed by the document id) under the model
    name as key, and the run's `embeddings` view pointed at that key. tests/test_cluster.py uses it too."""
    import pyarrow as pa

    from core import db

    rows, dim = vectors.shape
    ids = pa.array(doc_ids)
    db.insert_arrow(con, "insert_documents", pa.table({
        "run_id": pa.array([run_id] * rows), "doc_id": ids, "text": pa.array(["synthetic"] * rows),
        "source": pa.array(["synthetic"] * rows), "locator": pa.array([f"row:{d}" for d in doc_ids]),
        "domain": pa.array(["synthetic"] * rows), "n_chars": pa.array(np.full(rows, 9, dtype=np.int32)),
        "content_hash": ids}))
    db.insert_arrow(con, "insert_embedding_cache", pa.table({
        "content_hash": ids, "model_key": pa.array([model] * rows),
        "embedding": pa.FixedSizeListArray.from_arrays(vectors.astype(np.float32).reshape(-1), dim)
        .cast(pa.list_(pa.float32()))}))
    db.run(con, "set_run_embedding_model", {"run_id": run_id, "model": model, "model_key": model})


def run_measured(code: Path, args: list[str], child: str = CHILD, floor: str = FLOOR) -> dict[str, Any]:
    """Run `child` (or, without args, the import `floor`) with `code` first on the path: wall, CPU and peak
    RSS of that process alone (`os.wait4`; resource.RUSAGE_CHILDREN would be the largest child so far) and
    the JSON its last line prints. benchmarks/select_scaling.py measures its stage the same way."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", child if args else floor, *args], cwd=code, env=env,
                                stdout=subprocess.PIPE, stderr=sink, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"measured child exited with {os.waitstatus_to_exitcode(status)}")
    inner = json.loads(out.splitlines()[-1]) if args else {}
    return {"process_wall_s": round(time.perf_counter() - started, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), **inner}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--code", type=Path, default=ROOT, help="source tree whose tasks/cluster.py is measured")
    parser.add_argument("--label", default="after")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-cluster-memory")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "cluster_memory", "runs": {}}
    floor = run_measured(args.code.resolve(), [])
    entry: dict[str, Any] = {"code": str(args.code), "k": args.k, "import_floor_rss_mib": floor["peak_rss_mib"],
                             "sizes": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        pristine = synthetic_database(args.workdir / f"synthetic-{n}.duckdb", n)
        database = args.workdir / "measured.duckdb"  # every version starts from the same file: no earlier clusters
        shutil.copyfile(pristine, database)
        labels = args.workdir / f"labels-{n}-{args.label}.npy"
        figures = run_measured(args.code.resolve(), [str(database.resolve()), str(args.k), str(labels)])
        database.unlink()
        entry["sizes"][str(n)] = figures
        print(f"{args.label} {n:>9,}: {figures['seconds']:.1f} s, peak RSS {figures['peak_rss_mib']:.0f} MiB", flush=True)
    results["runs"][args.label] = entry
    results["agreement"] = agreement(args.workdir, sorted(results["runs"]), list(entry["sizes"]))
    results.update({"device": device(), "versions": versions(), "git": git_state(), "date": datetime.now(UTC).isoformat(
        timespec="seconds"), "command": " ".join(["python -m benchmarks.cluster_memory", *(argv or sys.argv[1:])]),
        "threads": os.environ.get("OMP_NUM_THREADS", "1"), "data": f"{DIM}-d unit vectors around {CENTRES} seeded centres"})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    return results


def agreement(workdir: Path, labels: list[str], sizes: list[str]) -> dict[str, float]:
    """Adjusted Rand index between the first two labelled versions' clusterings, per size."""
    from sklearn.metrics import adjusted_rand_score

    out = {}
    for n in sizes:
        files = [workdir / f"labels-{n}-{label}.npy" for label in labels[:2]]
        if len(files) == 2 and all(f.exists() for f in files):
            out[f"{labels[0]}_vs_{labels[1]}_ari_{n}"] = round(float(adjusted_rand_score(*(np.load(f) for f in files))), 4)
    return out


if __name__ == "__main__":
    main()
