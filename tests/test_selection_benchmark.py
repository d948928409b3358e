"""The selection benchmark end to end at toy size: it runs, writes its schema, and resumes (no outcome checked)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from benchmarks import selection, selection_coverage, selection_goal, selection_merge
from benchmarks.selection_eval import tokens_to_reach
from benchmarks.selection_methods import MODEL_AWARE

METHODS = ["random", "dsir", "topk_influence", "bandit_static", "domain_oracle", "influmix"]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.e2e
def test_tiny_selection_benchmark_writes_every_method_and_resumes(tmp_path: Path, prefect_harness) -> None:
    out = tmp_path / "results" / "selection.json"
    args = ["--tiny", "--out", str(out), "--workdir", str(tmp_path / "work")]
    selection.main(args)
    result = json.loads(out.read_text())

    assert {"device", "versions", "config", "command", "methods", "pool", "mlflow", "artifacts"} <= set(result)
    assert "benchmarks.selection" in result["command"] and result["versions"]["data-selection"] != "not installed"
    assert result["dsir_implementation"].startswith("data-selection")
    assert list(result["methods"]) == list(METHODS)
    budget, stages = result["config"]["token_budget"], result["config"]["stages"]
    for name, method in result["methods"].items():
        assert method["seeds_done"] == [0], name
        for key in ("final_heldout_reference_loss", "cloze_accuracy"):
            assert _finite(method[key]["mean"]) and _finite(method[key]["std"]), (name, key)
        assert 0 <= method["cloze_accuracy"]["mean"] <= 1
        ratio = method["tokens_to_random_final_loss_ratio"]
        assert ratio["mean"] is None or _finite(ratio["mean"]), name
        curve = method["loss_vs_tokens"]
        assert len(curve["tokens"]) == len(curve["mean"]) >= 2 and all(map(_finite, curve["mean"]))
        assert set(method["reference_domain_loss"]) == {"news", "wiki"}
        assert all(_finite(v["mean"]) for v in method["pool_domain_loss"].values())
        assert math.isclose(sum(method["domain_token_shares"].values()), 1.0)
        assert all(_finite(v) for k, v in method["selection_overhead"].items() if k.endswith("fraction"))
        run = method["seeds"]["0"]
        assert len(run["selection"]["tokens_per_stage"]) == stages
        assert all(0 < t <= budget for t in run["selection"]["tokens_per_stage"]), name
        quality = method["mixture_quality"]  # the share of junk the mixture kept, measured on its texts
        assert quality["records"] == sum(run["selection"]["documents_per_stage"])
        assert all(0 <= quality[k] <= 1 for k in ("under_100_chars", "non_english")), name
    assert result["methods"]["random"]["tokens_to_random_final_loss_ratio"]["mean"] <= 1.0
    assert set(result["methods"]["domain_oracle"]["domain_token_shares"]) <= {"news", "wiki"}
    assert result["methods"]["random"]["selection_overhead"]["flops_fraction"] == 0
    assert result["methods"]["influmix"]["selection_overhead"]["flops_fraction"] > 0

    png, table = out.with_name("selection_loss_vs_tokens.png"), out.with_suffix(".md")
    assert png.stat().st_size > 0
    assert all(f"| {name} |" in table.read_text() for name in METHODS)
    assert set(result["mlflow"]["runs"]) == set(METHODS)
    assert set(result["goal"]) == set(METHODS) - {"random", "dsir", "domain_oracle"}
    assert "The goal, per method" in table.read_text() and result["goal"]["influmix"]["seeds"] == [0]
    store = sqlite3.connect(str(tmp_path / "work" / "mlflow.db"))
    names = {r[0] for r in store.execute("SELECT name FROM runs WHERE lifecycle_stage = 'active'")}
    assert names == set(METHODS)

    trained = {name: result["methods"][name]["seeds"]["0"]["train_seconds"] for name in METHODS}
    again = selection.main(args)  # finished (method, seed) pairs are kept, not retrained
    assert {name: again["methods"][name]["seeds"]["0"]["train_seconds"] for name in METHODS} == trained

    # Another influence model: only the methods that use it are selected and trained again.
    head = selection.main([*args, "--set", 'pipeline.distill.features="tokens"'])
    retrained = {n for n in METHODS if head["methods"][n]["seeds"]["0"]["train_seconds"] != trained[n]}
    assert retrained == {n for n in METHODS if n in MODEL_AWARE} == {"topk_influence", "bandit_static", "influmix"}
    assert head["config"]["pipeline"]["distill"]["features"] == "tokens"

    # Work folders of one configuration merge seed by seed; a method from another configuration is refused.
    first, second, merged_out = tmp_path / "first.json", tmp_path / "second.json", tmp_path / "merged.json"
    first.write_text(json.dumps(result))
    moved = json.loads(json.dumps(result))
    for entry in moved["methods"].values():
        entry["comparable"]["workdir"] = "/another/work/folder"
        entry["seeds"] = {"1": entry["seeds"]["0"]}
    second.write_text(json.dumps(moved))
    merged = selection_merge.main([str(merged_out), str(first), f"{second}:random,influmix"])
    assert merged["methods"]["influmix"]["seeds_done"] == [0, 1] and merged["methods"]["dsir"]["seeds_done"] == [0]
    assert "| influmix |" in merged_out.with_suffix(".md").read_text() and len(merged["merged_from"]) == 2
    again = selection_merge.merge([(merged_out, ["influmix"])])  # a merged file keeps its sources' commands
    assert [s["methods"] for s in again["merged_from"]] == [["influmix"], ["influmix"]]
    with pytest.raises(SystemExit, match="distill.features"):
        selection_merge.merge([(first, ["influmix"]), (out, ["influmix"])])

    # The guard's price: influmix's mixtures with half of each stage from the pool as it is, against random.
    guarded_out = tmp_path / "coverage.json"
    coverage_args = ["--tiny", "--workdir", str(tmp_path / "work"), "--baseline", str(out), "--out", str(guarded_out)]
    with pytest.raises(SystemExit, match="no influmix mixture of this configuration"):  # the cache holds the tokens run's
        selection_coverage.main(coverage_args)
    guarded = selection_coverage.main([*coverage_args, "--shares", "0,0.5", "--set", 'pipeline.distill.features="tokens"'])
    assert set(guarded["runs"]["influmix"]["0"]) == {"0.00", "0.50"}
    assert guarded["summary"]["influmix"]["0.50"]["seeds"] == 1
    assert set(guarded["runs"]["influmix"]["0"]["0.50"]["domain_excess"]) == set(result["methods"]["random"]["pool_domain_loss"])
    assert guarded_out.with_suffix(".png").stat().st_size > 0 and "| 0.50 |" in guarded_out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="another configuration"):
        selection_coverage.main([*coverage_args, "--set", "eval.lr=0.123"])
    # The product's arm floors on the same mixtures: their own rows, beside the uniform share's.
    floors = selection_coverage.main([*coverage_args, "--guard", "arms", "--shares", "0.5",
                                      "--set", 'pipeline.distill.features="tokens"'])
    assert set(floors["runs"]) == {"influmix", "influmix+arm_floors"} and set(floors["runs"]["influmix+arm_floors"]["0"]) == {"0.50"}
    assert floors["runs"]["influmix"]["0"]["0.50"] == guarded["runs"]["influmix"]["0"]["0.50"]  # kept, not rerun


def test_guarded_stages_keep_the_head_of_each_mixture_and_fill_from_unselected_documents() -> None:
    stages = [["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"]]
    tokens = {d: 10 for d in [*stages[0], *stages[1], "u1", "u2", "u3", "u4", "u5"]}
    uniform = ["b2", "u1", "a4", "u2", "u3", "u4", "u5"]
    assert selection_coverage.guarded_stages(stages, tokens, 40, 0.0, uniform) == stages
    assert selection_coverage.guarded_stages(stages, tokens, 40, 0.5, uniform) == [["a1", "a2", "u1", "u2"],
                                                                                   ["b1", "b2", "u3", "u4"]]
    # A pool too small to fill the share leaves the stage short rather than repeating a document.
    assert selection_coverage.guarded_stages(stages, tokens, 40, 0.75, uniform)[1] == ["b1", "u4", "u5"]


def test_tokens_to_reach_interpolates_between_evaluations() -> None:
    curve = [{"tokens": 100, "heldout_reference_loss": 5.0}, {"tokens": 200, "heldout_reference_loss": 4.0},
             {"tokens": 300, "heldout_reference_loss": 3.0}]
    assert tokens_to_reach(curve, 3.5) == pytest.approx(250.0)
    assert tokens_to_reach(curve, 6.0) == 100.0
    assert tokens_to_reach(curve, 2.0) is None


def test_reference_split_keeps_documents_whole_and_both_domains_on_both_sides() -> None:
    from benchmarks.selection_data import passages, split_reference

    records = [{"id": f"{d}:{i}#{k}", "text": f"{d} document {i} part {k} " * 30, "domain": d}
               for d in ("wiki", "news") for i in range(10) for k in range(3)]
    visible, heldout = split_reference(records, 0.5, seed=0)
    assert len(visible) + len(heldout) == len(records)
    base = lambda rs: {r["id"].split("#")[0] for r in rs}
    assert not base(visible) & base(heldout)
    assert {r["domain"] for r in visible} == {r["domain"] for r in heldout} == {"wiki", "news"}
    assert split_reference(records, 0.5, seed=0) == (visible, heldout)
    pieces = passages(visible, words=40, seed=0)
    assert [p["id"] for p in pieces] == sorted(p["id"] for p in pieces)
    assert sum(len(p["text"].split()) for p in pieces) == sum(len(r["text"].split()) for r in visible)


def _seed_run(loss: float, domains: dict[str, float], curve: list[tuple[int, float]]) -> dict:
    return {"final": {"heldout_reference_loss": loss, "pool_domain_loss": domains}, "tokens": curve[-1][0],
            "curve": [{"tokens": t, "heldout_reference_loss": v} for t, v in curve]}


def test_goal_card_checks_every_part_per_seed_and_pairs_seeds() -> None:
    """Seeds that move every method together: the unpaired gap misses two sigmas, the paired one is clear;
    a method at 0.30x of random's tokens on every seed meets the token goal; one domain at +0.6 fails the guard."""
    shift = {"0": 0.0, "1": 0.2, "2": -0.2}
    random = {s: _seed_run(7.0 + d, {"a": 7.0, "b": 7.0}, [(0, 9.0), (100, 7.0 + d)]) for s, d in shift.items()}
    dsir = {s: _seed_run(6.5 + d, {"a": 7.2, "b": 7.9}, [(0, 9.0), (100, 6.5 + d)]) for s, d in shift.items()}
    mix = {s: _seed_run(6.9 + d, {"a": 7.0, "b": 7.0}, [(0, 9.0), (100, 6.9 + d)]) for s, d in shift.items()}
    ours = {s: _seed_run(6.4 + d + 0.001 * int(s), {"a": 7.1, "b": 7.6 if s == "1" else 7.4},
                         [(0, 9.0), (10, 8.0), (30, 6.9 + d), (100, 6.4 + d)]) for s, d in shift.items()}
    results = {"methods": {"random": {"seeds": random}, "dsir": {"seeds": dsir}, "domain_oracle": {"seeds": mix},
                           "influmix": {"seeds": ours}}}
    card = selection_goal.goal_cards(results)["influmix"]
    vs_dsir = card["loss"]["dsir"]
    assert abs(vs_dsir["gap"] - 0.099) < 1e-9 and not vs_dsir["met"]  # seeds spread 0.2: under two sigmas
    assert vs_dsir["every_seed_ahead"] and vs_dsir["paired_sigmas"] > 50 and vs_dsir["paired_seeds"] == [0, 1, 2]
    assert card["tokens"]["met"] and all(r < 0.35 for r in card["tokens"]["per_seed"])
    assert not card["guard"]["met"] and card["guard"]["worst"]["1"][0] == "b"
    assert abs(card["guard"]["worst"]["1"][1] - 0.6) < 1e-9 and card["guard"]["domains_over"] == {"0": 0, "1": 1, "2": 0}
    assert not card["met"]
    assert "| influmix |" in selection_goal.card_table({"influmix": card})
    del results["methods"]["dsir"]
    assert selection_goal.goal_cards(results) == {}  # no card without both baselines
