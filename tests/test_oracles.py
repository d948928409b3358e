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

from models.oracles import (
    ProbeConfig,
    exact_probe,
    exact_probes,
    exact_probes_batched,
    fast_probes,
    reference_loss,
)
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


def assert_untouched(model: torch.nn.Module, before_w: list[torch.Tensor], state: dict, before_state: dict) -> None:
    """A probe must leave the weights bit-identical, no grads behind, and the optimizer state as it was."""
    assert all(torch.equal(a, b) for a, b in zip(before_w, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert_states_equal(state, before_state)


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
    assert_untouched(model, before_w, state, before_state)


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
    assert_untouched(model, before_w, state, before_state)


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


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)], ids=["float64", "float32"])
def test_batched_exact_probes_match_sequential(setup, dtype, rtol):
    """The vmapped exact probe re-derives clip + AdamW functionally: it must reproduce the real step."""
    model, state, ref, docs = setup
    model = copy.deepcopy(model).to(dtype)
    before_w, before_state = weights(model), snapshot_state(state)
    cfg = probe_config()
    seq = exact_probes(model, state, docs, ref, cfg, progress=False, batch=0)
    bat = exact_probes_batched(model, state, docs, ref, cfg, batch=5)  # uneven chunks, mixed lengths
    np.testing.assert_allclose(bat.loss_after, seq.loss_after, rtol=rtol / 100)
    np.testing.assert_allclose(bat.scores, seq.scores, rtol=0, atol=rtol * np.abs(seq.scores).max())
    assert_untouched(model, before_w, state, before_state)


def test_exact_probes_on_cpu_default_to_sequential(setup):
    model, state, ref, docs = setup
    cfg = probe_config()
    np.testing.assert_array_equal(
        exact_probes(model, state, docs[:2], ref, cfg, progress=False).scores,
        [exact_probe(model, state, d, ref, cfg)[0] for d in docs[:2]],
    )


def test_vmap_first_order_equals_loop(setup):
    """Bucketed, right-padded vmap(grad) gives the same per-document gradients as a backward per doc."""
    model, state, ref, docs = setup
    model64 = copy.deepcopy(model).double()
    cfg = probe_config()
    loop = fast_probes(model64, state, docs, ref, cfg, progress=False, method="first_order_loop")
    vec = fast_probes(model64, state, docs, ref, cfg, progress=False, method="first_order", batch=5)
    np.testing.assert_allclose(vec, loop, rtol=1e-9)


@pytest.mark.parametrize("method", ["shifted", "shifted_remainder", "second_order", "shifted_second_order"])
def test_estimators_track_exact_and_leave_model_untouched(setup, method):
    """At lr 1e-3 every estimator tracks the oracle; the curvature-aware ones more tightly than first order."""
    model, state, ref, docs = setup
    model64, docs = copy.deepcopy(model).double(), docs[:6]  # Hessian-vector products are slow: few docs
    before_w, before_state = weights(model64), snapshot_state(state)
    cfg = probe_config()
    exact = exact_probes(model64, state, docs, ref, cfg, progress=False).scores
    first = fast_probes(model64, state, docs, ref, cfg, progress=False, method="first_order")
    est = fast_probes(model64, state, docs, ref, cfg, progress=False, method=method)
    assert np.abs(est - exact).max() < np.abs(first - exact).max()
    assert np.corrcoef(est, exact)[0, 1] > 0.99
    assert all(torch.equal(a, b) for a, b in zip(before_w, model64.parameters()))
    assert all(p.grad is None for p in model64.parameters())
    assert_states_equal(state, before_state)


def test_gradient_cosine_is_the_cosine_of_plain_gradients_whatever_the_optimizer_state(setup):
    """cos(grad of the document's mean loss, grad of the reference's mean loss), by backward passes."""
    model, state, ref, docs = setup
    model64 = copy.deepcopy(model).double().eval()

    def flat_grad(ids: torch.Tensor) -> torch.Tensor:
        model64.zero_grad(set_to_none=True)
        model64(input_ids=ids, labels=ids).loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model64.parameters()])

    g_ref = flat_grad(ref)
    expected = [float(torch.nn.functional.cosine_similarity(flat_grad(d), g_ref, dim=0)) for d in docs[:6]]
    model64.zero_grad(set_to_none=True)
    for optimizer_state in (state, None):  # the cosine reads no optimizer state
        got = fast_probes(model64, optimizer_state, docs[:6], ref, probe_config(), progress=False,
                          method="gradient_cosine")
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert all(p.grad is None for p in model64.parameters())


def test_fast_probes_reject_unknown_method(setup):
    model, state, ref, docs = setup
    with pytest.raises(ValueError, match="unknown estimators"):
        fast_probes(model, state, docs[:1], ref, probe_config(), progress=False, method="nope")


def test_measure_probes_smoke(setup):
    from benchmarks.oracle_probes import measure_probes

    model, state, ref, docs = setup
    out = measure_probes(model, state, docs[:6], ref, probe_config(), methods=("first_order", "exact_batched"))
    assert len(out["exact"]["scores"]) == 6 and out["exact"]["probe_ms"] > 0
    for m in ("first_order", "exact_batched"):
        assert out[m]["speedup_vs_exact"] > 0 and -1 <= out[m]["spearman_vs_exact"] <= 1
    assert out["exact_batched"]["spearman_vs_exact"] > 0.99
