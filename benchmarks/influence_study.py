"""How well does each influence model ("student") reproduce the exact MATES probes, and what does it cost?

Runs over the pipeline's own stages (benchmarks/influence_study_data.py: ingest -> reference -> embed ->
cluster -> tokenizer -> stage-0 pretrain -> probe), with the settings of the config's `[pipeline]`, and
answers three questions on stage 0's probes:

1. Student vs student: held-out Spearman against EXACT probes of every registered student
   (models/students.py: `head`, `finetuned`, `tokens`) over its grid of pipeline settings, averaged over
   `repeats` seeded splits, beside two floors (document length alone; a ridge on the stored embeddings).
2. Label source at equal compute: N exact probes vs the same N documents' fast probes vs k*N fast probes,
   k = the probe stage's measured seconds per exact probe / per fast probe; every arm judged on the same
   test documents' EXACT probes.
3. Scoring throughput: docs/s of every student (saved and loaded back, as the score shards use it) from its
   own input, from raw text, and the text encoder's FLOPs per document.

Protocol (why the numbers are not optimistic): a test document is never in a fit or early-stopping set
(early stopping uses `distill.val_fraction` of the training documents); the splits are written beside the
results (`<out>_splits.json`, indices into the probed documents). A grid's `best` point is picked on the
test documents, so compare students at a fixed point, or read `best` as an upper bound.

    python -m benchmarks.influence_study                    # configs/influence_study.toml (~14 min, 1 thread)
    python -m benchmarks.influence_study --tiny --out /tmp/study.json --workdir /tmp/study   # a smoke run
    python -m benchmarks.influence_study --set repeats=5 --set pipeline.probe.budget=7200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.influence_study_config import CONFIGS, ROOT, StudyConfig, load_config, pipeline_settings
from benchmarks.influence_study_data import (
    StudyData,
    label_budget,
    make_splits,
    n_train_of,
    prepare,
    write_splits,
)

ENVIRONMENT = (("MLFLOW_DISABLE_TELEMETRY", "true"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
               ("TOKENIZERS_PARALLELISM", "false"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
               ("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore"))


def _log(message: str, clock: float, part: str = "") -> None:
    print(f"[influence_study{part} {time.perf_counter() - clock:.0f} s] {message}", file=sys.stderr, flush=True)


def pipeline_facts(data: StudyData) -> dict[str, Any]:
    """The stage artifacts the study's labels come from (the checkpoint without its loss curve)."""
    checkpoint = {k: v for k, v in dataclasses.asdict(data.checkpoint).items() if k != "losses"}
    return {"stage_seconds": data.seconds, "checkpoint": checkpoint, "probes": dataclasses.asdict(data.probes),
            **{name: dataclasses.asdict(part) for name, part in
               zip(("ingested", "reference", "embedded", "clustered", "tokenized"), data.corpus.parts())}}


def summary(students: dict[str, Any], labels: dict[str, Any], scoring: dict[str, Any] | None,
            pipeline_student: str) -> dict[str, Any]:
    """Flat headline numbers (benchmarks/oracle.py embeds them). `student_spearman` is each student's first
    grid point (the configs list the pipeline's own values first); the label arms are the pipeline's own
    student's where it is a label student, else the first label student's."""
    label_student = pipeline_student if pipeline_student in labels["students"] else next(iter(labels["students"]))
    arms = labels["students"][label_student]
    out = {
        "pipeline_student": pipeline_student,
        "student_spearman": {n: s["points"][0]["test_spearman"]["mean"] for n, s in students.items()},
        "student_best_spearman": {n: s["best_test_spearman"]["mean"] for n, s in students.items()},
        "best_student": max(students, key=lambda n: students[n]["best_test_spearman"]["mean"]),
        "labels_student": label_student,
        "labels_exact_spearman": arms["exact"]["mean"],
        "labels_fast_spearman": arms["fast_k_n"]["mean"],
        "fast_labels_per_exact_budget": labels["n_fast_train"] / labels["n_exact_train"],
    }
    if scoring is not None:
        speeds = scoring["students"]
        out.update(scoring_docs_per_s={n: s["docs_per_s"] for n, s in speeds.items()},
                   scoring_docs_per_s_from_text={n: s["from_text_docs_per_s"] for n, s in speeds.items()},
                   scoring_docs_per_s_text=speeds.get(pipeline_student, {}).get("from_text_docs_per_s"),
                   flops_per_doc_text=scoring["encoder"]["flops_per_doc_at_max"])
    return out


