"""The scale benchmark: ingest + dedup, clustering and bandit selection on 10k, 100k and 1M documents.

Writes `benchmarks/results/scale.json` (device, library versions, command line, settings, and per size and
stage: wall seconds, peak RSS, CPU seconds, docs/s and the stage's counts) and `scale.png` (wall time and
peak RSS against documents, log-log, with a linear reference). Each stage runs alone in a fresh process
(`benchmarks/scale_stages.py`), so its peak RSS (from `os.wait4`) is its own and not the largest so far.

    python -m benchmarks.scale                                  # 10k, 100k, 1M (~25 min on 2 busy cores)
    python -m benchmarks.scale --sizes 10000,100000 --k 16     # the first two only

The corpus is the shared corpus replicated with perturbations (`benchmarks/scale_corpus.py`). Embeddings,
token counts and influence scores are stand-ins at every size (hashed word features, 1.3 tokens a word,
a feature-aligned score with per-document noise; see `scale_stages.py`): MiniLM embeds ~12 docs/s on
these CPUs and the influence model needs the proxy LM, neither of which this benchmark is about.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from itertools import pairwise
from pathlib import Path
from typing import Any

from benchmarks.scale_corpus import default_source
from benchmarks.scale_stages import FEATURES_MODEL

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PIPELINE_STAGES = ("ingest", "features", "cluster", "select")
ALL_STAGES = ("imports", "generate", *PIPELINE_STAGES)
STAND_INS = {
    "features": f"{FEATURES_MODEL}, L2-normalised, at every size (no MiniLM), written to `embeddings`",
    "token_counts": "round(1.3 x whitespace words) per document, written to documents.n_tokens (no BPE)",
    "scores": "4 x cosine(features, fixed random unit direction) + uniform(-0.5, 0.5) noise seeded by "
              "xxh64(doc_id), written to influence_scores stage 0 (no proxy LM / influence model)",
    "corpus": "the shared corpus streamed in passes: ~90% distinct (verbatim on pass 1, perturbed after), "
              "4% exact and 6% near copies of recent records (benchmarks/scale_corpus.py)",
}


def device() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "ram_gib": round(mem_kib / 2**20, 1),
            "platform": platform.platform()}


def versions() -> dict[str, str]:
    names = ("duckdb", "datasketch", "scikit-learn", "numpy", "pyarrow", "xxhash", "prefect")
    return {"python": platform.python_version(), **{n: metadata.version(n) for n in names}}


def git_state() -> dict[str, Any]:
    """The commit measured and which tracked files differed from it (others may be editing the tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "modified": git("diff", "--name-only", "HEAD").splitlines()}


def overrides_for(workdir: Path, corpus: Path, n: int, k: int, budget_per_doc: int, extra: list[str]) -> list[str]:
    """The pipeline settings of one size: the defaults, this corpus, k clusters, a budget that grows with n."""
    return [f'run_dir="{workdir}"', f'ingest.sources=[{{path="{corpus}"}}]', f"cluster.k={k}",
            f"select.token_budget={n * budget_per_doc}", *extra]


def run_stage(stage: str, workdir: Path) -> dict[str, Any]:
    """Run one stage in a fresh process; wall time, peak RSS and CPU time of that process alone."""
    log = workdir / f"{stage}.log"
    load = os.getloadavg()[0]  # other work on the machine slows a stage down: recorded, not corrected for
    started = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.scale_stages", stage, str(workdir)],
                                cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"stage {stage} exited with {proc.returncode}; log {log}:\n{tail}")
    inner = json.loads((workdir / f"{stage}.json").read_text())
    return {"wall_s": round(inner["seconds"], 3), "process_wall_s": round(wall, 3),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "loadavg_1m_before": round(load, 2), "counts": inner["counts"]}


def input_documents(stage: str, n: int, figures: dict[str, dict[str, Any]]) -> int:
    """What a stage works through: records for generate/ingest, the deduplicated pool after that."""
    return n if stage in ("imports", "generate", "ingest") else figures["ingest"]["counts"]["documents"]


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = (Path(args.workdir) / str(n)).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    corpus = workdir / "corpus.jsonl.gz"
    config = {"run_id": f"scale-{n}", "documents": n, "seed": args.seed, "corpus": str(corpus),
              "source": str(args.source),
              "overrides": overrides_for(workdir, corpus, n, args.k, args.budget_per_doc, args.set)}
    (workdir / "settings.json").write_text(json.dumps(config, indent=1))
    figures: dict[str, dict[str, Any]] = {}
    for stage in ALL_STAGES:
        figures[stage] = run_stage(stage, workdir)
        docs = input_documents(stage, n, figures)
        figures[stage]["input_documents"] = docs
        figures[stage]["docs_per_s"] = None if stage == "imports" else round(docs / max(figures[stage]["wall_s"], 1e-9), 1)
        print(f"{n:>9,} {stage:<9} {figures[stage]['wall_s']:>9.2f} s {figures[stage]['peak_rss_mib']:>9.1f} MiB "
              f"{figures[stage]['counts']}", flush=True)
    disk = {"corpus_bytes": corpus.stat().st_size, "database_bytes": (workdir / "influmix.duckdb").stat().st_size}
    if not args.keep:
        shutil.rmtree(workdir)
    return {"documents": n, "overrides": config["overrides"], "disk": disk, "stages": figures}


