"""The price of the per-domain guard: a method's mixtures with a share of every stage given to the pool as it is.

Issue 17's goal asks for two things at once: a held-out target loss below DSIR's and the domain mix's, and no
pool domain more than 0.5 nats worse than under random data. A selector that serves the target loses 1-2
nats on the domains it leaves out (tweets, dictionary pages), and so do DSIR and the domain mix. The usual
guard is to keep a share of every stage for the pool as it is (DoReMi smooths its domain weights toward
uniform; continual pretraining keeps replay data). This measures what that guard costs the target.

For each share `s` and seed: the first (1 - s) of each stage's token budget is the method's own mixture, in
the order it was selected (rank order for influmix), and the rest are uniform pool documents that none of
its stages selected. The benchmark's evaluator (`benchmarks/selection_eval.py`: same seed, steps and held-out
sets as `benchmarks.selection`) trains on it. The mixtures are read from a finished benchmark work folder
(`seed-N/selections.json`); random's losses, the reference point of the guard, from a results file of the
same configuration (checked).

    python -m benchmarks.selection_coverage --workdir /work/bench/speech --seeds 0,1,2 --shares 0,0.2,0.35,0.5 \
        --baseline benchmarks/results/selection_speech_quick.json \
        --out benchmarks/results/selection_speech_coverage.json \
        --set threads=1 --set pipeline.select.token_budget=65536 --set pipeline.proxy.steps_per_stage=32 \
        --set 'data.target_domain="speech"'

`--guard arms` measures the product's arm floors instead (`select.coverage_share`, models/coverage.py): every
cluster of the seed's clustering gets at least `share` of what uniform data would give it, topped up from
its own documents, and the rest of each stage is its ranking. It is applied to the cached mixtures after the
fact, so later stages keep the proxy that trained on the unguarded ones (the product's own loop would train
on the guarded mixture); the rows are `<method>+arm_floors`.

Finished (method, seed, share) runs are kept: running the same command again resumes, and another command
(more methods, seeds or shares, or another work folder of the same configuration, as when seeds run side by
side) adds to the file; `commands` lists every command that wrote it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import device_and_versions, write_json
from benchmarks.selection import (
    CONFIGS,
    comparable_config,
    data_files,
    evaluator_steps,
    load_config,
    packed_rows,
    selection_key,
)
from benchmarks.selection_goal import GUARD_NATS, against_random
from benchmarks.selection_merge import PER_FOLDER, config_differences, result_view
from benchmarks.selection_report import mean_pm_std, seed_stats

UNIFORM_STREAM = 1000
"""The uniform sample's random stream: a benchmark method index that no selector has."""


def guarded_stages(stages: list[list[str]], tokens: dict[str, int], budget: int, share: float,
                   uniform: list[str]) -> list[list[str]]:
    """Each stage: its own documents up to (1 - share) of `budget`, then the next of `uniform` to fill it."""
    taken = set().union(*map(set, stages))
    fill = iter(d for d in uniform if d not in taken)
    guarded = []
    for mixture in stages:
        kept, used = [], 0
        for doc in mixture:
            if used >= (1 - share) * budget:
                break
            kept.append(doc)
            used += tokens[doc]
        while share > 0 and used < budget:
            doc = next(fill, None)
            if doc is None:  # the pool is spent: the stage stays short
                break
            kept.append(doc)
            used += tokens[doc]
        guarded.append(kept)
    return guarded


def arm_floor_stages(stages: list[list[str]], tokens: dict[str, int], budget: int, share: float,
                     arm_of: dict[str, int], seed: int) -> list[list[str]]:
    """Each stage as `coverage_fill` makes it from the cached ranking: the stage's own documents in rank order,
    then the rest of the candidates (the pool less earlier stages) in seeded random order, since the ranking
    past the cached mixture was not kept; the guard reaches past the mixture only if earlier top-ups took
    some of its documents."""
    from core.seeds import rng
    from models.coverage import coverage_fill

    ids = sorted(arm_of)
    index = {d: i for i, d in enumerate(ids)}
    doc_tokens = np.array([tokens[d] for d in ids], dtype=np.int64)
    arms = np.array([arm_of[d] for d in ids], dtype=np.int64)
    taken = np.zeros(len(ids), dtype=bool)
    guarded = []
    for stage, mixture in enumerate(stages):
        ranked = np.array([index[d] for d in mixture if d in index and not taken[index[d]]], dtype=np.int64)
        listed = taken.copy()
        listed[ranked] = True
        rest = rng(seed, "benchmark", stage, method=UNIFORM_STREAM).permutation(np.flatnonzero(~listed))
        chosen = coverage_fill(np.concatenate([ranked, rest]), doc_tokens, arms, budget, share,
                               rng(seed, "coverage", stage))
        taken[chosen] = True
        guarded.append([ids[i] for i in chosen])
    return guarded