def study(cfg: StudyConfig, data: StudyData, scoring: bool = True) -> tuple[dict[str, Any], list]:
    """The three measurements on the stages' data: (results, splits). `scoring=False` skips question 3."""
    from benchmarks.influence_study_fits import baselines, compare_labels, compare_students
    from benchmarks.influence_study_speed import scoring_speed
    from tasks.distill import student_name

    clock = time.perf_counter()
    n_exact, n_fast_only = len(data.labels.exact_ids()), len(data.labels.fast_only_ids())
    n_train = n_train_of(data.settings, n_exact)
    budget = label_budget(data.probes, n_train, n_train + n_fast_only, cfg.fast_per_exact)
    splits = make_splits(data.settings, data.labels, cfg.repeats, budget.n_fast_train)
    students, fitted = compare_students(cfg, data, splits)
    _log("students: " + ", ".join(f"{n} {s['points'][0]['test_spearman']['mean']:.3f}" for n, s in students.items()),
         clock, " analysis")
    floors = baselines(data, splits)
    labels = compare_labels(cfg, data, splits, budget)
    _log(f"labels (k={budget.k:.1f}, {budget.n_fast_train} fast vs {n_train} exact): " + ", ".join(
        f"{n} {a['exact']['mean']:.3f}/{a['fast_k_n']['mean']:.3f}" for n, a in labels["students"].items()), clock, " analysis")
    speed = scoring_speed(cfg, data, fitted) if scoring else None
    results = {
        "students": students, "baselines": floors, "labels": labels, "scoring": speed,
        "splits": {"repeats": len(splits), "n_exact_probed": n_exact, "n_fast_only": n_fast_only,
                   "n_fit": len(splits[0].fit), "n_val": len(splits[0].val), "n_test": len(splits[0].test),
                   "n_fast_fit": len(splits[0].fast_fit), "n_fast_val": len(splits[0].fast_val)},
        "summary": summary(students, labels, speed, student_name(data.settings)),
        "analysis_seconds": time.perf_counter() - clock,
    }
    return results, splits


def run(cfg: StudyConfig, command: str, write: bool = True, data: StudyData | None = None) -> dict[str, Any]:
    """Run the stages (unless `data` holds their output already) and the study for `cfg`; returns the
    results (and writes them, with the splits)."""
    for key, value in ENVIRONMENT:
        os.environ.setdefault(key, value)
    import torch

    from benchmarks.provenance import device_and_versions

    torch.set_num_threads(cfg.threads)
    clock = time.perf_counter()
    settings = pipeline_settings(cfg)
    data = data or prepare(settings)
    _log(f"stages done: {len(data.labels.exact_ids())} exact, {data.probes.measured} fast probes "
         f"(fast vs exact Spearman {data.probes.exact_agreement:.3f})", clock)
    results, splits = study(cfg, data)
    device, versions = device_and_versions(settings.proxy.device if settings.proxy.device != "auto" else
                                           ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(cfg.out)
    results = {"device": device, "versions": versions, "command": command,
               "date": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": time.perf_counter() - clock,
               "config": cfg.model_dump(mode="json"), "settings": settings.model_dump(mode="json"),
               "pipeline": pipeline_facts(data), **results}
    if write:
        results["splits"]["file"] = write_splits(out.with_name(out.stem + "_splits.json"), data.labels, splits).name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=float))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIGS["full"])
    parser.add_argument("--tiny", action="store_true", help=f"use {CONFIGS['tiny'].relative_to(ROOT)}")
    parser.add_argument("--out", help="results JSON (the splits are written beside it)")
    parser.add_argument("--workdir", help="the study's influmix run (DuckDB, checkpoint, saved students)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (TOML literal), e.g. pipeline.probe.budget=7200")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.out, "out"), (args.workdir, "workdir")):
        if flag:
            overrides.append(f"{key}={json.dumps(str(Path(flag).resolve()))}")
    cfg = load_config(CONFIGS["tiny"] if args.tiny else args.config, overrides)
    results = run(cfg, " ".join([Path(sys.executable).name, "-m", "benchmarks.influence_study",
                                 *(argv if argv is not None else sys.argv[1:])]))
    print(json.dumps(results["summary"], indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
