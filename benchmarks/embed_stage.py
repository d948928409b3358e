"""The embed and tokenizer stages on the whole shared corpus, for two run ids: cost, then what reuse saves.

    python -m benchmarks.embed_stage                                # minilm-static, the 115k records
    python -m benchmarks.embed_stage --model all-MiniLM-L6-v2 --max-records 2000

Run `first` ingests the corpus, embeds it and trains the tokenizer; run `second` does the same on the same
database, where every document's vector and token count is cached (`embedding_cache`, `token_counts`), so
it embeds and tokenizes nothing. Each step runs alone in a fresh process (its own peak RSS from
`os.wait4`, its own time). The shard tasks run on Prefect's temporary local server, started per process
(`process_wall_s` includes it; `stage_s` is the stage function alone). Writes
`benchmarks/results/embed_stage.json` (device, versions, command line, date).
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

from benchmarks.scale import device, git_state

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "embed_stage.json"
CORPUS = Path("/work/shared/corpus/corpus.jsonl.gz")

STEP = """
import json, sys, time
from core.artifacts import Ingested, ReferenceSet
from core.config import load_settings
step, run_id, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
settings = load_settings(None, overrides)
if step == "ingest":
    from tasks.ingest import ingest_corpus, load_reference
    def stage():
        load_reference(settings, run_id)
        return ingest_corpus(settings, run_id, progress=False)
elif step == "embed":
    from tasks.embed import embed_documents
    stage = lambda: embed_documents(settings, Ingested(run_id), progress=False)
else:
    from tasks.tokenizer import train_tokenizer
    stage = lambda: train_tokenizer(settings, Ingested(run_id), ReferenceSet(run_id, 0))
started = time.perf_counter()
stats = stage()
seconds = time.perf_counter() - started
print(json.dumps({"stage_s": round(seconds, 2), "metrics": stats.as_metrics()}, default=float))
"""


def run_step(step: str, run_id: str, overrides: list[str], threads: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", STEP, step, run_id, json.dumps(overrides)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=sink, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"step {step} of {run_id} exited with {os.waitstatus_to_exitcode(status)}")
    return {**json.loads(out.splitlines()[-1]), "process_wall_s": round(time.perf_counter() - started, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "loadavg_1m_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.provenance import device_and_versions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-static")
    parser.add_argument("--max-records", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-embed-stage")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    source = f'path="{CORPUS}"' + (f", max_records={args.max_records}" if args.max_records else "")
    overrides = [f'run_dir="{args.workdir.resolve()}"', f"ingest.sources=[{{{source}}}]", f'embed.model="{args.model}"',
                 f'reference.sources=[{{path="{CORPUS.with_name("reference.jsonl.gz")}"}}]']
    steps: dict[str, dict[str, Any]] = {}
    for run_id in ("first", "second"):
        for step in ("ingest", "embed", "tokenizer"):
            steps[f"{run_id}.{step}"] = run_step(step, run_id, overrides, args.threads)
            print(run_id, step, steps[f"{run_id}.{step}"], flush=True)
    _, found = device_and_versions("cpu")
    results = {"benchmark": "embed_stage", "model": args.model, "overrides": overrides, "steps": steps,
               "second_over_first_embed_s": round(steps["second.embed"]["stage_s"] / steps["first.embed"]["stage_s"], 4),
               "device": device(), "versions": found, "git": git_state(), "threads": args.threads,
               "command": " ".join(["python -m benchmarks.embed_stage", *(argv if argv is not None else sys.argv[1:])]),
               "date": datetime.now(UTC).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
