"""CoLoR-Filter's conditional loss reduction and the probe-state variants, on a tiny real proxy (seconds).

What must hold: length-batched, padded document losses equal each document's own loss; the fine-tune keeps
the step with the best validation loss and never touches the prior; documents like the reference score
higher than unrelated ones; the cross-fit halves keep groups whole; the "checkpoint" probe variant is the
pipeline's shifted fast probe, and the altered states alter what they say and nothing else.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.conditional_loss import (
    FinetuneConfig,
    cross_fit_conditional_losses,
    document_drops,
    document_losses,
    finetune_on_reference,
    split_halves,
)
from models.oracles import ProbeConfig, fast_probes
from models.probe_variants import probe_variants, state_variant
from models.proxy_lm import build_proxy_lm, document_tensor, lm_loss, pack_sequences
from models.tokenizer import encode_documents, train_bpe_tokenizer
from models.trainer import TrainConfig, make_optimizer, train
from tests.conftest import SMALL_LM, sample_texts

SEQ_LEN = 48
VOCAB = 384


@pytest.fixture(scope="module")
def setup():
    """A proxy trained 12 steps on the sample's first 150 texts, its optimizer state, and token ids."""
    texts = sample_texts(300)
    tok = train_bpe_tokenizer(texts, vocab_size=VOCAB)
    ids = [d[:SEQ_LEN] for d in encode_documents(tok, texts)]
    rows, _ = pack_sequences(ids[:150], SEQ_LEN, eos_id=0)
    model = build_proxy_lm("tiny", vocab_size=VOCAB, seq_len=SEQ_LEN, seed=0, overrides=SMALL_LM)
    cfg = TrainConfig(steps=12, batch_size=4, lr=3e-3, warmup_steps=2, weight_decay=0.1, beta1=0.9, beta2=0.95,
                      grad_clip=1.0)
    optimizer = make_optimizer(model, cfg)
    train(model, optimizer, rows, cfg, progress=False)
    return model.eval(), optimizer.state_dict(), [d for d in ids[150:] if len(d) >= 2]


def test_batched_document_losses_equal_each_documents_own(setup):
    model, _, docs = setup
    docs = docs[:40]
    out = document_losses(model, docs, max_batch_tokens=200)  # several batches, padded rows in each
    with torch.no_grad():
        own = [float(lm_loss(model, torch.tensor([d]), reduction="sum")) for d in docs]
    np.testing.assert_allclose(out.sums, own, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out.counts, [len(d) - 1 for d in docs])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        document_losses(model, [[5]])


