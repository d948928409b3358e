"""The scale benchmark end to end at toy size (schema and counts, no timings), and the numpy LSH index behind it.

The lean band index (`tasks/dedup.py`) is what lets ingest hold a million documents in ~0.6 KB each;
these tests pin it to datasketch's MinHashLSH: the same candidates for every query.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from datasketch import MinHashLSH

from benchmarks import scale
from tasks.ingest.dedup import BandIndex, NearDedup, lsh_bands
from tests.conftest import sample_texts

STAGE_FIELDS = {"wall_s", "peak_rss_mib", "peak_tree_rss_mib", "docs_per_s", "input_documents", "runs"}
SAMPLE = scale.ROOT / "data" / "sample"


def test_scale_benchmark_runs_the_whole_flow_and_writes_its_json_and_plot(tmp_path: Path) -> None:
    """A real `influmix run` at toy size: every stage is timed from the run's own Prefect database and the
    counts come from its MLflow run (a second run's cache hits: tests/test_embed_cache.py)."""
    out = tmp_path / "results" / "scale.json"
    scale.main(["--sizes", "300", "--budget-per-doc", "20", "--config", str(scale.ROOT / "configs/tiny.toml"),
                "--out", str(out), "--workdir", str(tmp_path / "work"), "--source", str(SAMPLE / "corpus.jsonl.gz"),
                "--reference", str(SAMPLE / "reference.jsonl.gz")])
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert {"cpu", "cores", "ram_gib"} <= set(result["device"])
    assert {"python", "duckdb", "torch", "model2vec", "prefect", "mlflow"} <= set(result["versions"])
    assert "benchmarks.scale" in result["command"] and result["sizes"] == [300]
    size = result["results"]["300"]
    first = size["first"]
    assert set(scale.FLOW_STAGES) == set(first["stages"])  # every task of the flow, one model-aware stage
    for figures in first["stages"].values():
        assert STAGE_FIELDS <= set(figures) and figures["peak_tree_rss_mib"] > 0
    assert first["stages"]["pretrain"]["per_stage_s"] and len(first["stages"]["pretrain"]["per_stage_s"]) == 1
    assert first["end_to_end_seconds"] >= sum(f["wall_s"] for f in first["stages"].values())
    assert first["peak_tree_rss_mib"] >= first["peak_rss_mib"] > 0
    counts = first["counts"]
    assert counts["records_read"] == 300
    assert counts["documents"] + counts["exact_duplicates"] + counts["near_duplicates"] + counts["quarantined"] == 300
    assert counts["embed_new"] == counts["filter.kept"] == first["stages"]["embed"]["input_documents"]
    assert 0 < counts["final_selected_tokens"] <= counts["final_token_budget"] == 300 * 20
    assert "second" not in size
    assert result["goals"]["million_seconds"]["holds"] is None  # not measured at this size: no verdict
    assert not (tmp_path / "work" / "300").exists()  # removed unless --keep


def _texts() -> list[str]:
    """Sample texts plus lightly edited copies, so that buckets hold several documents."""
    rng = random.Random(0)
    texts = sample_texts(300)
    for text in texts[:100]:
        words = text.split()
        if len(words) > 20:
            words[rng.randrange(len(words))] = "edited"
        texts.append(" ".join(words))
    return texts


def test_band_index_finds_the_same_candidates_as_datasketch() -> None:
    near = NearDedup(0.8, 64, 5)
    signatures = near.signatures_for(_texts())
    lsh = MinHashLSH(num_perm=64, params=lsh_bands(0.8, 64))
    index = BandIndex(*lsh_bands(0.8, 64))
    index.keys = index.keys[:16]  # start tiny, so that the table grows (and re-places its keys) many times
    index.heads = index.heads[:16]
    for i, minhash in enumerate(signatures):
        keys = index.band_keys(minhash.hashvalues)
        assert index.query(keys) == sorted(lsh.query(minhash))
        assert index.insert(keys) == i
        lsh.insert(i, minhash)
    assert index.used <= len(index.keys) * 0.7
    shared = sum(len(lsh.query(m)) > 1 for m in signatures)
    assert shared >= 100  # the edited copies really share buckets with their originals


def test_near_dedup_drops_edited_copies_and_keeps_the_rest() -> None:
    texts = _texts()
    near = NearDedup(0.8, 64, 5)
    hits = [near.check_and_add(f"d{i}", m) for i, m in enumerate(near.signatures_for(texts))]
    copies = [h for h in hits[300:] if h is not None]
    assert len(copies) >= 90 and all(0.8 <= sim <= 1.0 for _, sim in copies)
    assert len(near.ids) == sum(h is None for h in hits) and near.nbytes > 0
