"""Which signals select better pretraining data? A study on the selection benchmark's data (issue 17).

Part a (`--parts selection`): each method fills `budget` tokens in each of `stages` stages from the whole
shared pool; a fresh evaluator (benchmarks/selection_eval.py, same config as configs/selection.toml) trains on
the mixtures and is measured on the held-out reference. Methods: see METHODS. Part b and c (`--parts group`):
benchmarks/signal_group.py at every checkpoint of the probe trajectory.

Writes benchmarks/results/signal_study.json (device, versions, command, date, knobs; per seed and method or
stage) after every evaluator run or stage: running the same command again resumes (finished entries with
the same knobs are kept). Caches (token ids, arms, proxy checkpoints, CoLoR and DSIR scores, selections) live
in the work folder. One torch thread.

    python -m benchmarks.signal_study --seeds 0 --parts selection,group
    python -m benchmarks.signal_study --seeds 1,2 --methods random,dsir,domain_mix,color_len
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import SHARED_CORPUS
from benchmarks import signal_methods as sm
from benchmarks.provenance import device_and_versions, write_json
from benchmarks.selection_data import prepare, read_jsonl, visible_documents
from benchmarks.selection_eval import EvalConfig, build_eval_sets, tokens_to_reach, train_and_evaluate
from benchmarks.signal_data import load_pool, mixture_facts, reference_halves, spread_rows

ROOT = Path(__file__).resolve().parents[1]
EVAL = {"preset": "tiny", "model": {"hidden_size": 192, "intermediate_size": 768, "num_hidden_layers": 3,
                                    "num_attention_heads": 4},
        "seq_len": 128, "batch_size": 16, "lr": 1e-3, "warmup_steps": 20, "eval_every": 16, "eval_rows": 64,
        "domain_rows": 8, "cloze_items": 256, "cloze_every": 4, "final_rows": 1024, "device": "cpu"}
"""configs/selection.toml's evaluator, measured every 16 steps (32k tokens) as in the README's ablation."""
METHODS = ("random", "dsir", "domain_mix", "color", "color_fold_a", "color_top", "color_len", "color_min100w",
           "color_dsir", "probes", "probes_prior", "rollout_arms", "rollout_arms_color", "color_top_len", "color_t025",
           "color_top_dsir")


class SeedRun:
    """One seed's data, proxy, signals and cached selections."""

    def __init__(self, knobs: sm.Knobs, files, workdir: Path, seed: int):
        self.knobs, self.seed, self.files, self.workdir = knobs, seed, files, workdir
        self.folder = workdir / f"seed-{seed}"
        self.timings: dict[str, float] = {}
        self.pool, self.tokenizer = load_pool(files, self.folder, seed, knobs.vocab_size, 20_000, knobs.arms,
                                              self.timings)
        self.eos = 0
        self.ref_a, self.ref_b = reference_halves(files, self.tokenizer, knobs.seq_len, seed)
        visible = torch.cat([self.ref_a, self.ref_b])
        self.probe_ref = spread_rows(visible, knobs.probe_ref_rows)
        self.rollout_ref = spread_rows(visible, knobs.rollout_ref_rows)
        self.group_ref = spread_rows(self.ref_b, knobs.rollout_ref_rows)
        self.views = self.pool.probe_views(knobs.seq_len, self.eos)
        self._cache: dict[str, Any] = {}

    # ---- the proxy
    def checkpoint(self, trajectory: str, stage: int):
        """(model, live optimizer) of a saved checkpoint; stage 0 of every trajectory is the prior."""
        from models.trainer import load_checkpoint, make_optimizer, save_checkpoint, train

        path = self.folder / ("prior" if stage == 0 else f"traj-{trajectory}/stage-{stage}")
        if stage == 0 and not (path / "meta.json").exists():
            from models.proxy_lm import build_proxy_lm
            started = time.perf_counter()
            model = build_proxy_lm("tiny", self.knobs.vocab_size, self.knobs.seq_len, self.seed)
            cfg = self.knobs.train_config(self.seed, self.knobs.prior_steps)
            optimizer = make_optimizer(model, cfg)
            docs = np.random.default_rng(self.seed).permutation(len(self.pool.ids))
            cum = np.cumsum(self.pool.tokens[docs] + 1)
            need = cfg.steps * cfg.batch_size * self.knobs.seq_len
            rows = self.pool.rows(docs[: int(np.searchsorted(cum, need)) + 1], self.knobs.seq_len, self.eos)
            train(model, optimizer, rows, cfg, progress=False)
            save_checkpoint(path, model, optimizer, {"seconds": time.perf_counter() - started, "steps": cfg.steps})
        model, state, _ = load_checkpoint(path)
        optimizer = make_optimizer(model, self.knobs.train_config(self.seed, 1))
        optimizer.load_state_dict(copy.deepcopy(state))
        return model, optimizer

    def save_checkpoint(self, trajectory: str, stage: int, model, optimizer) -> None:
        from models.trainer import save_checkpoint
        save_checkpoint(self.folder / f"traj-{trajectory}/stage-{stage}", model, optimizer, {"stage": stage})

    # ---- static signals
    def color(self) -> dict[str, Any]:
        """CoLoR's token-loss sums (prior, each fold's conditional) over every pool document, cached."""
        if "color" in self._cache:
            return self._cache["color"]
        from models.conditional_loss import FinetuneConfig, cross_fit_conditional_losses
        path = self.folder / "color.npz"
        if not path.exists():
            started = time.perf_counter()
            prior, optimizer = self.checkpoint("prior", 0)
            docs = [self.views[0][self.views[1][i]:self.views[1][i + 1]] for i in range(len(self.pool.ids))]
            losses = cross_fit_conditional_losses(prior, optimizer.state_dict(), (self.ref_a, self.ref_b), docs,
                                                  FinetuneConfig(max_steps=self.knobs.finetune_steps,
                                                                 seed=self.seed), folds=self.knobs.color_folds)
            np.savez(path, prior=losses.prior.sums, counts=losses.prior.counts,
                     conditional=np.stack([c.sums for c in losses.conditional]))
            (self.folder / "color.json").write_text(json.dumps({
                "seconds": time.perf_counter() - started,
                "traces": [dataclasses.asdict(t) for t in losses.traces]}))
        saved = np.load(path)
        self._cache["color"] = {"prior": saved["prior"], "counts": saved["counts"], "conditional": saved["conditional"],
                                **json.loads((self.folder / "color.json").read_text())}
        return self._cache["color"]

    def color_scores(self, shrink: float = 0.0, folds: list[int] | None = None) -> np.ndarray:
        c = self.color()
        chosen = folds if folds is not None else list(range(len(c["conditional"])))
        return np.mean([c["prior"] - c["conditional"][k] for k in chosen], axis=0) / (c["counts"] + shrink)

    def dsir(self):
        """DSIR's log weights and length filter (seed-independent: fitted once per work folder)."""
        if "dsir" not in self._cache:
            from benchmarks.selection_methods import dsir_weights
            path = self.workdir / "dsir_weights.json"
            if not path.exists():
                weights = dsir_weights(list(zip(self.pool.ids, self.pool.texts)), visible_documents(self.files),
                                       self.workdir / "dsir", 2, 10_000, 100)
                write_json(dataclasses.asdict(weights), path)
            w = json.loads(path.read_text())
            self._cache["dsir"] = (np.array([w["log_weight"][d] for d in self.pool.ids]),
                                   np.array([w["keep"][d] for d in self.pool.ids]), w["seconds"], w["implementation"])
        return self._cache["dsir"]

    def document_scores(self, stage: int) -> dict[str, np.ndarray]:
        """Document scores the group study averages over arms: token model at `stage`, CoLoR fold A, DSIR."""
        saved = np.load(self.folder / "traj-probes" / "scores.npz")
        return {"token_model": saved[f"stage{stage}"], "color_fold_a": self.color_scores(folds=[0]),
                "dsir": self.dsir()[0]}

    # ---- selections
    def selection(self, method: str) -> dict[str, Any]:
        path = self.folder / "selections" / f"{method}.json"
        if path.exists():
            return json.loads(path.read_text())
        started = time.perf_counter()
        facts: list[dict[str, Any]] = []
        if method in ("probes", "probes_prior"):
            traj = self.probe_trajectory(method)
            stages, facts, seconds = traj.stages, traj.facts, traj.seconds
        elif method in ("rollout_arms", "rollout_arms_color"):
            traj = self.rollout_trajectory(method)
            stages, facts, seconds = traj.stages, traj.facts, traj.seconds
        else:
            stages, seconds = self.static(method), {}
        seconds["select_total"] = time.perf_counter() - started
        out = {"stages": stages, "facts": facts, "seconds": seconds}
        write_json(out, path)
        return out

    def static(self, method: str) -> list[list[int]]:
        pool, k, seed = self.pool, self.knobs, self.seed
        if method == "random":
            return sm.static_stages(pool, k, seed, method, None)
        if method == "domain_mix":
            return sm.static_stages(pool, k, seed, method, None, allowed=np.isin(pool.domains, ["wiki", "news"]))
        if method == "dsir":
            log_weight, keep, _, _ = self.dsir()
            return sm.static_stages(pool, k, seed, method, log_weight, allowed=keep, gumbel_on_raw=True)
        # method -> (score, temperature: None = knobs.temperature, allowed: None = every document)
        color, shrunk = self.color_scores, lambda: self.color_scores(k.color_shrink)
        long_enough = ~pool.flags["under_100_words"]
        spec = {"color": (color, None, None), "color_fold_a": (lambda: self.color_scores(folds=[0]), None, None),
                "color_top": (color, 0.0, None), "color_t025": (color, 0.25, None), "color_len": (shrunk, None, None),
                "color_top_len": (shrunk, 0.0, None), "color_min100w": (color, None, long_enough),
                "color_dsir": (lambda: sm.rank_mean(color(), self.dsir()[0]), None, None),
                "color_top_dsir": (lambda: sm.rank_mean(color(), self.dsir()[0]), 0.0, None)}
        score, temperature, allowed = spec[method]
        return sm.static_stages(pool, k, seed, method, score(), allowed=allowed, temperature=temperature)

    def probe_trajectory(self, method: str) -> sm.Trajectory:
        """MATES stages: proxy on the previous mixture, probes, token model, Gumbel-top-k on its scores."""
        k, pool, traj = self.knobs, self.pool, sm.Trajectory()
        model, optimizer = self.checkpoint(method, 0)
        prior = sm.token_prior(pool, torch.cat([self.ref_a, self.ref_b]), k, self.seed, self.eos) \
            if method == "probes_prior" else None
        taken, history, all_scores = np.zeros(len(pool.ids), dtype=bool), [], {}
        for stage in range(k.stages):
            if stage > 0:
                started = time.perf_counter()
                sm.continue_training(model, optimizer, pool, traj.stages[-1], k, self.seed, stage, self.eos)
                traj.timed("proxy_train", started)
                self.save_checkpoint(method, stage, model, optimizer)
            started = time.perf_counter()
            scores, facts, labels = sm.probe_scores(model, optimizer.state_dict(), pool, self.views, ~taken,
                                                    self.probe_ref, k, self.seed, stage, history, prior,
                                                    k.prior_weight if prior is not None else 0.0, self.eos)
            traj.timed("probe_distill_score", started)
            history = (history + [labels])[-k.history_stages:] if k.history_stages else []
            picked = sm.topk(scores, pool, ~taken, k, sm.stage_seed(self.seed, method, stage))
            taken[picked] = True
            traj.stages.append(picked.tolist())
            traj.facts.append(facts)
            all_scores[f"stage{stage}"] = scores
            print(f"  {method} stage {stage}: {facts}", flush=True)
        (self.folder / f"traj-{method}").mkdir(parents=True, exist_ok=True)
        np.savez(self.folder / f"traj-{method}" / "scores.npz", **all_scores)
        return traj

    def rollout_trajectory(self, method: str) -> sm.Trajectory:
        """Arms rewarded by rollouts minus the control; the budget goes to the best arms."""
        k, pool, traj = self.knobs, self.pool, sm.Trajectory()
        model, optimizer = self.checkpoint(method, 0)
        within = self.color_scores() if method == "rollout_arms_color" else None
        taken = np.zeros(len(pool.ids), dtype=bool)
        for stage in range(k.stages):
            if stage > 0:
                started = time.perf_counter()
                sm.continue_training(model, optimizer, pool, traj.stages[-1], k, self.seed, stage, self.eos)
                traj.timed("proxy_train", started)
            started = time.perf_counter()
            rewards, facts = sm.rollout_arm_rewards(model, optimizer, pool, ~taken, self.rollout_ref, k, self.seed,
                                                    stage, self.eos)
            traj.timed("rollouts", started)
            picked = sm.select_by_arms(pool, rewards, within, ~taken, k, sm.stage_seed(self.seed, method, stage))
            taken[picked] = True
            traj.stages.append(picked.tolist())
            traj.facts.append(facts)
            print(f"  {method} stage {stage}: top arms {np.argsort(-np.nan_to_num(rewards, nan=-1e9))[:k.top_arms]}",
                  flush=True)
        return traj

    def eval_sets(self, eval_cfg: EvalConfig):
        if "sets" not in self._cache:
            self._cache["sets"] = build_eval_sets(self.tokenizer, list(read_jsonl(self.files.path("reference_heldout"))),
                                                  list(read_jsonl(self.files.path("pool_heldout"))), eval_cfg, self.seed)
        return self._cache["sets"]


