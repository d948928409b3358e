"""The selection benchmark (issue 7): six selectors, one pool, one token budget per stage, a separate evaluator.

Methods: `random`, `dsir`, `topk_influence` (MATES), `bandit_static`, `domain_oracle` (wiki + news only) and
`influmix` (see benchmarks/selection_methods.py). Each method's per-stage mixtures train a fresh evaluator
LM (benchmarks/selection_eval.py) for every seed; it is measured on the held-out half of the reference set.
Writes `benchmarks/results/selection.json` (device, versions, config, command, `methods` -> figures), the
loss-vs-tokens plot `selection_loss_vs_tokens.png`, the markdown table `selection.md`, and one MLflow run
per method (default store: sqlite under the work folder). Results are written after every (method, seed):
a run that stops is resumed by running the same command again (finished pairs are kept).

    python -m benchmarks.selection                     # configs/selection.toml: the full CPU run (hours)
    python -m benchmarks.selection --tiny --out /tmp/s.json --workdir /tmp/s   # seconds-to-minutes smoke run
    python -m benchmarks.selection --seeds 0 --set eval.eval_every=16 --set pipeline.stages=3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from benchmarks import SHARED_CORPUS
from benchmarks import selection_report as report
from benchmarks.provenance import device_and_versions, write_json
from benchmarks.selection_data import prepare, read_jsonl
from benchmarks.selection_pool import RUN_ID, dsir_for_pool, pipeline_settings, pool_texts, prepare_pool

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"full": ROOT / "configs" / "selection.toml", "tiny": ROOT / "configs" / "selection_tiny.toml"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    heldout_fraction: float = Field(0.5, gt=0, lt=1, description="share of reference documents held out")
    split_seed: int = 0
    pool_heldout_per_domain: int = Field(16, ge=0, description="pool documents per domain kept for evaluation")
    pool_max_records: int | None = Field(None, ge=1, description="use the corpus's first N records only")
    passage_words: int = Field(100, ge=10)
    target_domain: str | None = Field(None, description="a pool domain whose held-out source documents are the target "
                                                        "(default: the reference file)")
    target_documents: int = Field(300, ge=2, description="source documents of `target_domain` taken out of the pool")


class DsirConfig(_Strict):
    ngrams: int = 2
    num_buckets: int = 10_000
    min_example_length: int = Field(100, ge=0, description="words; shorter documents are never picked (package default)")


class BenchConfig(_Strict):
    seeds: list[int] = [0, 1, 2]
    methods: list[str] = ["random", "dsir", "topk_influence", "bandit_static", "domain_oracle", "influmix"]
    corpus: str = str(SHARED_CORPUS / "corpus.jsonl.gz")
    reference: str = str(SHARED_CORPUS / "reference.jsonl.gz")
    workdir: str = "runs/bench-selection"
    out: str = "benchmarks/results/selection.json"
    threads: int = Field(2, ge=1)
    tracking_uri: str | None = Field(None, description="default sqlite:///<workdir>/mlflow.db")
    experiment: str = "influmix-selection-benchmark"
    data: DataConfig = Field(default_factory=DataConfig)
    dsir: DsirConfig = Field(default_factory=DsirConfig)
    eval: dict[str, Any] = Field(default_factory=dict, description="benchmarks.selection_eval.EvalConfig fields")
    pipeline: dict[str, Any] = Field(default_factory=dict, description="influmix settings (README: Configuration)")


def load_config(path: Path, overrides: list[str]) -> BenchConfig:
    from core.config import apply_overrides

    data = apply_overrides(tomllib.loads(path.read_text(encoding="utf-8")), overrides)
    for key in ("corpus", "reference", "workdir", "out"):
        if key in data and not Path(data[key]).is_absolute():
            data[key] = str(ROOT / data[key])
    return BenchConfig.model_validate(data)


def data_files(cfg: BenchConfig, workdir: Path):
    """The benchmark's data files in `workdir`/data (split once, then read back): pool, reference halves."""
    return prepare(Path(cfg.corpus), Path(cfg.reference), workdir / "data", cfg.data.heldout_fraction,
                   cfg.data.split_seed, cfg.data.pool_heldout_per_domain, cfg.data.pool_max_records,
                   cfg.data.passage_words, cfg.data.target_domain, cfg.data.target_documents)


def comparable_config(cfg: BenchConfig) -> dict[str, Any]:
    """The configuration a result belongs to: everything but which seeds and methods ran and where it is written."""
    return cfg.model_dump(mode="json", exclude={"seeds", "methods", "out", "tracking_uri"})


def evaluator_steps(token_budget: int, eval_cfg) -> int:
    """Evaluator steps per stage: one stage's token budget in the evaluator's batches."""
    return max(1, round(token_budget / (eval_cfg.batch_size * eval_cfg.seq_len)))


NEUTRAL_NEW_OPTIONS = {("select", "coverage_share"): 0.0, ("select", "coverage_order"): "uniform",
                       ("select", "rerank_factor"): 0.0, ("select", "rerank_estimate"): "measured",
                       ("probe", "conditional_folds"): 1}
