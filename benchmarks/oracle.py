"""The oracle benchmark: proxy-LM training throughput, exact vs fast probes, and the distilled influence model.

Writes `benchmarks/results/oracle.json` (device, library versions, command line, model size, training
tokens/s and MFU, ms per exact and fast probe, speedup, Spearman of fast vs exact per checkpoint and pooled,
the influence model's held-out Spearman against exact probes, scoring docs/s) and a fast-vs-exact plot.

    python -m benchmarks.oracle                      # the full configuration (CPU: ~30-40 min on 2 cores)
    python -m benchmarks.oracle --docs 500 --n-exact 400 --preset 125m --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import influence_study, oracle_probes
from models.flops import device_peak_flops, mfu
from models.proxy_lm import build_proxy_lm, count_params
from models.trainer import TrainConfig, make_optimizer, resolve_device, train

RESULTS = Path(__file__).resolve().parent / "results"
FAST_METHOD = "shifted"  # the pipeline's default estimator (models/oracles.py)


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"CPU: {cpu}, {torch.get_num_threads()} torch threads"


def versions() -> dict[str, str]:
    import sentence_transformers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__, "numpy": np.__version__}


def measure_training(data: oracle_probes.BenchData, preset: str, device: str, steps: int, batch_size: int) -> dict[str, Any]:
    """Steady-state training throughput of the preset on the benchmark's packed rows."""
    model = build_proxy_lm(preset, data.vocab_size, data.seq_len, seed=0).to(device)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-3, warmup_steps=2, weight_decay=0.1, beta1=0.9,
                      beta2=0.95, grad_clip=1.0, device=device, bf16=device.startswith("cuda"))
    result = train(model, make_optimizer(model, cfg), data.train_rows, cfg, progress=False)
    peak = device_peak_flops(device, "bf16" if cfg.bf16 else "fp32")
    return {"preset": preset, "params": count_params(model), "steps": steps, "batch_size": batch_size,
            "seq_len": data.seq_len, "train_tokens_per_s": result.tokens_per_s,
            "flops_per_token": result.flops_per_token, "model_flops_per_s": result.model_flops_per_s,
            "device_peak_flops": peak, "mfu": mfu(result.tokens_per_s, result.flops_per_token, peak)}


def headline_influence(study: dict[str, Any]) -> dict[str, Any]:
    """The influence model as the pipeline trains it by default (`distill.labels = "fast"`): held-out
    Spearman against exact probes, mean over the study's splits; the exact-label arm beside it."""
    summary = study["summary"]
    return {
        "influence_model_spearman": summary["labels_fast_spearman"],
        "influence_model_student": summary["labels_student"],
        "influence_model_labels": "fast probes on ~k x more documents at equal compute (pipeline default)",
        "influence_model_spearman_exact_labels": summary["labels_exact_spearman"],
    }


def influence_study_config(n_exact: int, preset: str, threads: int, finetune: bool):
    """configs/influence_study.toml with the oracle benchmark's probe count, proxy size and threads."""
    from benchmarks.influence_study_config import CONFIGS, load_config

    cfg = load_config(CONFIGS["full"], [f"pipeline.probe.budget={n_exact * 12}", f"pipeline.proxy.preset={json.dumps(preset)}",
                                        f"threads={threads}"])
    if not finetune:
        cfg = cfg.model_copy(update={"students": {k: v for k, v in cfg.students.items() if k != "finetuned"}})
    return cfg


def plot_fast_vs_exact(probes: dict[str, Any], method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checkpoints = probes["checkpoints"]
    fig, axes = plt.subplots(1, len(checkpoints), figsize=(4 * len(checkpoints), 3.6), squeeze=False)
    for ax, (step, r) in zip(axes[0], checkpoints.items()):
        ax.scatter(r["exact"]["scores"], r[method]["scores"], s=6, alpha=0.5)
        ax.set_title(f"step {step}: Spearman {r[method]['spearman_vs_exact']:.3f}")
        ax.set_xlabel("exact one-step loss decrease")
        ax.set_ylabel(f"{method} estimate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--docs", type=int, default=500, help="documents probed exactly and fast at each checkpoint")
    parser.add_argument("--steps", type=int, default=300, help="proxy training steps (checkpoints at 1/6, 1/2, 1)")
    parser.add_argument("--n-exact", type=int, default=400, help="exact probes the influence-model study labels")
    parser.add_argument("--throughput-steps", type=int, default=30)
    parser.add_argument("--throughput-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-finetune", action="store_true", help="skip the fine-tuned-encoder arm (slow on CPU)")
    parser.add_argument("--out", default=str(RESULTS / "oracle.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started = time.perf_counter()

    checkpoints = [max(1, args.steps // 6), max(1, args.steps // 2), args.steps]
    probes = oracle_probes.run(args.docs, checkpoints, Path("runs/bench-oracle"), preset=args.preset,
                               methods=(FAST_METHOD, "first_order"))
    data = oracle_probes.load_data(8)
    training = measure_training(data, args.preset, device, args.throughput_steps, args.throughput_batch)
    command = " ".join([Path(sys.executable).name, "-m", "benchmarks.oracle", *(argv or sys.argv[1:])])
    study = influence_study.run(influence_study_config(args.n_exact, args.preset, args.threads, not args.no_finetune),
                                command, write=False)
    method = FAST_METHOD
    pooled = probes["pooled"][method]
    exact_ms = float(np.mean([r["exact"]["probe_ms"] for r in probes["checkpoints"].values()]))
    fast_ms = float(np.mean([r[method]["probe_ms"] for r in probes["checkpoints"].values()]))
    result = {
        "device": device_description(device),
        "gpu": device.startswith("cuda"),
        "versions": versions(),
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_size": {"preset": args.preset, "params": training["params"]},
        "train_tokens_per_s": training["train_tokens_per_s"],
        "mfu": training["mfu"],
        "training": training,
        "fast_method": method,
        "exact_probe_ms": exact_ms,
        "fast_probe_ms": fast_ms,
        "speedup_vs_exact": exact_ms / fast_ms,
        "spearman_vs_exact": {
            "per_checkpoint": {str(s): r[method]["spearman_vs_exact"] for s, r in probes["checkpoints"].items()},
            "overall": pooled["spearman_vs_exact"],
        },
        "estimators": {m: {k: v for k, v in p.items()} for m, p in probes["pooled"].items()},
        **headline_influence(study),
        "scoring_docs_per_s": study["summary"].get("scoring_docs_per_s_text"),
        "influence_study": study,
        "probe_settings": probes["settings"],
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    plot_fast_vs_exact(probes, method, out.with_name("oracle_fast_vs_exact.png"))
    print(json.dumps({k: result[k] for k in ("device", "train_tokens_per_s", "mfu", "exact_probe_ms", "fast_probe_ms",
                                             "speedup_vs_exact", "spearman_vs_exact", "influence_model_spearman",
                                             "scoring_docs_per_s")}, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()
