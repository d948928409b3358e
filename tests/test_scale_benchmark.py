"""The scale benchmark end to end at toy size (schema only, no timings), and the numpy LSH index behind it.

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

STAGE_FIELDS = {"wall_s", "process_wall_s", "cpu_s", "peak_rss_mib", "docs_per_s", "input_documents", "counts"}


def test_scale_benchmark_writes_its_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "results" / "scale.json"
    scale.main(["--sizes", "300", "--k", "4", "--budget-per-doc", "20", "--out", str(out),
                "--workdir", str(tmp_path / "work"), "--source", str(scale.ROOT / "data/sample/corpus.jsonl.gz")])
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert {"cpu", "cores", "ram_gib"} <= set(result["device"])
    assert {"python", "duckdb", "datasketch", "scikit-learn", "numpy"} <= set(result["versions"])
    assert "benchmarks.scale" in result["command"] and result["sizes"] == [300]
    assert {"features", "token_counts", "scores"} <= set(result["stand_ins"])
    run = result["results"]["300"]
    assert set(run["stages"]) == {"imports", "generate", "ingest", "features", "cluster", "select"}
    for figures in run["stages"].values():
        assert STAGE_FIELDS <= set(figures) and figures["peak_rss_mib"] > 0
    ingest = run["stages"]["ingest"]["counts"]
    assert ingest["records_read"] == 300
    assert ingest["documents"] + ingest["exact_duplicates"] + ingest["near_duplicates"] + ingest["quarantined"] == 300
    assert run["stages"]["features"]["counts"]["documents"] == ingest["documents"]
    assert run["stages"]["cluster"]["counts"]["clusters"] == 4
    select = run["stages"]["select"]["counts"]
    assert 0 < select["selected_tokens"] <= select["token_budget"] == 300 * 20
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
