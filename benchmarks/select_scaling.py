"""Time and peak memory of the select stage alone, at pool sizes the whole flow takes an hour to reach.

    python -m benchmarks.select_scaling                        # 100k and 1M, this tree's tasks/select.py
    python -m benchmarks.select_scaling --code /tmp/before --label before   # e.g. `git archive` of an older commit

`benchmarks/scale.py` measured select's time growing with exponent 1.17 from 100k to 1M documents (0.73 s
to 10.7 s) inside a whole run, with other work on the cores. This isolates the stage: each measurement
runs `tasks.select.select_stage` in a fresh process (benchmarks/cluster_memory.py's `run_measured`) on a
DuckDB file holding only what select reads (documents, cluster assignments over 16 arms, one stage's
influence scores), at a budget of 13 tokens per document like the scale benchmark. Results are merged
into `benchmarks/results/select_scaling.json` under `--label`, with the exponent between the sizes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.cluster_memory import run_measured
from benchmarks.scale import device, git_state, versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "select_scaling.json"
RUN_ID, K, BUDGET_PER_DOC = "synthetic", 16, 13

CHILD = """
import json, sys, time
from types import SimpleNamespace
import duckdb, pandas, pyarrow  # a run has imported them long before select (pyarrow imports pandas on its first to_numpy)
from core.config import load_settings
from tasks.select import select_stage
database, budget = sys.argv[1], int(sys.argv[2])
settings = load_settings(None, [f'db_path="{database}"', f'run_dir="{database}.runs"', f"select.token_budget={budget}"])
arms = [((7 * j) % 16 - 8) / 8 for j in range(16)]  # a spread of arm rewards, the bandit's output
started = time.perf_counter()
chosen = select_stage(settings, SimpleNamespace(run_id="synthetic", stage=0), SimpleNamespace(k=16),
                      SimpleNamespace(arm_scores=arms, pulls=64), progress=False)
print(json.dumps({"seconds": time.perf_counter() - started, "selected": len(chosen.doc_ids), "tokens": chosen.tokens}))
"""
FLOOR = "import tasks.select, core.db, core.config"


def synthetic_database(path: Path, n: int, chunk: int = 200_000) -> Path:
    """`n` pool documents (50-349 tokens), their arms and stage-0 scores, written in chunks through the
    pipeline's own statements (made once per size)."""
    import numpy as np
    import pyarrow as pa

    from core import db

    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    rng = np.random.default_rng(0)
    with db.connect(tmp) as con:
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            ids = pa.array([f"d{start + i:08d}" for i in range(rows)])
            run = pa.array([RUN_ID] * rows)
            db.insert_arrow(con, "insert_documents", pa.table({
                "run_id": run, "doc_id": ids, "text": pa.array(["x"] * rows), "source": pa.array(["synthetic"] * rows),
                "locator": pa.array([f"line:{start + i}" for i in range(rows)]), "domain": pa.array(["d"] * rows),
                "n_chars": pa.array(np.ones(rows, dtype=np.int32)),
                "content_hash": pa.array([f"h{start + i}" for i in range(rows)])}))
            db.insert_arrow(con, "update_token_counts", pa.table({
                "run_id": run, "doc_id": ids, "n_tokens": pa.array(rng.integers(50, 350, rows, dtype=np.int32))}))
            db.insert_arrow(con, "insert_cluster_assignments", pa.table({
                "run_id": run, "doc_id": ids, "cluster_id": pa.array(rng.integers(0, K, rows, dtype=np.int32)),
                "distance": pa.array(np.zeros(rows))}))
            db.insert_arrow(con, "insert_influence_scores", pa.table({
                "run_id": run, "stage": pa.array(np.zeros(rows, dtype=np.int32)), "doc_id": ids,
                "score": pa.array(rng.standard_normal(rows))}))
    tmp.rename(path)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--code", type=Path, default=ROOT, help="source tree whose tasks/select.py is measured")
    parser.add_argument("--label", default="after")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-select-scaling")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"benchmark": "select_scaling", "runs": {}}
    entry: dict[str, Any] = {"code": str(args.code), "k": K, "sizes": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        database = synthetic_database(args.workdir / f"synthetic-{n}.duckdb", n)
        figures = run_measured(args.code.resolve(), [str(database.resolve()), str(n * BUDGET_PER_DOC)], CHILD, FLOOR)
        entry["sizes"][str(n)] = figures
        print(f"{args.label} {n:>9,}: {figures['seconds']:.2f} s, peak RSS {figures['peak_rss_mib']:.0f} MiB", flush=True)
    sizes = sorted(entry["sizes"], key=int)
    entry["exponents"] = {f"{a}-{b}": round(math.log(entry["sizes"][b]["seconds"] / entry["sizes"][a]["seconds"])
                                            / math.log(int(b) / int(a)), 3) for a, b in itertools.pairwise(sizes)}
    results["runs"][args.label] = entry
    results.update({"device": device(), "versions": versions(), "git": git_state(), "date": datetime.now(UTC).isoformat(
        timespec="seconds"), "command": " ".join(["python -m benchmarks.select_scaling", *(argv or sys.argv[1:])]),
        "threads": os.environ.get("OMP_NUM_THREADS", "1"), "budget_tokens_per_document": BUDGET_PER_DOC})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
