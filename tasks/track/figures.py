"""Plots of a run for MLflow: the mixture's composition by domain, the oracle bandit's rewards by pull."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from core import store


def composition_figure(summary: dict[str, Any]):
    """Token share by domain for the pool and every stage's mixture, as stacked bars."""
    columns = [("pool", {r["domain"]: r["share"] for r in summary["pool_by_domain"]})]
    columns += [(f"stage {s['stage']}", {r["domain"]: r["share"] for r in s["by_domain"]}) for s in summary["stages"]]
    domains = sorted({d for _, shares in columns for d in shares})
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(columns))
    for domain in domains:
        heights = np.array([shares.get(domain, 0.0) or 0.0 for _, shares in columns])
        ax.bar([c[0] for c in columns], heights, bottom=bottom, label=domain)
        bottom += heights
    ax.set_ylabel("token share")
    ax.set_title("mixture composition by domain")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def reward_figure(rounds_by_stage: dict[int, list[store.OraclePull]]):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for stage, rounds in rounds_by_stage.items():
        rewards = np.array([r.reward for r in rounds], dtype=float)
        if len(rewards):
            ax.plot(np.arange(len(rewards)), rewards, ".", alpha=0.35, label=f"stage {stage} reward")
            ax.plot(np.arange(len(rewards)), np.cumsum(rewards) / np.arange(1, len(rewards) + 1), label=f"stage {stage} running mean")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("arm pull")
    ax.set_ylabel("reward (oracle values in spread units)")
    ax.set_title("oracle bandit rewards")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
