"""benchmarks/influence_study.py on the pipeline's real stages at toy size (configs/influence_study_tiny.toml).

Real probes on 80 documents say nothing about which student wins, so the outcomes are checked on PLANTED
labels, where the answer is known: the stages' probe labels are replaced by a function of each document's
proxy tokens (the token student must find it, the length floor must not) or by its length (the other way
round), with the fast labels the negation of the exact ones (every model must be judged on the EXACT
ones). The real run checks the protocol: no test document in any fit or early-stopping set, the fast
label budget k*N from the probe stage's measured cost ratio, every registered student fitted, saved,
reloaded and timed.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks.influence_study import run, study
from benchmarks.influence_study_config import CONFIGS, RUN_ID, StudentPlan, load_config, pipeline_settings
from benchmarks.influence_study_data import StudyData, prepare
from core import db, store
from core.config import is_static_embed_name
from models.proxy_lm import probe_inputs
from models.students import STUDENTS
from models.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def stages(tmp_path_factory, prefect_harness):
    """(config, the pipeline stages' data): ingest to stage-0 probes on the bundled sample, once."""
    workdir = tmp_path_factory.mktemp("influence-study")
    cfg = load_config(CONFIGS["tiny"], [f'workdir="{workdir}"', f'out="{workdir / "study.json"}"'])
    return cfg, prepare(pipeline_settings(cfg))


@pytest.fixture(scope="module")
def real(stages):
    cfg, data = stages
    return run(cfg, "pytest tests/test_influence_study.py", data=data)


def token_only(cfg):
    """The config with only the token student compared (what the planted tests need, and quick)."""
    return cfg.model_copy(update={"students": {"tokens": StudentPlan()}, "label_students": ["tokens"]})


def planted(data: StudyData, exact: np.ndarray) -> StudyData:
    """The stages' data with every exact probe replaced by `exact` (same documents) and every fast probe by
    its negation."""
    labels = data.labels
    has_exact, has_fast = np.isfinite(labels.exact), np.isfinite(labels.fast)
    return dataclasses.replace(data, labels=dataclasses.replace(
        labels, exact=np.where(has_exact, exact, np.nan), fast=np.where(has_fast, -exact, np.nan)))


def common_token_share(data: StudyData) -> np.ndarray:
    """Per probed document: the share of what its probe trains on that is the commonest token (linear in the
    token frequencies the token student reads, and present in every document, so 60 labels pin it down)."""
    with db.connect(data.settings.database, read_only=True) as con:
        texts = store.texts_of(con, RUN_ID, data.labels.doc_ids)
    tokenizer = load_tokenizer(data.corpus.tokenized.tokenizer_path)
    ids = probe_inputs(tokenizer, [texts[d] for d in data.labels.doc_ids], data.settings.proxy.seq_len)
    commonest = Counter(t for doc in ids for t in doc).most_common(1)[0][0]
    return np.array([np.mean([t == commonest for t in doc]) for doc in ids])


def test_test_documents_are_in_no_fit_or_early_stopping_set(stages, real):
    cfg, data = stages
    recorded = json.loads(Path(cfg.out).with_name("study_splits.json").read_text())
    documents = recorded["documents"]
    with db.connect(data.settings.database, read_only=True) as con:
        exact_probed = {p.doc_id for p in store.stage_probes(con, RUN_ID, 0) if p.exact_score is not None}
    assert len(recorded["repeats"]) == cfg.repeats == real["splits"]["repeats"]
    tests = []
    for split in recorded["repeats"]:
        test = {documents[i] for i in split["test"]}
        for part in ("fit", "val", "fast_fit", "fast_val"):
            assert test.isdisjoint(documents[i] for i in split[part]), part
        assert test <= exact_probed
        assert len(test) == round(data.settings.probe.heldout_fraction * len(exact_probed))
        tests.append(test)
    assert tests[0] != tests[1]  # repeats are different splits


def test_fast_label_budget_follows_the_measured_cost_ratio(stages, real):
    cfg, data = stages
    labels, probes = real["labels"], data.probes
    k = probes.seconds_per("exact") / probes.seconds_per("fast")
    available = labels["n_exact_train"] + real["splits"]["n_fast_only"]
    assert labels["k_measured"] == pytest.approx(k)
    assert labels["n_fast_train"] == min(round(k * labels["n_exact_train"]), available)
    assert abs(labels["compute_fast_s"] - labels["compute_exact_s"]) <= probes.seconds_per("fast") / 2 + 1e-12
    assert real["splits"]["n_fast_fit"] + real["splits"]["n_fast_val"] == labels["n_fast_train"]

    # a known cost ratio: 3 fast labels per exact one, whatever this machine measured
    costed = dataclasses.replace(data, probes=dataclasses.replace(probes, oracle_timings={
        "exact_seconds": 0.3, "exact_documents": 1, "fast_seconds": 0.1, "fast_documents": 1}))
    results, splits = study(token_only(cfg), costed, scoring=False)
    assert results["labels"]["n_fast_train"] == 3 * results["labels"]["n_exact_train"]
    for split in splits:
        assert len(split.fast_fit) + len(split.fast_val) == 3 * len(split.fit + split.val)
        assert set(split.fit + split.val) <= set(split.fast_fit + split.fast_val)


def test_planted_token_signal_is_found_by_the_token_student_on_exact_labels(stages):
    cfg, data = stages
    results, _ = study(token_only(cfg), planted(data, common_token_share(data)), scoring=False)
    tokens = results["students"]["tokens"]["points"][0]["test_spearman"]["mean"]
    assert tokens > 0.8
    assert tokens > results["baselines"]["length_only"]["mean"] + 0.3
    arms = results["labels"]["students"]["tokens"]
    assert arms["exact"]["mean"] > 0.8
    # the fast labels are the exact ones negated: a model fitted on them must score negative against EXACT
    assert arms["fast_same_n"]["mean"] < -0.8 and arms["fast_k_n"]["mean"] < -0.8
    assert results["labels"]["fast_probe_direct"]["mean"] == pytest.approx(-1.0)


def test_planted_length_signal_is_found_by_the_length_floor_not_the_token_student(stages):
    cfg, data = stages
    results, _ = study(token_only(cfg), planted(data, data.labels.n_tokens.copy()), scoring=False)
    assert results["baselines"]["length_only"]["mean"] == pytest.approx(1.0)
    assert results["students"]["tokens"]["points"][0]["test_spearman"]["mean"] < 0.9


def test_every_registered_student_is_fitted_reloaded_and_timed(stages, real):
    cfg, _ = stages
    assert set(real["students"]) == set(STUDENTS)
    for name, plan in cfg.students.items():
        entry = real["students"][name]
        assert len(entry["points"]) == max(1, np.prod([len(v) for v in plan.grid.values()], dtype=int))
        assert entry["points"][0]["test_spearman"]["n"] == (plan.repeats or cfg.repeats)
        speed = real["scoring"]["students"][name]
        assert speed["docs_per_s"] > 0 and speed["reload_max_abs_diff"] < 1e-6
    encoder = real["scoring"]["encoder"]
    if is_static_embed_name(encoder["model"]):  # a lookup and a mean: no matmuls to count
        assert encoder["flops_per_doc_at_max"] is None
    else:
        assert encoder["flops_per_doc_at_max"] > 1e8  # MiniLM-L6: ~1.4 GFLOP at 64 tokens
    written = json.loads(Path(cfg.out).read_text())
    assert {"device", "versions", "command", "date", "summary"} <= set(written)
    assert written["summary"]["pipeline_student"] == "head"  # the pipeline's CPU default (distill.features = "embedding")