def seed_clusters(settings, workdir: Path) -> dict[str, int]:
    """The seed's clustering of the pool (the benchmark re-clusters per seed: seeded k-means, so this is the
    clustering that seed's run selected from), as doc id -> arm."""
    from benchmarks.selection_pool import RUN_ID
    from core import db, store
    from core.artifacts import Embedded
    from tasks.cluster import cluster_documents

    embedded = Embedded(**json.loads((workdir / "pool.json").read_text())["artifacts"]["embedded"])
    cluster_documents(settings, embedded)
    with db.connect(settings.database, read_only=True) as con:
        pool = store.candidates(con, RUN_ID, 0, settings.seed, False)
    return dict(zip(pool.doc_ids, pool.cluster_ids.tolist()))


def summarise(results: dict[str, Any]) -> None:
    """Mean ± std over seeds, per method and share."""
    results["summary"] = {}
    for method, seeds in results["runs"].items():
        shares = sorted({share for seed in seeds.values() for share in seed}, key=float)
        rows = {}
        for share in shares:
            runs = [seed[share] for seed in seeds.values() if share in seed]
            rows[share] = {"seeds": len(runs), **{key: seed_stats([r[key] for r in runs]) for key in
                                                  ("heldout_reference_loss", "worst_excess", "domains_over_guard",
                                                   "tokens_to_random")}}
        results["summary"][method] = rows