"""Settings added after mixtures were cached, with the value that does what the code did before they existed.
At that value they are left out of the cache key: a new option that changes nothing must not orphan every
cached mixture (hours of CPU per seed). Set to anything else, it is in the key like any other setting."""


def selection_key(cfg: BenchConfig, settings, method: str) -> dict[str, Any]:
    """What a method's cached mixture (`seed-N/selections.json`) depends on: it is reused only while this holds."""
    from benchmarks.selection_methods import VARIANTS

    dump = settings.model_dump(mode="json", exclude={"run_id", "runner", "serve"})
    for (section, option), neutral in NEUTRAL_NEW_OPTIONS.items():
        if dump[section][option] == neutral:
            del dump[section][option]
    pipeline = {"pipeline": dump, "dsir": cfg.dsir.model_dump(), "data": cfg.data.model_dump()}
    return {**method_view(pipeline, method), "overrides": VARIANTS.get(method, [])}


def seed_selections(cfg: BenchConfig, settings, files, workdir: Path, pool_cost, pool, dsir_cache: dict,
                    methods: list[str]) -> dict:
    """The seed's mixtures for `methods` (cached per method in <workdir>/seed-N/, keyed by what the method
    reads), and its tokenizer."""
    from benchmarks.selection_methods import mixture_facts, select_for_seed

    folder = workdir / f"seed-{settings.seed}"
    cached = folder / "selections.json"
    saved = json.loads(cached.read_text()) if cached.exists() and (folder / "tokenizer.json").exists() else {}
    saved.setdefault("methods", {})
    missing = [m for m in methods if saved["methods"].get(m, {}).get("key") != selection_key(cfg, settings, m)]
    if missing:
        if "dsir" in missing and "weights" not in dsir_cache:
            dsir_cache["weights"] = dsir_for_pool(cfg, settings, files, workdir)
        reference_domains = {r.get("domain") for r in read_jsonl(files.path("reference_visible"))}
        chosen = select_for_seed(settings, missing, dsir_cache.get("weights"), reference_domains, pool_cost, *pool)
        for method, entry in mixture_facts(settings, RUN_ID, chosen).items():
            saved["methods"][method] = {**entry, "key": selection_key(cfg, settings, method)}
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(settings.stage_dir(RUN_ID) / "tokenizer.json", folder / "tokenizer.json")
        if "weights" in dsir_cache:
            saved["dsir_implementation"] = dsir_cache["weights"].implementation
        cached.write_text(json.dumps(saved))
    return saved


INFLUENCE_ONLY = ("probe", "distill", "cluster")
"""Pipeline sections that only the model-aware methods read."""
STATIC_SELECT = ("token_budget", "exclude_previous")
TOKENIZER_KEYS = ("vocab_size", "seq_len", "tokenizer_max_docs")
"""What random, DSIR and the domain mix read of `select` and `proxy` (the tokenizer the evaluator uses)."""


