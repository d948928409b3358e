"""Embedders on the shared corpus: documents/s, and what a static model does to the clusters (issue 14).

    python -m benchmarks.embedders                      # 10k records, MiniLM vs minilm-static (~15 min, 1 thread)
    python -m benchmarks.embedders --records 2000 --speed-records 500     # a quick look

For one seeded sample of the shared corpus's records (junk included), every embedder embeds the same
texts the way the embed stage does (pages of `embed.batch_size * PAGE_BATCHES`, cut from the texts sorted
by length; `encode_page`); MiniLM is also timed on its first `--speed-records` texts in corpus order (the
stage's old page order) to show what length-sorted pages save. Then the cluster stage's own k-means
(`tasks.cluster.fit_kmeans`, `predict`) runs on each embedding for k = 16 and 32 and three seeds, and
the results compare: adjusted Rand index and NMI between MiniLM's and each static model's clusters (seed
by seed), the same between two MiniLM seeds (how much k-means alone moves), and each clustering's domain
purity and NMI with the domain labels. MiniLM's vectors are saved in the work folder, so a stopped run
resumes. Writes `benchmarks/results/embedders.json` (device, versions, command line, date).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path("/work/shared/corpus/corpus.jsonl.gz")
RESULTS = ROOT / "benchmarks" / "results" / "embedders.json"
EMBEDDERS = {
    "minilm": {"model": "all-MiniLM-L6-v2", "max_seq_length": 128},
    "minilm-static-128": {"model": "minilm-static", "max_seq_length": 128},
    "minilm-static-512": {"model": "minilm-static", "max_seq_length": 512},
}
KS, SEEDS = (16, 32), (0, 1, 2)


def sample_records(path: Path, n: int, seed: int) -> list[dict[str, str]]:
    """A seeded uniform sample of `n` records (text, domain), in corpus order."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    keep = np.sort(np.random.default_rng(seed).choice(len(records), min(n, len(records)), replace=False))
    return [{"text": records[i]["text"], "domain": records[i].get("domain") or "unknown"} for i in keep]


def stage_pages(texts: list[str], size: int, by_length: bool) -> list[np.ndarray]:
    """Row indices of each page, as the embed stage cuts them (length-sorted) or in corpus order."""
    order = np.array(sorted(range(len(texts)), key=lambda i: len(texts[i]))) if by_length else np.arange(len(texts))
    return [order[s:s + size] for s in range(0, len(order), size)]


def embed(encoder, texts: list[str], batch_size: int, by_length: bool = True,
          resume: Path | None = None) -> tuple[np.ndarray, float]:
    """(vectors in `texts` order, seconds spent encoding), through the stage's `encode_page`."""
    from tasks.embed import PAGE_BATCHES, encode_page

    done: dict[str, Any] = dict(np.load(resume)) if resume and resume.exists() else {}
    vectors = done.get("vectors")
    seconds = float(done.get("seconds", 0.0))
    finished = int(done.get("pages", 0))
    for p, rows in enumerate(stage_pages(texts, batch_size * PAGE_BATCHES, by_length)):
        if p < finished:
            continue
        started = time.perf_counter()
        page = encode_page(encoder, [texts[i] for i in rows], batch_size)
        seconds += time.perf_counter() - started
        flat = page.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), -1)
        if vectors is None:
            vectors = np.zeros((len(texts), flat.shape[1]), dtype=np.float32)
        vectors[rows] = flat
        if resume and p % 10 == 9:
            np.savez(resume, vectors=vectors, seconds=seconds, pages=p + 1)
    if resume:
        np.savez(resume, vectors=vectors, seconds=seconds, pages=len(stage_pages(texts, batch_size * PAGE_BATCHES,
                                                                                   by_length)))
    return vectors, seconds


def purity(labels: np.ndarray, domains: np.ndarray) -> float:
    """Share of documents whose cluster's most common domain is their own."""
    total = 0
    for c in np.unique(labels):
        _, counts = np.unique(domains[labels == c], return_counts=True)
        total += counts.max()
    return total / len(labels)