def table(results: dict[str, Any]) -> str:
    head = ("| method | guard share (uniform share of each stage; `+arm_floors`: select.coverage_share) | held-out "
            "reference loss | worst pool domain vs random | domains over +0.5 | tokens to random's final loss |\n"
            "|---|---:|---:|---:|---:|---:|\n")
    lines = [f"| {method} | {share} | {mean_pm_std(row['heldout_reference_loss'])} | +{mean_pm_std(row['worst_excess'], 2)} "
             f"| {mean_pm_std(row['domains_over_guard'], 1)} | {mean_pm_std(row['tokens_to_random'], 2)}x |"
             for method, rows in results["summary"].items() for share, row in rows.items()]
    base = " ".join(f"{m} {v['mean']:.3f} ± {v['std']:.3f}." for m, v in results["baselines"].items())
    return head + "\n".join(lines) + f"\n\nUnguarded baselines (held-out reference loss): {base}\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method, rows in results["summary"].items():
        shares = [float(s) for s in rows]
        for ax, key in ((left, "heldout_reference_loss"), (right, "worst_excess")):
            mean = np.array([r[key]["mean"] for r in rows.values()], dtype=float)
            std = np.array([r[key]["std"] for r in rows.values()], dtype=float)
            ax.errorbar(shares, mean, yerr=std, marker="o", capsize=3, label=method)
    left.axhline(results["baselines"]["random"]["mean"], ls="--", lw=0.9, color="grey", label="random")
    right.axhline(GUARD_NATS, ls="--", lw=0.9, color="red", label="the guard (+0.5)")
    for ax, label in ((left, "held-out reference loss"), (right, "worst pool domain's loss minus random's")):
        ax.set_xlabel("guard share (uniform share of each stage, or the arm floors' coverage_share)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIGS["full"], help="the benchmark config the work folder ran")
    parser.add_argument("--tiny", action="store_true", help="use the tiny benchmark config")
    parser.add_argument("--workdir", type=Path, required=True, help="a finished benchmark work folder")
    parser.add_argument("--baseline", type=Path, required=True, help="results JSON holding random (and DSIR, domain mix)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default="influmix", help="comma-separated: methods whose mixtures are guarded")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--shares", default="0,0.2,0.35,0.5")
    parser.add_argument("--guard", choices=("pool", "arms"), default="pool",
                        help="pool: a uniform share of every stage; arms: the product's per-cluster floors")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    return run(args, " ".join(["python -m benchmarks.selection_coverage", *(argv if argv is not None else sys.argv[1:])]))


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    import torch

    from benchmarks.selection_data import read_jsonl
    from benchmarks.selection_eval import EvalConfig, build_eval_sets, train_and_evaluate
    from benchmarks.selection_pool import pipeline_settings, pool_texts
    from core.seeds import rng
    from models.tokenizer import count_tokens, load_tokenizer
    from models.trainer import resolve_device

    workdir = args.workdir.resolve()
    cfg = load_config(CONFIGS["tiny"] if args.tiny else args.config, [*args.overrides, f'workdir="{workdir}"'])
    baseline = json.loads(args.baseline.read_text())
    comparable = {k: v for k, v in comparable_config(cfg).items() if k not in PER_FOLDER}
    differ = config_differences(result_view({"comparable": comparable}, {}, "random"), result_view(baseline["methods"]["random"], baseline, "random"))
    if differ:
        raise SystemExit(f"{args.baseline} is another configuration (differs in {', '.join(differ)})")
    torch.set_num_threads(cfg.threads)
    eval_cfg = EvalConfig(**cfg.eval)
    files = data_files(cfg, workdir)
    settings = pipeline_settings(cfg, files, workdir)
    budget = settings.select.token_budget
    steps = evaluator_steps(budget, eval_cfg)
    device, versions = device_and_versions(resolve_device(eval_cfg.device))
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if results and results.get("comparable") != comparable:
        results = {}  # another configuration's: start over
    results.update(device=device, versions=versions, command=command, comparable=comparable,
                   baseline=str(args.baseline), date=datetime.now(UTC).isoformat(timespec="seconds"))
    results["commands"] = [*[c for c in results.get("commands", []) if c != command], command]  # each run's rows
    results.setdefault("runs", {})
    results["baselines"] = {m: seed_stats([r["final"]["heldout_reference_loss"] for r in baseline["methods"][m]["seeds"].values()])
                            for m in ("random", "dsir", "domain_oracle") if m in baseline["methods"]}
    texts = pool_texts(settings)
    heldout, pool_heldout = list(read_jsonl(files.path("reference_heldout"))), list(read_jsonl(files.path("pool_heldout")))
    ids = sorted(texts)
    for seed in (int(s) for s in args.seeds.split(",")):
        folder = workdir / f"seed-{seed}"
        cached = json.loads((folder / "selections.json").read_text())["methods"]
        tokenizer = load_tokenizer(folder / "tokenizer.json")
        sets = build_eval_sets(tokenizer, heldout, pool_heldout, eval_cfg, seed)
        uniform = [ids[i] for i in rng(seed, "benchmark", method=UNIFORM_STREAM).permutation(len(ids))]
        tokens = dict(zip(ids, (n + 1 for n in count_tokens(tokenizer, [texts[d] for d in ids]))))  # + EOS
        random = baseline["methods"]["random"]["seeds"][str(seed)]
        seeded = settings.model_copy(update={"seed": seed})
        arm_of = seed_clusters(seeded, workdir) if args.guard == "arms" else {}
        for method in args.methods.split(","):
            entry = cached.get(method)
            if entry is None or entry["key"] != selection_key(cfg, seeded, method):
                raise SystemExit(f"{folder}: no {method} mixture of this configuration (run benchmarks.selection first)")
            row = method if args.guard == "pool" else f"{method}+arm_floors"
            done = results["runs"].setdefault(row, {}).setdefault(str(seed), {})
            for share in (f"{float(s):.2f}" for s in args.shares.split(",")):
                if share in done:
                    continue
                mixture = (guarded_stages(entry["stages"], tokens, budget, float(share), uniform) if args.guard == "pool"
                           else arm_floor_stages(entry["stages"], tokens, budget, float(share), arm_of, seed))
                packed = [packed_rows(tokenizer, [texts[d] for d in m], eval_cfg.seq_len) for m in mixture]
                run_data = train_and_evaluate(packed, tokenizer.get_vocab_size(), sets, eval_cfg, seed, steps)
                done[share] = {**run_data["final"], **against_random(run_data["final"], run_data["curve"], random),
                               "curve": run_data["curve"], "documents_per_stage": [len(m) for m in mixture],
                               "workdir": str(workdir)}
                summarise(results)
                write_json(results, args.out)
                print(f"{row} seed {seed} share {share}: held-out loss {done[share]['heldout_reference_loss']:.4f}, "
                      f"worst domain {done[share]['worst_domain']} +{done[share]['worst_excess']:.2f}", flush=True)
    summarise(results)
    plot(results, args.out.with_name(args.out.stem + ".png"))
    args.out.with_suffix(".md").write_text(table(results))
    write_json(results, args.out)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