def method_view(comparable: dict[str, Any] | None, method: str) -> dict[str, Any] | None:
    """The part of a configuration a method's results depend on: a change to the probes or the influence
    model keeps random's, DSIR's and the domain mix's results (their mixtures and evaluators are the same)."""
    from benchmarks.selection_methods import MODEL_AWARE

    if comparable is None or method in MODEL_AWARE:
        return comparable
    pipeline = {k: v for k, v in comparable.get("pipeline", {}).items() if k not in INFLUENCE_ONLY}
    pipeline["select"] = {k: v for k, v in pipeline.get("select", {}).items() if k in STATIC_SELECT}
    pipeline["proxy"] = {k: v for k, v in pipeline.get("proxy", {}).items() if k in TOKENIZER_KEYS}
    return {**comparable, "pipeline": pipeline}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIGS["full"])
    parser.add_argument("--tiny", action="store_true", help=f"use {CONFIGS['tiny'].relative_to(ROOT)}")
    parser.add_argument("--seeds", help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--methods", help="comma-separated subset of the methods")
    parser.add_argument("--out", help="results JSON (the plot and table are written beside it)")
    parser.add_argument("--workdir", help="pool, runs, selections, MLflow store")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (TOML literal), e.g. eval.eval_every=16")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.seeds, "seeds"), (args.methods, "methods")):
        if flag:
            overrides.append(f"{key}={json.dumps(flag.split(',') if key == 'methods' else [int(s) for s in flag.split(',')])}")
    for flag, key in ((args.out, "out"), (args.workdir, "workdir")):
        if flag:
            overrides.append(f"{key}={json.dumps(str(Path(flag).resolve()))}")
    cfg = load_config(CONFIGS["tiny"] if args.tiny else args.config, overrides)
    return run(cfg, " ".join([Path(sys.executable).name, "-m", "benchmarks.selection",
                              *(argv if argv is not None else sys.argv[1:])]))


def run(cfg: BenchConfig, command: str) -> dict[str, Any]:
    """The benchmark for `cfg`; returns (and writes) the results."""
    for key, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                       ("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")):
        os.environ.setdefault(key, value)
    import torch

    from benchmarks.selection_eval import EvalConfig, build_eval_sets, train_and_evaluate
    from benchmarks.selection_methods import METHODS
    from models.tokenizer import load_tokenizer
    from models.trainer import resolve_device

    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(cfg.threads)
    clock = time.perf_counter()
    eval_cfg = EvalConfig(**cfg.eval)
    workdir, out = Path(cfg.workdir).resolve(), Path(cfg.out)
    files = data_files(cfg, workdir)
    settings = pipeline_settings(cfg, files, workdir)
    device, versions = device_and_versions(resolve_device(eval_cfg.device))
    comparable = comparable_config(cfg)
    config = {**cfg.model_dump(mode="json"), "token_budget": settings.select.token_budget, "stages": settings.stages}
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("methods", {})
    for method in list(results["methods"]):  # another configuration's or device's results: the method starts over
        entry = results["methods"][method]
        if (method_view(entry.get("comparable", results.get("comparable")), method) != method_view(comparable, method)
                or entry.get("device", results.get("device")) != device):
            del results["methods"][method]
    results.update(device=device, versions=versions, config=config, command=command, comparable=comparable,
                   date=datetime.now(UTC).isoformat(timespec="seconds"))
    for method in cfg.methods:
        results["methods"].setdefault(method, {"seeds": {}}).update(comparable=comparable, device=device)
    results["methods"] = {m: results["methods"][m] for m in sorted(results["methods"], key=METHODS.index)}
    pool_cost, pool_facts, pool = prepare_pool(settings, workdir, (files.folder / "data.json").read_text())
    print(f"[{time.perf_counter() - clock:.0f} s] pool ready: {pool_facts['documents']} documents", flush=True)
    results["pool"] = {k: v for k, v in pool_facts.items() if k not in ("key", "artifacts")}
    heldout = list(read_jsonl(files.path("reference_heldout")))
    pool_heldout = list(read_jsonl(files.path("pool_heldout")))
    steps_per_stage = evaluator_steps(settings.select.token_budget, eval_cfg)
    texts: dict[str, str] = {}
    dsir_cache: dict = {}
    tracking_uri = cfg.tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    for seed in cfg.seeds:
        todo = [m for m in cfg.methods if str(seed) not in results["methods"][m]["seeds"]]
        if not todo:
            continue
        seed_settings = settings.model_copy(update={"seed": seed})
        chosen = seed_selections(cfg, seed_settings, files, workdir, pool_cost, pool, dsir_cache, todo)
        print(f"[{time.perf_counter() - clock:.0f} s] seed {seed}: selections ready", flush=True)
        results["dsir_implementation"] = chosen.get("dsir_implementation", results.get("dsir_implementation"))
        tokenizer = load_tokenizer(workdir / f"seed-{seed}" / "tokenizer.json")
        sets = build_eval_sets(tokenizer, heldout, pool_heldout, eval_cfg, seed)
        if not texts:
            texts.update(pool_texts(settings))
        for method in todo:
            selection = chosen["methods"][method]
            stages = [packed_rows(tokenizer, [texts[d] for d in mixture], eval_cfg.seq_len) for mixture in selection["stages"]]
            run_data = train_and_evaluate(stages, tokenizer.get_vocab_size(), sets, eval_cfg, seed, steps_per_stage)
            run_data["selection"] = {k: v for k, v in selection.items() if k not in ("stages", "key")}
            run_data["overhead"] = report.overhead(run_data)
            results["methods"][method]["seeds"][str(seed)] = run_data
            report.summarise(results)
            write_json(results, out)
            print(f"[{time.perf_counter() - clock:.0f} s] seed {seed} {method}: held-out reference loss {run_data['final']['heldout_reference_loss']:.4f}, "
                  f"cloze {run_data['final']['cloze_accuracy']:.3f}, {run_data['tokens_per_s']:.0f} tokens/s", flush=True)
        if seed != cfg.seeds[-1]:  # the last seed's runs are logged below, with the plot and the table
            report.log_mlflow(results, tracking_uri, cfg.experiment, [])
    report.summarise(results)
    plot_path, table_path = out.with_name(out.stem + "_loss_vs_tokens.png"), out.with_suffix(".md")
    report.plot(results, plot_path)
    table_path.write_text(report.markdown(results))
    results["artifacts"] = {"plot": plot_path.name, "table": table_path.name}
    results["mlflow"] = {"tracking_uri": tracking_uri, "experiment": cfg.experiment,
                         "runs": report.log_mlflow(results, tracking_uri, cfg.experiment, [plot_path, table_path])}
    write_json(results, out)
    print(table_path.read_text())
    return results


def packed_rows(tokenizer, texts: list[str], seq_len: int):
    """A mixture's documents as the evaluator's training rows (EOS-joined, packed to `seq_len`)."""
    from models.proxy_lm import pack_sequences
    from models.tokenizer import EOS_TOKEN, encode_documents

    rows, _ = pack_sequences(encode_documents(tokenizer, texts), seq_len, tokenizer.token_to_id(EOS_TOKEN))
    return rows


if __name__ == "__main__":
    main()
