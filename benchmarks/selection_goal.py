"""Issue 17's goal, checked from results files rather than by hand: a report card per method and target.

The goal has three parts, each on every target:

* **loss**: the held-out reference loss below DSIR's and the domain mix's by more than two standard
  deviations. The bar is two of the larger of the two methods' seed standard deviations (unpaired: what the
  README tables show). Beside it the paired difference over the seeds both ran, since every method of a
  seed trains the same initialisation on the same held-out sets (`benchmarks/selection_eval.py`): it says
  whether a gap is the seeds' shared spread or the method's own.
* **tokens**: random's final loss reached with at most 0.35x random's tokens, on every seed.
* **guard**: no pool domain more than 0.5 nats worse than random's on the same seed, on every seed.

    python -m benchmarks.selection_goal benchmarks/results/selection_rerank16_quick.json \
        benchmarks/results/selection_speech_rerank16_quick.json --out benchmarks/results/selection_goal.json

prints one markdown card per file and writes them (and the verdict over all files) as JSON and markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import write_json
from benchmarks.selection_eval import tokens_to_reach

GUARD_NATS = 0.5
"""The issue's guard: no pool domain may lose more than this to random."""
TOKEN_RATIO_GOAL = 0.35
"""The issue's token goal: random's final loss with at most this share of random's tokens."""
SIGMAS = 2.0
"""The issue's loss margin, in standard deviations."""
BASELINES = ("dsir", "domain_oracle")
"""What the goal asks a method to beat (random is the guard's and the token goal's reference)."""


def against_random(final: dict[str, Any], curve: list[dict[str, Any]], random: dict[str, Any]) -> dict[str, Any]:
    """Each pool domain's loss minus random's (same seed), the worst of them, and the tokens to random's loss."""
    excess = {d: final["pool_domain_loss"][d] - loss for d, loss in random["final"]["pool_domain_loss"].items()}
    reach = tokens_to_reach(curve, random["final"]["heldout_reference_loss"])
    return {"domain_excess": excess, "worst_domain": max(excess, key=excess.get),
            "worst_excess": max(excess.values()), "domains_over_guard": sum(v > GUARD_NATS for v in excess.values()),
            "tokens_to_random": None if reach is None else reach / random["tokens"]}


def final_losses(method: dict[str, Any]) -> dict[str, float]:
    """Seed -> final held-out reference loss."""
    return {s: run["final"]["heldout_reference_loss"] for s, run in method["seeds"].items()}


def loss_margin(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, Any]:
    """How far `ours` is below `theirs`: unpaired against the two-sigma bar, and paired over shared seeds."""
    a, b = np.array(list(ours.values())), np.array(list(theirs.values()))
    spread = max(a.std(ddof=1) if len(a) > 1 else 0.0, b.std(ddof=1) if len(b) > 1 else 0.0)
    gap = float(b.mean() - a.mean()) if len(a) and len(b) else None  # a baseline with no seeds yet: no gap
    shared = sorted(set(ours) & set(theirs), key=int)
    paired = np.array([theirs[s] - ours[s] for s in shared])
    paired_std = float(paired.std(ddof=1)) if len(paired) > 1 else None
    return {"gap": gap, "std": float(spread), "sigmas": gap / spread if gap is not None and spread > 0 else None,
            "met": bool(len(a) > 1 and len(b) > 1 and gap > SIGMAS * spread),
            "paired_seeds": [int(s) for s in shared], "paired_gap": float(paired.mean()) if len(paired) else None,
            "paired_std": paired_std,
            "paired_sigmas": float(paired.mean() / paired_std) if paired_std else None,
            "every_seed_ahead": bool(len(paired) and (paired > 0).all())}


def method_card(method: dict[str, Any], baselines: dict[str, dict[str, Any]], random: dict[str, Any]) -> dict[str, Any]:
    """The goal's three parts for one method of one results file."""
    ours = final_losses(method)
    seeds = sorted(ours, key=int)
    per_seed = {s: against_random(method["seeds"][s]["final"], method["seeds"][s]["curve"], random["seeds"][s])
                for s in seeds if s in random["seeds"]}
    ratios = [per_seed[s]["tokens_to_random"] for s in per_seed]
    loss = {name: loss_margin(ours, final_losses(b)) for name, b in baselines.items()}
    tokens_met = bool(ratios) and all(r is not None and r <= TOKEN_RATIO_GOAL for r in ratios)
    guard_met = bool(per_seed) and all(p["worst_excess"] <= GUARD_NATS for p in per_seed.values())
    return {"seeds": [int(s) for s in seeds],
            "loss": loss,
            "tokens": {"per_seed": ratios, "goal": TOKEN_RATIO_GOAL, "met": tokens_met},
            "guard": {"worst": {s: [p["worst_domain"], p["worst_excess"]] for s, p in per_seed.items()},
                      "domains_over": {s: p["domains_over_guard"] for s, p in per_seed.items()},
                      "goal": GUARD_NATS, "met": guard_met},
            "met": bool(all(m["met"] for m in loss.values()) and tokens_met and guard_met)}


def goal_cards(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One card per model-aware method of a results file; none without random and both baselines."""
    methods = results["methods"]
    if "random" not in methods or any(b not in methods for b in BASELINES):
        return {}
    baselines = {b: methods[b] for b in BASELINES}
    return {name: method_card(m, baselines, methods["random"]) for name, m in methods.items()
            if name not in ("random", *BASELINES) and m.get("seeds")}


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def card_table(cards: dict[str, dict[str, Any]]) -> str:
    """The cards as a markdown table: one row per method."""
    head = ["method"] + [f"vs {b}: gap (σ; paired)" for b in BASELINES] + ["tokens / random's (goal ≤ 0.35)",
                                                                          "worst pool domain (goal ≤ +0.5)", "goal"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, card in cards.items():
        margins = [f"{_num(m['gap'])} ({_num(m['sigmas'], 1)}σ{' ✓' if m['met'] else ''}; "
                   f"{_num(m['paired_gap'])} ± {_num(m['paired_std'])})" for m in card["loss"].values()]
        ratios = " / ".join("—" if r is None else f"{r:.2f}x" for r in card["tokens"]["per_seed"])
        worst = max(card["guard"]["worst"].values(), key=lambda w: w[1], default=["-", float("nan")])
        lines.append(f"| {name} | " + " | ".join(margins) + f" | {ratios} | {worst[0]} +{_num(worst[1], 2)} | "
                     f"{'met' if card['met'] else 'not met'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="selection results files, one per target")
    parser.add_argument("--out", type=Path, help="write the cards here as JSON (and .md beside it)")
    args = parser.parse_args(argv)
    cards = {str(path): goal_cards(json.loads(path.read_text())) for path in args.results}
    empty = [path for path, c in cards.items() if not c]
    if empty:
        raise SystemExit(f"{empty[0]}: needs random, {' and '.join(BASELINES)} and a model-aware method")
    methods = set.intersection(*(set(c) for c in cards.values()))
    verdict = {m: all(c[m]["met"] for c in cards.values()) for m in sorted(methods)}
    text = "".join(f"### {path}\n\n{card_table(c)}\n" for path, c in cards.items())
    text += "Goal on every target: " + ", ".join(f"{m} {'met' if v else 'not met'}" for m, v in verdict.items()) + "\n"
    print(text)
    command = "python -m benchmarks.selection_goal " + " ".join(sys.argv[1:] if argv is None else argv)
    out = {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"), "files": cards,
           "met_on_every_target": verdict}
    if args.out:
        write_json(out, args.out)
        args.out.with_suffix(".md").write_text(text)
    return out


if __name__ == "__main__":
    main()