def scaling(results: dict[str, Any]) -> dict[str, Any]:
    """Per stage and between consecutive sizes: the exponent of wall time in n (1 = linear) and how much the
    peak RSS grew, in MiB and in bytes per extra generated document (0 = flat)."""
    sizes = sorted(int(s) for s in results)
    out: dict[str, Any] = {}
    for stage in ("generate", *PIPELINE_STAGES):
        out[stage] = {}
        for lo, hi in pairwise(sizes):
            a, b = results[str(lo)]["stages"][stage], results[str(hi)]["stages"][stage]
            grow = b["peak_rss_mib"] - a["peak_rss_mib"]
            out[stage][f"{lo}-{hi}"] = {
                "time_exponent": round(math.log(max(b["wall_s"], 1e-6) / max(a["wall_s"], 1e-6)) / math.log(hi / lo), 3),
                "peak_rss_growth_mib": round(grow, 1),
                "peak_rss_bytes_per_document": round(grow * 2**20 / (hi - lo), 1),
            }
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(s) for s in results)
    colours = dict(zip(ALL_STAGES, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "wall_s", "wall time (s)"), (axes[1], "peak_rss_mib", "peak RSS (MiB)")):
        for stage in ALL_STAGES:
            if key == "wall_s" and stage == "imports":
                continue
            ys = [results[str(n)]["stages"][stage][key] for n in sizes]
            name = {"imports": "imports (floor)", "generate": "generate (set-up)"}.get(stage, stage)
            ax.plot(sizes, ys, marker="o", label=name, color=colours[stage],
                    linestyle=":" if stage in ("imports", "generate") else "-")
        if key == "wall_s":
            base = max(results[str(sizes[0])]["stages"][s]["wall_s"] for s in PIPELINE_STAGES)
            ax.plot(sizes, [base * n / sizes[0] for n in sizes], color="grey", linestyle="--", label="linear")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("documents generated")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("influmix scale benchmark (one process per stage)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated document counts")
    parser.add_argument("--k", type=int, default=16, help="cluster.k (the pipeline default is 16)")
    parser.add_argument("--budget-per-doc", type=int, default=13,
                        help="select.token_budget = documents x this (13: about a tenth of the pool's tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=str(default_source()), help="JSONL.gz the corpus is made from")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench-scale"))
    parser.add_argument("--set", action="append", default=[], help="extra pipeline override key=value")
    parser.add_argument("--keep", action="store_true", help="keep each size's corpus and DuckDB file")
    parser.add_argument("--merge", action="store_true", help="keep the other sizes already in --out")
    parser.add_argument("--out", default=str(RESULTS / "scale.json"))
    parser.add_argument("--redraw", action="store_true",
                        help="recompute the scaling summary and the plot from the measurements in --out, and stop")
    args = parser.parse_args(argv)
    if args.redraw:
        result = json.loads(Path(args.out).read_text())
        result["scaling"] = scaling(result["results"])
        Path(args.out).write_text(json.dumps(result, indent=1))
        plot(result["results"], Path(args.out).with_suffix(".png"))
        return result
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    out = Path(args.out)
    previous = json.loads(out.read_text()) if args.merge and out.exists() else {}
    results: dict[str, Any] = dict(previous.get("results", {}))
    command = " ".join([Path(sys.executable).name, "-m", "benchmarks.scale", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    for n in sizes:
        results[str(n)] = {**run_size(n, args), "command": command}
    result = {
        "benchmark": "scale",
        "device": device(),
        "versions": versions(),
        "git": git_state(),
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "stages": {"imports": "import floor of a stage process", "generate": "synthetic corpus (set-up)",
                   "ingest": "tasks.ingest.ingest_corpus: read, clean, exact + MinHash LSH dedup, insert",
                   "features": "stand-in embeddings, token counts and scores (see stand_ins)",
                   "cluster": "tasks.cluster.cluster_documents", "select":
                   "tasks.select.select_stage (cluster bandit) + tasks.mixture.write_mixture"},
        "stand_ins": STAND_INS,
        "settings": {"k": args.k, "budget_per_doc": args.budget_per_doc, "seed": args.seed, "source": args.source,
                     "extra_overrides": args.set, "pipeline": "influmix defaults otherwise (ingest.batch_size "
                     "2000, minhash_num_perm 64, near_dup_threshold 0.8, shingle_words 5)"},
        "sizes": sorted(int(s) for s in results),
        "results": {s: results[s] for s in sorted(results, key=int)},
        "scaling": scaling(results),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result["results"], out.with_suffix(".png"))
    print(json.dumps(result["scaling"], indent=1))
    return result


if __name__ == "__main__":
    main()