def clusterings(vectors: np.ndarray, k: int) -> list[np.ndarray]:
    """The cluster stage's k-means labels for each seed."""
    from tasks.cluster import fit_kmeans

    return [fit_kmeans(vectors, k, 1024, seed)[0].predict(vectors) for seed in SEEDS]


def compare(labels: dict[str, dict[int, list[np.ndarray]]], domains: np.ndarray) -> dict[str, Any]:
    """Agreement with MiniLM per embedder and k (mean over seeds), and each clustering's domain quality."""
    from sklearn.metrics import adjusted_rand_score as ari
    from sklearn.metrics import normalized_mutual_info_score as nmi

    out: dict[str, Any] = {}
    for name, by_k in labels.items():
        out[name] = {}
        for k, runs in by_k.items():
            base = labels["minilm"][k]
            pairs = list(zip(base, runs)) if name != "minilm" else list(zip(base, base[1:] + base[:1]))
            out[name][f"k{k}"] = {
                "ari_vs_minilm": round(float(np.mean([ari(a, b) for a, b in pairs])), 4),
                "nmi_vs_minilm": round(float(np.mean([nmi(a, b) for a, b in pairs])), 4),
                "domain_purity": round(float(np.mean([purity(r, domains) for r in runs])), 4),
                "domain_nmi": round(float(np.mean([nmi(domains, r) for r in runs])), 4),
            }
    return out


def versions() -> dict[str, str]:
    found = {}
    for name in ("model2vec", "scikit-learn"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    import torch

    from benchmarks.provenance import device_and_versions
    from models.static_embedder import DistillSpec, distilled_folder
    from tasks.embed import load_embedder, model_folder

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    records = sample_records(Path(args.corpus), args.records, args.seed)
    texts, domains = [r["text"] for r in records], np.array([r["domain"] for r in records])
    results: dict[str, Any] = {"embedders": {}, "records": len(texts), "speed_records": args.speed_records}

    scratch = workdir / f"distil-{time.time_ns()}"  # a fresh distillation, to time it; the stage's stays cached
    started = time.perf_counter()
    distilled_folder(model_folder("all-MiniLM-L6-v2"), scratch, DistillSpec())
    results["distill_seconds"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(scratch)

    labels: dict[str, dict[int, list[np.ndarray]]] = {}
    for name, spec in EMBEDDERS.items():
        encoder = load_embedder(spec["model"], "cpu", spec["max_seq_length"])
        resume = workdir / f"{name}-{args.records}-{args.seed}.npz" if name == "minilm" else None
        vectors, seconds = embed(encoder, texts, args.batch_size, resume=resume)
        figures = {**spec, "dim": int(vectors.shape[1]), "seconds": round(seconds, 2),
                   "docs_per_s": round(len(texts) / seconds, 1)}
        if name == "minilm":
            head = texts[: args.speed_records]
            for by_length, key in ((False, "corpus_order"), (True, "length_sorted")):
                _, s = embed(encoder, head, args.batch_size, by_length=by_length)
                figures[f"docs_per_s_{key}_first_{len(head)}"] = round(len(head) / s, 1)
        results["embedders"][name] = figures
        print(name, figures, flush=True)
        labels[name] = {k: clusterings(vectors, k) for k in KS}
    speed = results["embedders"]
    for name in EMBEDDERS:
        speed[name]["speedup_vs_minilm"] = round(speed[name]["docs_per_s"] / speed["minilm"]["docs_per_s"], 1)
    results["clusters"] = compare(labels, domains)
    device, found = device_and_versions("cpu")
    results.update({"device": device, "versions": {**found, **versions()}, "command": command,
                    "date": datetime.now(UTC).isoformat(timespec="seconds"), "threads": args.threads,
                    "sample": f"{len(texts)} records drawn uniformly (seed {args.seed}) from {args.corpus}, junk included",
                    "kmeans": "tasks.cluster.fit_kmeans (MiniBatchKMeans, batch 1024, n_init 3) + predict, "
                              f"seeds {list(SEEDS)}; minilm's own row compares seed s with seed s+1"})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--speed-records", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench-embedders"))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    return run(args, " ".join(["python -m benchmarks.embedders", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    main()
