"""Add each mixture's quality shares to finished selection results: python -m benchmarks.selection_quality.

`benchmarks.selection` measures `mixture_quality` (records under 100 characters, records py3langid does not
call English) for every selection it makes; results written before it did have none. This reads the
mixtures the work folder cached (`seed-N/selections.json`, the same selections the evaluator trained on:
their cache key is checked against the results' configuration by the benchmark itself), measures them,
re-summarises and rewrites the results JSON and its table.

    python -m benchmarks.selection_quality --workdir /work/bench/quick --results benchmarks/results/selection_quick.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import selection_report as report
from benchmarks.provenance import write_json
from benchmarks.selection_methods import mixture_quality, stage_texts
from benchmarks.selection_pool import RUN_ID
from core import db


def add_quality(results: dict, workdir: Path) -> int:
    """Fill `mixture_quality` for every method and seed whose mixture the work folder holds; returns how many."""
    cached: dict[str, dict] = {}  # seed -> its selections.json's methods, read once
    for seed in {s for method in results["methods"].values() for s in method["seeds"]}:
        path = workdir / f"seed-{seed}" / "selections.json"
        cached[seed] = json.loads(path.read_text())["methods"] if path.exists() else {}
    added = 0
    with db.connect(workdir / "runs" / "influmix.duckdb", read_only=True) as con:
        for name, method in results["methods"].items():
            for seed, run in method["seeds"].items():
                entry = cached[seed].get(name)
                if "mixture_quality" in run["selection"] or entry is None:
                    continue
                if entry["tokens_per_stage"] != run["selection"]["tokens_per_stage"]:
                    continue  # not the mixture this result was measured on
                run["selection"]["mixture_quality"] = mixture_quality(stage_texts(con, RUN_ID, entry["stages"]))
                added += 1
    return added


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the benchmark's work folder (pool, seed-N)")
    parser.add_argument("--results", type=Path, required=True, help="results JSON to complete in place")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    added = add_quality(results, args.workdir.resolve())
    report.summarise(results)
    write_json(results, args.results)
    args.results.with_suffix(".md").write_text(report.table(results))
    print(f"{added} mixtures measured")
    print(report.table(results))


if __name__ == "__main__":
    main()
