"""The selection benchmark's summary: per-method figures over seeds, the loss-vs-tokens plot, the markdown
table, and one MLflow run per method (curves as steps = training tokens, so the compare view overlays them).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.selection_eval import tokens_to_reach
from benchmarks.selection_goal import card_table, goal_cards

SELECTION_PARTS = ("embed", "cluster", "probe", "distill_score", "rerank", "select", "dsir_weights")
"""Selection overhead: everything a method spends to choose its data except the proxy's own training
(reported beside it: in MATES the proxy is the model being trained, here the evaluator is separate)."""


def seed_stats(values: list[float | None]) -> dict[str, Any]:
    """mean, sample standard deviation (ddof 1; 0 for one seed), min, max and the per-seed values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    arr = np.array(finite)
    return {"mean": float(arr.mean()) if finite else None,
            "std": float(arr.std(ddof=1)) if len(finite) > 1 else 0.0 if finite else None,
            "min": float(arr.min()) if finite else None, "max": float(arr.max()) if finite else None,
            "per_seed": values}


def overhead(run: dict[str, Any]) -> dict[str, Any]:
    """A (method, seed)'s selection cost as fractions of its evaluator's pretraining run."""
    cost = run["selection"]["cost"]
    seconds, flops = cost["seconds"], cost["flops"]
    pick = lambda table, parts: sum(table.get(p, 0.0) for p in parts)
    return {
        "time_fraction": pick(seconds, SELECTION_PARTS) / run["train_seconds"],
        "flops_fraction": pick(flops, SELECTION_PARTS) / run["train_flops"],
        "probe_distill_score_time_fraction": pick(seconds, ("probe", "distill_score")) / run["train_seconds"],
        "probe_distill_score_flops_fraction": pick(flops, ("probe", "distill_score")) / run["train_flops"],
        "proxy_training_time_fraction": seconds.get("proxy_train", 0.0) / run["train_seconds"],
        "proxy_training_flops_fraction": flops.get("proxy_train", 0.0) / run["train_flops"],
    }


def summarise(results: dict[str, Any]) -> None:
    """Fill each method's headline figures from its finished seeds (in place)."""
    random_runs = results["methods"].get("random", {}).get("seeds", {})
    for method in results["methods"].values():
        seeds = method["seeds"]
        names = sorted(seeds, key=int)
        if not names:
            continue
        runs = [seeds[s] for s in names]
        ratios = []
        for s, run in zip(names, runs):
            baseline = random_runs.get(s)
            target = baseline["curve"][-1]["heldout_reference_loss"] if baseline else None
            reached = tokens_to_reach(run["curve"], target) if target is not None else None
            ratios.append(reached / baseline["tokens"] if reached is not None else None)
        curves = np.array([[p["heldout_reference_loss"] for p in run["curve"]] for run in runs])
        cost_parts = sorted({p for run in runs for p in run["selection"]["cost"]["seconds"]})
        method.update({
            "seeds_done": [int(s) for s in names],
            "final_heldout_reference_loss": seed_stats([r["final"]["heldout_reference_loss"] for r in runs]),
            "tokens_to_random_final_loss_ratio": {**seed_stats(ratios), "reached": sum(r is not None for r in ratios)},
            "cloze_accuracy": seed_stats([r["final"]["cloze_accuracy"] for r in runs]),
            "cloze_target_loss": seed_stats([r["final"]["cloze_target_loss"] for r in runs]),
            "reference_domain_loss": {d: seed_stats([r["final"]["reference_domain_loss"].get(d) for r in runs])
                                      for d in runs[0]["final"]["reference_domain_loss"]},
            "pool_domain_loss": {d: seed_stats([r["final"]["pool_domain_loss"].get(d) for r in runs])
                                 for d in runs[0]["final"]["pool_domain_loss"]},
            "loss_vs_tokens": {"tokens": [p["tokens"] for p in runs[0]["curve"]],
                               "mean": curves.mean(axis=0).tolist(),
                               "std": (curves.std(axis=0, ddof=1) if len(runs) > 1 else 0 * curves[0]).tolist()},
            "domain_token_shares": {d: float(np.mean([r["selection"]["domain_token_shares"].get(d, 0.0) for r in runs]))
                                    for d in sorted({d for r in runs for d in r["selection"]["domain_token_shares"]})},
            "selection_overhead": {
                **{key: seed_stats([overhead(r)[key] for r in runs])["mean"] for key in overhead(runs[0])},
                "seconds": {p: float(np.mean([r["selection"]["cost"]["seconds"].get(p, 0.0) for r in runs]))
                            for p in cost_parts},
                "flops": {p: float(np.mean([r["selection"]["cost"]["flops"].get(p, 0.0) for r in runs]))
                          for p in cost_parts},
            },
            "evaluator_tokens_per_s": float(np.mean([r["tokens_per_s"] for r in runs])),
        })
        quality = [r["selection"]["mixture_quality"] for r in runs if "mixture_quality" in r["selection"]]
        if quality:  # results from before the quality shares were measured have none
            method["mixture_quality"] = {k: float(np.mean([q[k] for q in quality])) for k in quality[0]}
    results["goal"] = goal_cards(results)


