"""Group rollouts: k real AdamW steps on a batch, then the model and optimizer put back bit for bit.

What must hold: after any rollout (also one that fails half way, and one from a fresh optimizer) the
parameters, buffers, grads and optimizer state are torch.equal to before; the measured loss is what the
same steps on an independent copy give; rollouts do not depend on their order; rewards subtract the
shared control.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.oracles import reference_loss
from models.proxy_lm import build_proxy_lm, pack_sequences
from models.rollout import (
    RolloutConfig,
    control_baseline,
    group_rewards,
    restored,
    rollout_effect,
    rollout_rows,
    train_steps,
)
from models.tokenizer import encode_documents, train_bpe_tokenizer
from models.trainer import TrainConfig, make_optimizer, train
from tests.conftest import SMALL_LM, sample_texts

SEQ_LEN = 32
CFG = RolloutConfig(steps=3, rows_per_step=2, lr=2e-3)


@pytest.fixture(scope="module")
def corpus():
    texts = sample_texts(300)
    tok = train_bpe_tokenizer(texts, vocab_size=384)
    return encode_documents(tok, texts)


def trained(corpus):
    """A small proxy after 10 steps (non-trivial moments) with its live optimizer, and reference rows."""
    rows, _ = pack_sequences(corpus[:120], SEQ_LEN, eos_id=0)
    model = build_proxy_lm("tiny", vocab_size=384, seq_len=SEQ_LEN, seed=0, overrides=SMALL_LM)
    cfg = TrainConfig(steps=10, batch_size=4, lr=3e-3, warmup_steps=2, weight_decay=0.1, beta1=0.9, beta2=0.95,
                      grad_clip=1.0)
    optimizer = make_optimizer(model, cfg)
    train(model, optimizer, rows[8:], cfg, progress=False)
    return model, optimizer, rows[:8]


def batch(corpus, start: int) -> torch.Tensor:
    rows = rollout_rows(corpus[start:start + 40], CFG, SEQ_LEN, eos_id=0)
    assert rows is not None and rows.shape == (CFG.rows, SEQ_LEN)
    return rows


def everything(model, optimizer):
    """Deep copies of all the state a rollout could change."""
    return ([p.detach().clone() for p in model.parameters()], [b.detach().clone() for b in model.buffers()],
            copy.deepcopy(optimizer.state_dict()), [p.grad for p in model.parameters()])


def assert_same(model, optimizer, before) -> None:
    params, buffers, state, grads = before
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert all((g is None) == (p.grad is None) for g, p in zip(grads, model.parameters()))
    now = optimizer.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert now["state"].keys() == state["state"].keys()
    for index, entry in state["state"].items():
        assert now["state"][index].keys() == entry.keys()
        for name, value in entry.items():
            assert torch.equal(now["state"][index][name], value), (index, name)  # `step` included


def test_rollout_restores_model_and_optimizer_bit_for_bit(corpus):
    model, optimizer, ref = trained(corpus)
    before = everything(model, optimizer)
    held = optimizer.state_dict()  # references into the live state: must read the old values again
    effect = rollout_effect(model, optimizer, batch(corpus, 120), ref, CFG)
    assert effect.loss_after != effect.loss_before
    assert effect.tokens == CFG.rows * SEQ_LEN
    assert_same(model, optimizer, before)
    assert all(torch.equal(held["state"][i]["exp_avg"], before[2]["state"][i]["exp_avg"]) for i in held["state"])


def test_rollout_matches_the_same_steps_on_a_copy(corpus):
    model, optimizer, ref = trained(corpus)
    rows = batch(corpus, 120)
    twin, twin_optimizer = copy.deepcopy((model, optimizer))  # one memo: the copy steps the copied weights
    train_steps(twin, twin_optimizer, rows, CFG)
    effect = rollout_effect(model, optimizer, rows, ref, CFG)
    assert effect.loss_after == pytest.approx(reference_loss(twin, ref), rel=1e-12, abs=1e-12)
    assert effect.loss_before == pytest.approx(reference_loss(model, ref), rel=1e-12)
    assert effect.per_token == pytest.approx((effect.loss_before - effect.loss_after) / (CFG.rows * SEQ_LEN))


def test_rollouts_are_independent_of_their_order(corpus):
    model, optimizer, ref = trained(corpus)
    a, b = batch(corpus, 120), batch(corpus, 160)
    first = [rollout_effect(model, optimizer, rows, ref, CFG).loss_after for rows in (a, b, a)]
    second = [rollout_effect(model, optimizer, rows, ref, CFG).loss_after for rows in (b, a)]
    assert first[0] == first[2] == second[1]
    assert first[1] == second[0]
    assert first[0] != first[1]


def test_failed_rollout_and_fresh_optimizer_are_restored(corpus):
    model, optimizer, ref = trained(corpus)
    before = everything(model, optimizer)
    bad_ref = torch.full_like(ref, 10_000)  # out of the vocabulary: fails after the training steps
    with pytest.raises(IndexError):
        rollout_effect(model, optimizer, batch(corpus, 120), bad_ref, CFG, loss_before=1.0)
    assert_same(model, optimizer, before)

    fresh = make_optimizer(model, TrainConfig(steps=1, batch_size=1, lr=1e-3, warmup_steps=0, weight_decay=0.1,
                                              beta1=0.9, beta2=0.95, grad_clip=1.0))
    rollout_effect(model, fresh, batch(corpus, 120), ref, CFG)
    assert len(fresh.state) == 0 and fresh.param_groups[0]["lr"] == 1e-3
    assert_same(model, optimizer, before)


def test_restored_puts_back_grads_and_lr(corpus):
    model, optimizer, _ = trained(corpus)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    lr = optimizer.param_groups[0]["lr"]
    with restored(model, optimizer):
        train_steps(model, optimizer, batch(corpus, 120), RolloutConfig(steps=1, rows_per_step=2, lr=0.5))
    assert optimizer.param_groups[0]["lr"] == lr
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def test_rewards_subtract_one_shared_control(corpus):
    model, optimizer, ref = trained(corpus)
    loss_before = reference_loss(model, ref)
    controls = [batch(corpus, 200), batch(corpus, 240)]
    control = control_baseline(model, optimizer, controls, ref, CFG, loss_before)
    assert len(control.effects) == 2 and np.isfinite(control.standard_error)
    arms = [batch(corpus, 120), batch(corpus, 160)]
    rewards = group_rewards(model, optimizer, arms, ref, CFG, control=control, loss_before=loss_before)
    again = group_rewards(model, optimizer, arms, ref, CFG, control_batches=controls)
    np.testing.assert_array_equal(rewards.rewards, rewards.effects - control.effects.mean())
    np.testing.assert_array_equal(rewards.rewards, again.rewards)
    assert rollout_rows(corpus[:1], CFG, SEQ_LEN, eos_id=0) is None  # too few tokens for 6 rows
    with pytest.raises(ValueError, match="needs 6 rows"):
        train_steps(model, optimizer, arms[0][:2], CFG)
