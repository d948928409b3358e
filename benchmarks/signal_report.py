"""Markdown tables of benchmarks/results/signal_study.json: python -m benchmarks.signal_report [json] > md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.selection_eval import tokens_to_reach

FLAGS = ("short", "low_stopword", "non_english", "spam", "headline")
PREDICTORS = ("probe_exact", "probe_checkpoint", "probe_fresh", "probe_mean_v", "probe_zero_m", "probe_stage0_v",
              "probe_gradient_dot", "probe_gradient_cosine", "probe_tracin", "group_one_step_b1", "rollout_b1",
              "token_model_b2_mean", "token_model_arm_mean", "color_fold_a_b2_mean", "color_fold_a_arm_mean",
              "dsir_b2_mean", "dsir_arm_mean")


def _fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def selection_table(results: dict) -> str:
    seeds = results["seeds"]
    methods = list(dict.fromkeys(m for s in seeds.values() for m in s.get("selection", {})))
    head = ("| method | seeds | held-out reference loss | tokens to random's final | wiki / news loss | "
            "worst pool domain vs random | wiki+news tokens | <100 chars (records) | low-stopword | non-English | "
            "spam | headlines | selection s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for method in methods:
        runs = {s: e["selection"][method] for s, e in seeds.items() if method in e.get("selection", {})}
        loss = [r["final"]["heldout_reference_loss"] for r in runs.values()]
        ratio, worst = [], []
        for s, r in runs.items():
            base = seeds[s]["selection"].get("random")
            if base:
                reached = tokens_to_reach(r["curve"], base["curve"][-1]["heldout_reference_loss"])
                ratio.append(reached / base["tokens"] if reached is not None else float("nan"))
                gaps = {d: r["final"]["pool_domain_loss"][d] - base["final"]["pool_domain_loss"][d]
                        for d in base["final"]["pool_domain_loss"]}
                worst.append(max(gaps.items(), key=lambda kv: kv[1]))
        ref = [[r["final"]["reference_domain_loss"][d] for r in runs.values()] for d in ("wiki", "news")]
        shares = [r["mixture"]["domain_token_shares"] for r in runs.values()]
        target = [s.get("wiki", 0) + s.get("news", 0) for s in shares]
        flags = [_fmt([100 * r["mixture"][f"{f}_records"] for r in runs.values()], 1) for f in FLAGS]
        worst_txt = (f"{worst[0][0]} {np.mean([w[1] for w in worst]):+.2f}" if worst and method != "random" else "-")
        ratio_txt = _fmt([x for x in ratio if np.isfinite(x)], 2) + ("" if all(np.isfinite(ratio)) else " (not all)")
        secs = np.mean([r["selection_seconds"].get("select_total", 0.0) for r in runs.values()])
        lines.append(f"| {method} | {','.join(sorted(runs))} | {_fmt(loss)} | {ratio_txt}x | "
                     f"{np.mean(ref[0]):.3f} / {np.mean(ref[1]):.3f} | {worst_txt} | {100 * np.mean(target):.0f}% | "
                     + " | ".join(flags) + f" | {secs:.0f} |")
    return "\n".join(lines)


def domain_table(results: dict) -> str:
    seeds = results["seeds"]
    methods = list(dict.fromkeys(m for s in seeds.values() for m in s.get("selection", {})))
    domains = sorted({d for s in seeds.values() for r in s.get("selection", {}).values()
                      for d in r["final"]["pool_domain_loss"]})
    lines = ["| method | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    for method in methods:
        runs = [e["selection"][method] for e in seeds.values() if method in e.get("selection", {})]
        lines.append(f"| {method} | " + " | ".join(
            f"{np.mean([r['final']['pool_domain_loss'][d] for r in runs]):.2f}" for d in domains) + " |")
    lines += ["", "Token shares by pool domain (%):", "",
              "| method | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    for method in methods:
        runs = [e["selection"][method] for e in seeds.values() if method in e.get("selection", {})]
        lines.append(f"| {method} | " + " | ".join(
            f"{100 * np.mean([r['mixture']['domain_token_shares'].get(d, 0) for r in runs]):.0f}" for d in domains)
            + " |")
    return "\n".join(lines)


def group_tables(results: dict) -> str:
    out = []
    for seed, entry in results["seeds"].items():
        stages = entry.get("group", {})
        if not stages:
            continue
        names = sorted(stages, key=int)
        lines = [f"Seed {seed}, probe trajectory checkpoints (stage: lr):  " + ", ".join(
            f"{s}: {stages[s]['lr']:.2e}" for s in names), "",
            "| rollout reliability (Spearman over arms) | " + " | ".join(f"stage {s}" for s in names) + " |",
            "|---|" + "---:|" * len(names)]
        for key in ("b1_vs_b2", "b1_vs_b1_reordered", "per_arm_controls", "group_one_step_vs_b1"):
            lines.append(f"| {key} | " + " | ".join(_num(stages[s]["test_retest"][key]) for s in names) + " |")
        lines.append("| control std / reward std (b1) | " + " | ".join(
            f"{stages[s]['control']['std'] / stages[s]['reward_std_b1']:.2f}" for s in names) + " |")
        lines += ["", "| predictor | " + " | ".join(f"vs b2, stage {s}" for s in names) + " | mean vs b2 | mean vs b1 "
                  "| with arm's wiki+news share |", "|---|" + "---:|" * (len(names) + 3)]
        for p in PREDICTORS:
            vs_b2 = [stages[s]["spearman_vs_heldout_b2"].get(p) for s in names]
            vs_b1 = [stages[s]["spearman_vs_b1"].get(p) for s in names]
            share = [stages[s]["spearman_with_reference_share"].get(p) for s in names]
            lines.append(f"| {p} | " + " | ".join(_num(v) for v in vs_b2) + f" | {_num(_mean(vs_b2))} | "
                         f"{_num(_mean(vs_b1))} | {_num(_mean(share))} |")
        lines.append("| (reward b2 itself) | " + " | ".join("" for _ in names) + " | | | " + _num(_mean(
            [stages[s]["spearman_with_reference_share"]["reward_b2"] for s in names])) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _num(v) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:+.2f}"


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def report(results: dict) -> str:
    return "\n\n".join([f"`{results['command']}` ({results['device']}, {results['date']})",
                        "## Part a: selection", selection_table(results), domain_table(results),
                        "## Parts b and c: group rollouts", group_tables(results)])


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/signal_study.json")
    print(report(json.loads(path.read_text())))