def plot(results: dict[str, Any], path: Path) -> None:
    """Held-out reference loss against training tokens: mean over seeds, shaded +- one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, method in results["methods"].items():
        curve = method.get("loss_vs_tokens")
        if not curve:
            continue
        tokens, mean, std = (np.array(curve[k], dtype=float) for k in ("tokens", "mean", "std"))
        ax.plot(tokens / 1e6, mean, label=name, lw=2.2 if name == "influmix" else 1.4)
        ax.fill_between(tokens / 1e6, mean - std, mean + std, alpha=0.15)
    random = results["methods"].get("random", {}).get("loss_vs_tokens")
    if random:
        ax.axhline(random["mean"][-1], color="grey", ls="--", lw=0.8, label="random, final")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("held-out reference loss")
    ax.set_title(f"evaluator LM on each method's mixtures (seeds: {len(results['config']['seeds'])})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_pm_std(stats: dict[str, Any] | None, digits: int = 3) -> str:
    """`seed_stats` as "mean ± std" for a table."""
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """The headline table in markdown (shown in README.md)."""
    lines = [("| method | held-out reference loss | tokens to random's final loss | cloze accuracy (target-word loss) | "
             "wiki / news loss | largest domain share | records < 100 chars / non-English | "
             "selection overhead (time / FLOPs) |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in results["methods"].items():
        if "final_heldout_reference_loss" not in m:
            continue
        ratio = m["tokens_to_random_final_loss_ratio"]
        n = len(m["seeds_done"])
        reach = "not reached" if ratio["mean"] is None else (
            f"{ratio['mean']:.2f}x" + (f" ± {ratio['std']:.2f}" if n > 1 else "")
            + (f" ({ratio['reached']}/{n} seeds)" if ratio["reached"] < n else ""))
        domains = m["reference_domain_loss"]
        split = " / ".join(f"{domains[d]['mean']:.3f}" for d in ("wiki", "news") if d in domains) or "n/a"
        share = max(m["domain_token_shares"].items(), key=lambda kv: kv[1], default=("-", 0.0))
        over = m["selection_overhead"]
        q = m.get("mixture_quality")
        quality = f"{q['under_100_chars']:.1%} / {q['non_english']:.1%}" if q else "n/a"
        lines.append(f"| {name} | {mean_pm_std(m['final_heldout_reference_loss'])} | {reach} | "
                     f"{mean_pm_std(m['cloze_accuracy'])} ({mean_pm_std(m['cloze_target_loss'], 2)}) | {split} | {share[0]} {share[1]:.0%} | "
                     f"{quality} | {over['time_fraction']:.2f} / {over['flops_fraction']:.3f} |")
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any]) -> str:
    """The results file's markdown: the headline table, then the goal's card where the baselines ran."""
    cards = results["goal"]  # summarise() put it there, as it did the table's figures
    return table(results) + (f"\nThe goal, per method (benchmarks/selection_goal.py):\n\n{card_table(cards)}" if cards else "")


def log_mlflow(results: dict[str, Any], tracking_uri: str, experiment: str, artifacts: list[Path]) -> dict[str, str]:
    """One MLflow run per method, replacing that method's earlier run in the experiment (so re-running after
    each seed is idempotent): params, final figures, and the mean and per-seed curves with step = tokens."""
    from core.tracking import tracking_scope

    with tracking_scope(tracking_uri):
        return _log_methods(results, tracking_uri, experiment, artifacts)


def _log_methods(results: dict[str, Any], tracking_uri: str, experiment: str, artifacts: list[Path]) -> dict[str, str]:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    now = int(time.time() * 1000)
    ids = {}
    for name, m in results["methods"].items():
        if "loss_vs_tokens" not in m:
            continue
        for old in client.search_runs([exp_id], f"tags.benchmark_method = '{name}'"):
            client.delete_run(old.info.run_id)
        run_id = client.create_run(exp_id, run_name=name, tags={"benchmark_method": name}).info.run_id
        cfg = results["config"]
        params = {"method": name, "seeds": ",".join(map(str, m["seeds_done"])), "stages": cfg["stages"],
                  "token_budget": cfg["token_budget"], "eval_params": m["seeds"][str(m["seeds_done"][0])]["params"]}
        finals = {"final_heldout_reference_loss": m["final_heldout_reference_loss"]["mean"],
                  "cloze_accuracy": m["cloze_accuracy"]["mean"], "cloze_target_loss": m["cloze_target_loss"]["mean"],
                  "tokens_to_random_final_loss_ratio": m["tokens_to_random_final_loss_ratio"]["mean"],
                  "selection_overhead_time_fraction": m["selection_overhead"]["time_fraction"]}
        metrics = [Metric(k, v, now, 0) for k, v in finals.items() if v is not None]
        curve = m["loss_vs_tokens"]
        metrics += [Metric("heldout_reference_loss", loss, now, int(tokens))
                    for tokens, loss in zip(curve["tokens"], curve["mean"])]
        metrics += [Metric(f"heldout_reference_loss_seed{seed}", p["heldout_reference_loss"], now, int(p["tokens"]))
                    for seed, run_data in m["seeds"].items() for p in run_data["curve"]]
        for start in range(0, len(metrics), 900):  # MLflow takes at most 1000 entities per batch
            client.log_batch(run_id, metrics=metrics[start:start + 900],
                             params=[Param(k, str(v)) for k, v in params.items()] if start == 0 else [])
        for path in artifacts:
            if path.exists():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
        ids[name] = run_id
    return ids
