"""The MATES one-step oracle and its first-order estimate on a tiny trained proxy (CPU, seconds).

What must hold: probing never changes the model or the saved optimizer state (research.md: a by-reference
`step` tensor once took an estimate's Spearman from 0.99 to 0.32), repeated probes agree exactly, and in
float64 with a small probe lr the first-order estimate reproduces the exact oracle.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.oracles import ProbeConfig, exact_probe, exact_probes, fast_probes, reference_loss
from models.proxy_lm import build_proxy_lm, document_tensor, pack_sequences
from models.tokenizer import encode_documents, train_bpe_tokenizer
from models.trainer import TrainConfig, make_optimizer, train
from tests.conftest import SMALL_LM, sample_texts

SEQ_LEN = 64


@pytest.fixture(scope="module")
def setup():
    """A tiny proxy after 20 training steps (non-trivial Adam moments), its state, reference rows, 12 docs."""
    texts = sample_texts()
    tok = train_bpe_tokenizer(texts, vocab_size=512)
    ids = encode_documents(tok, texts)
    rows, _ = pack_sequences(ids[: len(ids) // 2], SEQ_LEN, eos_id=0)
    model = build_proxy_lm("tiny", vocab_size=512, seq_len=SEQ_LEN, seed=0, overrides=SMALL_LM)
    cfg = TrainConfig(
        steps=20,
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.95,
        grad_clip=1.0,
    )
    optimizer = make_optimizer(model, cfg)
    train(model, optimizer, rows[8:], cfg, progress=False)
    docs = [document_tensor(x, SEQ_LEN, eos_id=0) for x in ids[len(ids) // 2 :][:12]]
    return model, optimizer.state_dict(), rows[:8], docs


def probe_config(lr: float = 1e-3) -> ProbeConfig:
    return ProbeConfig(lr=lr, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0)


def snapshot_state(state: dict) -> dict:
    return copy.deepcopy(state)


def assert_states_equal(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            assert torch.equal(value, b["state"][k][name]), (k, name)  # `step` included


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_reference_loss_is_mean_token_loss_and_keeps_mode(setup):
    model, _, ref, _ = setup
    model.train()
    loss = reference_loss(model, ref, batch_size=5)  # uneven batches still give the token mean
    assert model.training
    with torch.no_grad():
        model.eval()
        logits = model(input_ids=ref).logits[:, :-1]
        expected = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), ref[:, 1:].reshape(-1)
        )
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert 2.0 < loss < 7.0


def test_exact_probe_restores_weights_and_never_touches_state(setup):
    model, state, ref, docs = setup
    before_w, before_state = weights(model), snapshot_state(state)
    cfg = probe_config()
    first = exact_probe(model, state, docs[0], ref, cfg)
    exact_probe(model, state, docs[1], ref, cfg)  # a different probe in between must not leak into the next
    again = exact_probe(model, state, docs[0], ref, cfg)
    assert first == again  # bit-identical score, loss_before and loss_after
    assert first[0] == pytest.approx(first[1] - first[2]) and first[0] != 0.0
    assert all(torch.equal(a, b) for a, b in zip(before_w, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert_states_equal(state, before_state)


def test_exact_probes_batch_matches_single_probes(setup):
    model, state, ref, docs = setup
    cfg = probe_config()
    result = exact_probes(model, state, docs[:3], ref, cfg, progress=False)
    single = [exact_probe(model, state, d, ref, cfg)[0] for d in docs[:3]]
    np.testing.assert_array_equal(result.scores, single)
    assert np.all(result.loss_before == result.loss_before[0])
    np.testing.assert_allclose(result.scores, result.loss_before - result.loss_after)


def test_fast_probes_leave_model_and_state_untouched(setup):
    model, state, ref, docs = setup
    before_w, before_state = weights(model), snapshot_state(state)
    est = fast_probes(model, state, docs[:3], ref, probe_config(), progress=False)
    assert est.shape == (3,) and np.all(np.isfinite(est))
    np.testing.assert_array_equal(
        est, fast_probes(model, state, docs[:3], ref, probe_config(), progress=False)
    )
    assert all(torch.equal(a, b) for a, b in zip(before_w, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert_states_equal(state, before_state)


@pytest.mark.parametrize("fresh", [False, True], ids=["trained-state", "empty-state"])
def test_fast_probes_match_exact_oracle_in_float64(setup, fresh):
    """In float64 with lr 1e-6 the second-order term is <1e-3 of the first: the estimate must track the
    oracle doc by doc (and in absolute value, which catches a wrong bias correction or clip)."""
    model, state, ref, docs = setup
    model64 = copy.deepcopy(model).double()
    state = {} if fresh else state
    cfg = probe_config(lr=1e-6)
    exact = exact_probes(model64, state, docs, ref, cfg, progress=False).scores
    fast = fast_probes(model64, state, docs, ref, cfg, progress=False)
    assert np.corrcoef(exact, fast)[0, 1] > 0.99
    np.testing.assert_allclose(fast, exact, rtol=2e-3)