def test_document_drops_give_both_losses_and_the_per_token_spread_of_their_difference(setup):
    model, _, docs = setup
    docs = docs[:30] + [docs[0][:2]]  # a document with one predicted token: no spread
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    other.train()
    out = document_drops(model, other, docs, max_batch_tokens=200)
    np.testing.assert_allclose(out.prior.sums, document_losses(model, docs).sums, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.conditional.sums, document_losses(other, docs).sums, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        for i in (0, 7, 29):
            ids = torch.tensor([docs[i]])
            other.eval()
            drop = (lm_loss(model, ids, reduction="none") - lm_loss(other, ids, reduction="none")).flatten().double()
            assert out.drop_variance[i] == pytest.approx(float(drop.var(unbiased=True)), rel=1e-4, abs=1e-9)
    other.train()
    assert document_drops(model, other, docs[:3]).drop_variance.shape == (3,) and other.training
    assert np.isnan(out.drop_variance[-1]) and np.isfinite(out.drop_variance[:-1]).all()
    assert model.training is False  # each model's mode is restored


def test_reference_like_documents_gain_most(setup):
    """A 'reference' of one repeated phrase: documents with it must gain more than documents without."""
    model, state, docs = setup
    rng = np.random.default_rng(0)
    phrase = [int(t) for t in rng.integers(1, VOCAB, size=8)]
    ref_rows = torch.tensor([phrase * (SEQ_LEN // 8)] * 24)
    halves = (ref_rows[:12], ref_rows[12:])
    like = [docs[i][:16] + phrase * 2 for i in range(10)]
    unlike = [docs[i][:16] + docs[i + 20][:16] for i in range(10)]
    prior_before = copy.deepcopy(model.state_dict())
    state_before = copy.deepcopy(state)
    cfg = FinetuneConfig(max_steps=24, eval_every=8, batch_size=4, lr=3e-3)
    losses = cross_fit_conditional_losses(model, state, halves, like + unlike, cfg, folds=2)
    scores = losses.reduction()
    assert scores[:10].min() > scores[10:].max()
    assert len(losses.conditional) == 2 and all(t.best_step > 0 for t in losses.traces)
    np.testing.assert_allclose(losses.reduction(folds=[0]), (losses.prior.sums - losses.conditional[0].sums)
                               / losses.prior.counts)
    shrunk = losses.reduction(shrink_tokens=32)
    np.testing.assert_allclose(shrunk * (losses.prior.counts + 32), scores * losses.prior.counts)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in prior_before.items())
    assert all(torch.equal(v, state["state"][i][n]) for i, e in state_before["state"].items() for n, v in e.items())


def test_finetune_keeps_the_best_validation_step(setup):
    model, state, docs = setup
    fit, _ = pack_sequences(docs[:60], SEQ_LEN, eos_id=0)
    val, _ = pack_sequences(docs[60:90], SEQ_LEN, eos_id=0)
    tuned, trace = finetune_on_reference(model, state, fit, val, FinetuneConfig(max_steps=30, eval_every=10,
                                                                                batch_size=4, lr=5e-3))
    assert trace.steps == [0, 10, 20, 30]
    best = trace.val_losses[trace.steps.index(trace.best_step)]
    assert best == min(trace.val_losses)
    from models.oracles import reference_loss
    assert reference_loss(tuned, val) == pytest.approx(best, rel=1e-9)


def test_split_halves_keeps_groups_whole():
    groups = [f"doc{i // 3}" for i in range(30)]
    mask = split_halves(groups, seed=1)
    for g in set(groups):
        assert len({bool(m) for m, h in zip(mask, groups) if h == g}) == 1
    assert mask.sum() == 15
    assert not np.array_equal(mask, split_halves(groups, seed=2))


def test_probe_variants(setup):
    model, state, docs = setup
    cfg = ProbeConfig(lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0)
    ref, _ = pack_sequences(docs[100:140], SEQ_LEN, eos_id=0)
    probe_docs = [document_tensor(d, SEQ_LEN, 0) for d in docs[:10]]
    before = copy.deepcopy(state)
    states = {name: state_variant(state, name, other=before) for name in ("checkpoint", "fresh", "mean_v", "zero_m")}
    states["other_v"] = state_variant(state, "other_v", other=state_variant(state, "mean_v"))
    out = probe_variants(model, states, probe_docs, ref[:8], cfg)
    shifted = fast_probes(model, state, probe_docs, ref[:8], cfg, progress=False, method="shifted")
    # A score is a difference of reference losses near 6 held in float32, whose spacing there is 4.8e-7: the
    # two paths may round the shared loss one step apart (seen on one machine's CPU, 6.5e-7 on every score).
    np.testing.assert_allclose(out["checkpoint"], shifted, rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(out["other_v"], out["mean_v"], rtol=1e-6, atol=2e-6)
    for name in ("fresh", "mean_v", "zero_m"):
        assert not np.allclose(out[name], out["checkpoint"]), name
    assert np.all(np.abs(out["gradient_cosine"]) <= 1 + 1e-9)
    assert np.all(np.sign(out["gradient_cosine"]) == np.sign(out["gradient_dot"]))
    mean_v = states["mean_v"]["state"][0]["exp_avg_sq"]
    assert torch.all(mean_v == mean_v.flatten()[0])
    assert all(torch.equal(v, state["state"][i][n]) for i, e in before["state"].items() for n, v in e.items())
    with pytest.raises(ValueError, match="unknown state variant"):
        state_variant(state, "nope")


def test_two_folds_are_the_cross_fit_average_and_round_trip_through_a_saved_folder(setup, tmp_path):
    """The stage oracle's two folds measure exactly the cross-fit's fold-averaged reduction; saved and loaded,
    both folds come back and measure the same; a one-fold save over it leaves no stale second fold."""
    from models.conditional_loss import load_conditional, save_conditional
    from models.stage_oracles import ConditionalOracle

    model, state, docs = setup
    rows, _ = pack_sequences(docs[30:], SEQ_LEN, eos_id=0)  # a "reference" of held-out sample text
    halves = (rows[:len(rows) // 2], rows[len(rows) // 2:])
    cfg = FinetuneConfig(max_steps=12, eval_every=4, batch_size=4, lr=3e-3)
    docs = docs[:25]
    oracle = ConditionalOracle(model, state, halves[0], halves[1], cfg, folds=2)
    assert len(oracle.conditionals) == 2 and oracle.finetune is oracle.traces[0]
    assert all(t.best_step > 0 for t in oracle.traces)  # both fine-tunes learned something to average
    measured = oracle.measure(docs)
    expected = cross_fit_conditional_losses(model, state, halves, docs, cfg, folds=2)
    np.testing.assert_allclose(measured.values, expected.reduction(), rtol=1e-5, atol=1e-5)
    one_fold = ConditionalOracle(model, state, halves[0], halves[1], cfg).measure(docs).values
    np.testing.assert_allclose(one_fold, expected.reduction(folds=[0]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(one_fold, measured.values)

    folder = save_conditional(tmp_path / "conditional", oracle.conditionals, oracle.traces)
    models, traces = load_conditional(folder, model)
    assert [t.best_step for t in traces] == [t.best_step for t in oracle.traces]
    restored = ConditionalOracle.restored(model, models, traces).measure(docs)
    np.testing.assert_allclose(restored.values, measured.values, rtol=1e-6, atol=1e-7)
    save_conditional(folder, oracle.conditionals[0], oracle.traces[0])
    assert len(load_conditional(folder, model)[0]) == 1 and not (folder / "fold-1").exists()
    with pytest.raises(ValueError, match="1 or 2 folds"):
        ConditionalOracle(model, state, halves[0], halves[1], cfg, folds=3)
