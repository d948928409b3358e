"""Smoke test of benchmarks/influence_study.py at toy scale: every reported key exists and is finite.

Outcomes (which model wins) are not checked: 16 documents say nothing about them; the study itself is run
at scale by hand (`python -m benchmarks.influence_study --n-exact 600`).
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.influence_study import run_influence_study
from tests.conftest import SAMPLE, SMALL_LM

KEYS = [
    "influence_model_spearman",
    "frozen_head_spearman",
    "finetuned_encoder_spearman",
    "labels_exact_spearman",
    "labels_fast_spearman",
    "fast_labels_per_exact_budget",
    "scoring_docs_per_s_head",
    "scoring_docs_per_s_text",
    "flops_per_doc_text",
]


@pytest.fixture(scope="module")
def result():
    return run_influence_study(
        16,
        corpus=SAMPLE / "corpus.jsonl.gz",
        reference=SAMPLE / "reference.jsonl.gz",
        n_repeats=1,
        proxy_docs=150,
        vocab_size=512,
        seq_len=64,
        proxy_overrides=SMALL_LM,
        proxy_steps=8,
        reference_rows=4,
        hidden_dims=(16,),
        ranking_weights=(0.0, 1.0),
        head_epochs=2,
        head_patience=2,
        finetune_epochs=1,
        finetune_batch_size=8,
        max_fast_docs=32,
        scoring_docs=16,
        scoring_batch_size=16,
        head_scoring_rows=2048,
        verbose=False,
    )


def test_summary_keys_are_finite(result):
    for key in KEYS:
        assert key in result, key
        assert math.isfinite(result[key]), (key, result[key])
    assert result["fast_labels_per_exact_budget"] >= 1.0
    assert result["scoring_docs_per_s_head"] > 0 and result["scoring_docs_per_s_text"] > 0
    assert result["flops_per_doc_text"] > 1e8  # MiniLM-L6 at 128 tokens is a few GFLOP
    assert -1.0 <= result["influence_model_spearman"] <= 1.0


def test_timings_and_configs_are_reported_and_json_ready(result):
    assert result["timings"]["total_s"] > 0
    assert result["best_head_config"]["hidden_dim"] == 16
    assert result["q1"]["finetuned"]["ran"] and result["q1"]["finetuned"]["config"]["finetune_encoder"]
    assert result["config"]["n_exact"] == 16
    json.loads(json.dumps(result))  # no tensors or numpy scalars left
