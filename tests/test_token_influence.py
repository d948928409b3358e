"""The lexical influence model (models/token_influence.py): ridge on the proxy's token frequencies."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from models.ranking import spearman
from models.token_influence import (
    TOKENIZER_FILE,
    fit_token_influence,
    is_token_model,
    load_token_model,
    log_frequency_ratio,
    predict_tokens,
    save_token_model,
    token_frequencies,
)

VOCAB = 300


def planted(n: int, seed: int = 0, noise: float = 0.01):
    """Documents whose label is the mean of a hidden per-token value, plus noise."""
    rng = np.random.default_rng(seed)
    value = rng.normal(size=VOCAB)
    docs = [rng.integers(0, VOCAB, size=int(rng.integers(5, 60))).tolist() for _ in range(n)]
    return docs, np.array([value[d].mean() for d in docs]) + rng.normal(scale=noise, size=n)


def test_frequencies_are_per_document_shares():
    X = token_frequencies([[1, 1, 2], [0]], 4).toarray()
    np.testing.assert_allclose(X, [[0, 2 / 3, 1 / 3, 0], [1, 0, 0, 0]])


def test_recovers_planted_token_values_on_unseen_documents():
    docs, y = planted(1400)
    model, fit = fit_token_influence(docs[:900], y[:900], docs[900:1100], y[900:1100], VOCAB, 64)
    assert fit.val_spearman > 0.9
    assert spearman(predict_tokens(model, docs[1100:]), y[1100:]) > 0.9
    # Scores come back in the labels' own units, not z units.
    assert abs(np.mean(predict_tokens(model, docs[1100:])) - np.mean(y[1100:])) < 0.1 * np.std(y)


def test_pure_noise_labels_do_not_rank_unseen_documents():
    docs, _ = planted(600)
    y = np.random.default_rng(5).normal(size=600)
    model, _ = fit_token_influence(docs[:400], y[:400], docs[400:500], y[400:500], VOCAB, 64)
    assert abs(spearman(predict_tokens(model, docs[500:]), y[500:])) < 0.3


def test_save_and_load_give_the_same_scores_with_the_tokenizer_alongside(tmp_path):
    docs, y = planted(300)
    model, _ = fit_token_influence(docs[:200], y[:200], docs[200:250], y[200:250], VOCAB, 64)
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tok.json"))
    directory = save_token_model(model, tmp_path / "model", tmp_path / "tok.json")
    assert is_token_model(directory) and (directory / TOKENIZER_FILE).exists()
    again = load_token_model(directory)
    np.testing.assert_array_equal(predict_tokens(again, docs[250:]), predict_tokens(model, docs[250:]))
    assert again.alpha == model.alpha and again.seq_len == 64


def test_bad_input_is_refused_with_a_reason():
    docs, y = planted(50)
    with pytest.raises(ValueError, match="one label"):
        fit_token_influence(docs, y[:-1], [], np.zeros(0), VOCAB, 64)
    with pytest.raises(ValueError, match="finite"):
        fit_token_influence(docs, np.full(50, np.nan), [], np.zeros(0), VOCAB, 64)
    with pytest.raises(ValueError, match="token ids"):
        token_frequencies([[VOCAB]], VOCAB)
    with pytest.raises(ValueError, match="at least one token"):
        token_frequencies([[]], VOCAB)


def test_frequency_ratio_favours_the_targets_tokens():
    ratio = log_frequency_ratio([[1, 1, 2]], [[0, 0, 1, 3]], 4)
    assert ratio[1] > 0 and ratio[2] > 0 and ratio[0] < 0 and ratio[3] < 0
    assert ratio[2] > ratio[3]  # seen only in the target vs seen only in the raw pool


def test_prior_moves_scores_toward_the_reference_by_the_weight_asked():
    docs, _ = planted(400)
    y = np.random.default_rng(3).normal(size=400)  # probes with no signal: only the prior can rank
    prior = np.zeros(VOCAB)
    prior[:30] = 1.0  # tokens the "reference" over-represents
    share = token_frequencies(docs, VOCAB)[:, :30].sum(axis=1).A.ravel()
    plain, _ = fit_token_influence(docs[:300], y[:300], docs[300:], y[300:], VOCAB, 64)
    strong, _ = fit_token_influence(docs[:300], y[:300], docs[300:], y[300:], VOCAB, 64, prior=prior, prior_weight=3.0)
    assert spearman(predict_tokens(strong, docs), share) > 0.8 > abs(spearman(predict_tokens(plain, docs), share))
    assert strong.prior_weight == 3.0 and plain.prior_weight == 0.0
