"""Merge selection-benchmark results that ran in separate work folders into one results file, then summarise,
plot and tabulate it as benchmarks.selection does.

Why: on 2 cores the seeds (or methods) of one configuration run side by side, each in its own copy of the
work folder (DuckDB has one writer). Their results files differ in `workdir`, so benchmarks.selection would
take each other's entries for another configuration and start them over. Here a method's entries must agree
on everything else its results depend on (`method_view`), or the merge stops and names the keys that differ.
Code defaults are not part of that view: take a method only from files written by the code you mean to
report, which is why each input names the methods it gives (`FILE:method,method`; all by default).

    python -m benchmarks.selection_merge benchmarks/results/selection_speech_quick.json \
        old.json:random,dsir,domain_oracle /work/bench/speech/speech.json:influmix

A (method, seed) in a later input replaces the same pair from an earlier one. MLflow runs stay in the stores
the inputs logged them to; the merged file lists the inputs (`merged_from`).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import selection_report as report
from benchmarks.provenance import write_json
from benchmarks.selection import method_view
from benchmarks.selection_methods import METHODS

PER_FOLDER = ("workdir",)
"""Comparable keys that differ between the work folders of one configuration."""


def result_view(entry: dict[str, Any], results: dict[str, Any], method: str) -> dict[str, Any] | None:
    """The configuration `method`'s results in `entry` (a method's entry of `results`) belong to, less where it ran."""
    comparable = {k: v for k, v in entry.get("comparable", results.get("comparable", {})).items()
                  if k not in PER_FOLDER}
    return method_view(comparable, method)


def config_differences(a: dict[str, Any] | None, b: dict[str, Any] | None, prefix: str = "") -> list[str]:
    """The dotted keys at which two configurations differ (a key missing on one side differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b))
                for d in config_differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _sources(path: Path, results: dict[str, Any], methods: list[str]) -> list[dict[str, Any]]:
    """Where `methods` of an input came from: the input itself, or for a merged file the inputs it lists
    (restricted to `methods`), so merging a merged file again keeps every command."""
    if "merged_from" not in results:
        return [{"file": str(path), "methods": methods, "command": results.get("command"), "date": results.get("date")}]
    return [{**source, "methods": kept} for source in results["merged_from"]
            if (kept := [m for m in source["methods"] if m in methods])]


def merge(inputs: list[tuple[Path, list[str] | None]]) -> dict[str, Any]:
    """The merged results: each input's chosen methods, seed by seed, checked to be one configuration."""
    merged: dict[str, Any] = {"methods": {}, "merged_from": []}
    views: dict[str, tuple[Path, Any]] = {}
    for path, wanted in inputs:
        results = json.loads(path.read_text())
        methods = wanted if wanted is not None else list(results["methods"])
        missing = [m for m in methods if m not in results["methods"]]
        if missing:
            raise SystemExit(f"{path}: no results for {', '.join(missing)}")
        for method in methods:
            entry, view = results["methods"][method], result_view(results["methods"][method], results, method)
            if method in views and views[method][1] != view:
                keys = ", ".join(config_differences(views[method][1], view)[:8])
                raise SystemExit(f"{method}: {path} ran another configuration than {views[method][0]} ({keys})")
            views.setdefault(method, (path, view))
            target = merged["methods"].setdefault(method, {"seeds": {}})
            target.update({k: v for k, v in entry.items() if k in ("comparable", "device")})
            target["seeds"].update(entry["seeds"])
        merged.update({k: results[k] for k in ("device", "versions", "config", "comparable", "pool",
                                               "dsir_implementation") if k in results})
        merged["merged_from"].extend(_sources(path, results, methods))
    merged["methods"] = {m: merged["methods"][m] for m in sorted(merged["methods"], key=METHODS.index)}
    merged["command"] = "; ".join(dict.fromkeys(s["command"] for s in merged["merged_from"] if s["command"]))
    merged["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    return merged


def write_merged(results: dict[str, Any], out: Path) -> None:
    report.summarise(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_path, table_path = out.with_name(out.stem + "_loss_vs_tokens.png"), out.with_suffix(".md")
    report.plot(results, plot_path)
    table_path.write_text(report.markdown(results))
    results["artifacts"] = {"plot": plot_path.name, "table": table_path.name}
    write_json(results, out)


def _input(spec: str) -> tuple[Path, list[str] | None]:
    path, _, methods = spec.partition(":")
    return Path(path), methods.split(",") if methods else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="merged results JSON (the plot and table are written beside it)")
    parser.add_argument("inputs", nargs="+", help="results files, each optionally FILE:method,method")
    args = parser.parse_args(argv)
    results = merge([_input(s) for s in args.inputs])
    write_merged(results, args.out)
    print(args.out.with_suffix(".md").read_text())
    return results


if __name__ == "__main__":
    main()