def evaluate(run: SeedRun, method: str) -> dict[str, Any]:
    selection = run.selection(method)
    eval_cfg = EvalConfig(**EVAL)
    rows = [run.pool.rows(np.array(s, dtype=np.int64), run.knobs.seq_len, run.eos) for s in selection["stages"]]
    steps = max(1, round(run.knobs.budget / (eval_cfg.batch_size * eval_cfg.seq_len)))
    result = train_and_evaluate(rows, run.tokenizer.get_vocab_size(), run.eval_sets(eval_cfg), eval_cfg, run.seed,
                                steps)
    return {"final": result["final"], "curve": [{k: p[k] for k in ("tokens", "heldout_reference_loss")}
                                                for p in result["curve"]],
            "tokens": result["tokens"], "train_seconds": result["train_seconds"],
            "tokens_per_s": result["tokens_per_s"], "mixture": mixture_facts(run.pool, selection["stages"]),
            "selection_seconds": selection["seconds"], "selection_facts": selection["facts"]}


def _mean(runs: dict[str, Any], f) -> float:
    return float(np.mean([f(r) for r in runs.values()]))


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per method over finished seeds: mean and std of the final loss, tokens to random's final loss, shares."""
    out: dict[str, Any] = {}
    for method in METHODS:
        runs = {s: r["selection"][method] for s, r in results["seeds"].items() if method in r.get("selection", {})}
        if not runs:
            continue
        losses = [r["final"]["heldout_reference_loss"] for r in runs.values()]
        ratios = []
        for s, r in runs.items():
            base = results["seeds"][s].get("selection", {}).get("random")
            if base:
                reached = tokens_to_reach(r["curve"], base["curve"][-1]["heldout_reference_loss"])
                ratios.append(reached / base["tokens"] if reached is not None else None)
        first = next(iter(runs.values()))
        out[method] = {
            "seeds": sorted(int(s) for s in runs), "heldout_reference_loss": float(np.mean(losses)),
            "std": float(np.std(losses, ddof=1)) if len(losses) > 1 else None,
            "tokens_to_random_final": [r for r in ratios],
            "reference_domain_loss": {d: _mean(runs, lambda r, d=d: r["final"]["reference_domain_loss"][d])
                                      for d in first["final"]["reference_domain_loss"]},
            "pool_domain_loss": {d: _mean(runs, lambda r, d=d: r["final"]["pool_domain_loss"][d])
                                 for d in first["final"]["pool_domain_loss"]},
            "mixture": {k: _mean(runs, lambda r, k=k: r["mixture"][k]) for k, v in first["mixture"].items()
                        if isinstance(v, float)},
            "domain_token_shares": {d: _mean(runs, lambda r, d=d: r["mixture"]["domain_token_shares"].get(d, 0.0))
                                    for d in sorted({d for r in runs.values() for d in r["mixture"]["domain_token_shares"]})},
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--parts", default="selection,group")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "signal-study"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "signal_study.json"))
    parser.add_argument("--max-records", type=int, default=None, help="pool = the corpus's first N records (smoke runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KNOB=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    knobs = sm.Knobs(**{k: type(getattr(sm.Knobs, k))(json.loads(v)) for k, v in (o.split("=", 1)
                                                                                  for o in args.overrides)})
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    workdir, out = Path(args.workdir), Path(args.out)
    files = prepare(SHARED_CORPUS / "corpus.jsonl.gz", SHARED_CORPUS / "reference.jsonl.gz", workdir / "data", 0.5,
                    0, 16, args.max_records, 100)
    device, versions = device_and_versions("cpu")
    results = json.loads(out.read_text()) if out.exists() else {"seeds": {}}
    if results.get("knobs") not in (None, dataclasses.asdict(knobs)):
        raise SystemExit(f"{out} holds results for other knobs; pass another --out")
    results.update(device=device, versions=versions, knobs=dataclasses.asdict(knobs), evaluator=EVAL,
                   command=" ".join([Path(sys.executable).name, "-m", "benchmarks.signal_study",
                                     *(argv if argv is not None else sys.argv[1:])]),
                   date=datetime.now(UTC).isoformat(timespec="seconds"),
                   pool=(f"the first {args.max_records} corpus records" if args.max_records else "the whole shared corpus")
                   + " minus 16 held-out documents per domain (no dedup beyond the corpus's own)")
    clock = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        run = SeedRun(knobs, files, workdir, seed)
        entry = results["seeds"].setdefault(str(seed), {})
        entry.setdefault("setup", {}).update(run.timings)
        entry["setup"]["pool_documents"] = len(run.pool.ids)
        entry["setup"]["pool_tokens"] = int(run.pool.tokens.sum())
        entry["setup"]["reference_rows"] = [len(run.ref_a), len(run.ref_b)]
        if "selection" in args.parts:
            for method in methods:
                if method in entry.setdefault("selection", {}):
                    continue
                entry["selection"][method] = evaluate(run, method)
                if method.startswith("color") and "color" not in entry["setup"]:
                    entry["setup"]["color"] = {k: v for k, v in run.color().items() if k in ("seconds", "traces")}
                results["summary"] = summarise(results)
                write_json(results, out)
                print(f"[{time.perf_counter() - clock:.0f} s] seed {seed} {method}: "
                      f"{entry['selection'][method]['final']['heldout_reference_loss']:.4f}", flush=True)
        if "group" in args.parts:
            from benchmarks.signal_group import group_stage
            run.selection("probes")  # the trajectory whose checkpoints are studied
            for stage in range(knobs.stages):
                if str(stage) in entry.setdefault("group", {}):
                    continue
                entry["group"][str(stage)] = group_stage(run, stage)
                write_json(results, out)
                print(f"[{time.perf_counter() - clock:.0f} s] seed {seed} group stage {stage}: "
                      f"{entry['group'][str(stage)]['test_retest']}", flush=True)


if __name__ == "__main__":
    main()
