"""Tokenizer, proxy LM, packing, trainer and checkpoints on a few hundred real pool records (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.oracles import ProbeConfig, exact_probes
from models.proxy_lm import (
    PRESETS,
    build_proxy_lm,
    count_params,
    document_tensor,
    pack_sequences,
)
from models.tokenizer import (
    EOS_TOKEN,
    count_tokens,
    encode_documents,
    load_tokenizer,
    save_tokenizer,
    train_bpe_tokenizer,
)
from models.trainer import (
    TrainConfig,
    load_checkpoint,
    lr_at,
    make_optimizer,
    resolve_device,
    save_checkpoint,
    train,
)
from tests.conftest import SMALL_LM, sample_texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sample_texts()


@pytest.fixture(scope="module")
def tok(texts):
    return train_bpe_tokenizer(texts, vocab_size=512)


def train_config(**kw) -> TrainConfig:
    base = {
        "steps": 30,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 5,
        "weight_decay": 0.1,
        "beta1": 0.9,
        "beta2": 0.95,
        "grad_clip": 1.0,
        "device": "cpu",
        "bf16": True,
        "seed": 0,
    }
    return TrainConfig(**(base | kw))


def test_tokenizer_round_trip_eos_and_counts(tok, texts, tmp_path):
    assert tok.token_to_id(EOS_TOKEN) == 0
    assert tok.get_vocab_size() == 512
    sample = texts[:20] + ["naïve café — 東京 🙂 <tag>\n\tindent"]  # bytes outside the pool still round-trip
    ids = encode_documents(tok, sample)
    assert [tok.decode(x) for x in ids] == sample
    assert 0 not in {i for x in ids for i in x}  # EOS is added by packing, never by encoding
    assert count_tokens(tok, sample, batch_size=7) == [len(x) for x in ids]
    save_tokenizer(tok, tmp_path / "tok" / "tokenizer.json")
    assert encode_documents(load_tokenizer(tmp_path / "tok" / "tokenizer.json"), sample) == ids


def test_pack_sequences_exact_token_accounting(tok, texts):
    rows, n_tokens = pack_sequences([[1, 2, 3], [4, 5], [6]], seq_len=3, eos_id=0)
    assert rows.tolist() == [[1, 2, 3], [0, 4, 5], [0, 6, 0]] and n_tokens == 9
    rows, n_tokens = pack_sequences([[1, 2, 3], [4]], seq_len=4, eos_id=0)
    assert rows.tolist() == [[1, 2, 3, 0]] and n_tokens == 4  # ragged tail [4, 0] dropped
    ids = encode_documents(tok, texts)
    rows, n_tokens = pack_sequences(ids, seq_len=64, eos_id=0)
    stream = sum(len(x) + 1 for x in ids)
    assert rows.dtype == torch.long and rows.shape == (stream // 64, 64)
    assert n_tokens == rows.numel() == stream - stream % 64
    assert int((rows == 0).sum()) <= len(ids)


def test_document_tensor():
    assert document_tensor(list(range(1, 101)), seq_len=64, eos_id=0).tolist() == [list(range(1, 65))]
    assert document_tensor([5, 6], seq_len=64, eos_id=0).tolist() == [[5, 6, 0]]
    assert document_tensor([], seq_len=64, eos_id=0).tolist() == [[0, 0]]


def test_build_proxy_lm_presets_and_determinism():
    with pytest.raises(ValueError, match="tiny, 25m, 125m, 410m"):
        build_proxy_lm("huge", vocab_size=512, seq_len=64, seed=0)
    rng_before = torch.random.get_rng_state()
    a = build_proxy_lm("tiny", vocab_size=4096, seq_len=128, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # building never consumes the caller's RNG
    b = build_proxy_lm("tiny", vocab_size=4096, seq_len=128, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert 1_000_000 < count_params(a) < 3_000_000
    assert a.config._attn_implementation == "eager"
    assert a.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert a.get_output_embeddings().weight.data_ptr() != a.get_input_embeddings().weight.data_ptr()
    assert PRESETS["410m"].hidden_size == 1024 and PRESETS["410m"].num_layers == 24


def test_lr_schedule_and_device():
    cfg = train_config(steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)  # half way through the cosine: mean of peak and floor
    assert lr_at(100, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    stage = train_config(steps=50, total_steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(60, stage) == lr_at(60, cfg)  # a later stage continues the run's schedule
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def _assert_optimizer_states_equal(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert a["state"][k].keys() == b["state"][k].keys()
        for name, value in a["state"][k].items():
            assert torch.equal(value, b["state"][k][name]), (k, name)


def test_training_reduces_loss_and_checkpoint_round_trip(tok, texts, tmp_path):
    rows, _ = pack_sequences(encode_documents(tok, texts), seq_len=64, eos_id=0)
    model = build_proxy_lm("tiny", vocab_size=512, seq_len=64, seed=0, overrides=SMALL_LM)
    cfg = train_config()
    optimizer = make_optimizer(model, cfg)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    result = train(model, optimizer, rows, cfg, progress=False)
    assert result.steps == 30 and len(result.losses) == 30 and result.tokens == 30 * 8 * 64
    assert sum(result.losses[-5:]) / 5 < result.losses[0] - 0.3

    save_checkpoint(tmp_path / "ckpt", model, optimizer, {"stage": 0, "step": 30})
    # data only: safetensors + JSON, no pickle anywhere in a checkpoint
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {
        "model.safetensors", "config.json", "optimizer.safetensors", "optimizer.json", "meta.json"}
    loaded, opt_state, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta == {"stage": 0, "step": 30}
    assert loaded.config._attn_implementation == "eager"
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=rows[:4]).logits, loaded(input_ids=rows[:4]).logits)
    _assert_optimizer_states_equal(optimizer.state_dict(), opt_state)
    # the oracles rebuild AdamW from the loaded state: same probe scores as from the live optimizer
    probe_cfg = ProbeConfig(lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0)
    docs, ref = [rows[i : i + 1, :32] for i in range(3)], rows[4:6]
    live = exact_probes(model, optimizer.state_dict(), docs, ref, probe_cfg, progress=False, batch=0).scores
    assert np.array_equal(live, exact_probes(loaded, opt_state, docs, ref, probe_cfg, progress=False, batch=0).scores)

    # resuming from the checkpoint continues exactly like the run that never stopped
    resumed = make_optimizer(loaded, cfg)
    resumed.load_state_dict(opt_state)
    more = train_config(steps=3, total_steps=40)
    train(model, optimizer, rows, more, step_offset=30, progress=False)
    train(loaded, resumed, rows, more, step_offset=30, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(model.parameters(), loaded.parameters()))


def test_load_checkpoint_rejects_incomplete(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_checkpoint(tmp_path / "half")


def test_fresh_optimizer_round_trips_and_pickled_state_is_refused(tmp_path):
    model = build_proxy_lm("tiny", vocab_size=512, seq_len=64, seed=0, overrides=SMALL_LM)
    optimizer = make_optimizer(model, train_config())
    save_checkpoint(tmp_path / "fresh", model, optimizer, {"stage": 0})
    _, state, _ = load_checkpoint(tmp_path / "fresh")
    _assert_optimizer_states_equal(optimizer.state_dict(), state)  # no steps yet: empty state, same groups
    assert state["state"] == {} and isinstance(state["param_groups"][0]["betas"], tuple)
    # a checkpoint from before safetensors optimizer state: refused with a clear line, never unpickled
    (tmp_path / "fresh" / "optimizer.json").rename(tmp_path / "fresh" / "optimizer.pt")
    with pytest.raises(FileNotFoundError, match=r"optimizer\.pt.*no longer read.*reuse_stages"):
        load_checkpoint(tmp_path / "fresh")


def test_train_result_reports_model_flops(tok, texts, monkeypatch):
    import math

    from models.flops import flops_per_token

    monkeypatch.delenv("INFLUMIX_PEAK_FLOPS", raising=False)
    rows, _ = pack_sequences(encode_documents(tok, texts[:50]), seq_len=64, eos_id=0)
    model = build_proxy_lm("tiny", vocab_size=512, seq_len=64, seed=0, overrides=SMALL_LM)
    cfg = train_config(steps=2)
    result = train(model, make_optimizer(model, cfg), rows, cfg, progress=False)
    assert result.flops_per_token == flops_per_token(model, 64) > 0
    assert math.isfinite(result.model_flops_per_s) and result.model_flops_per_s > 0
    assert result.model_flops_per_s == pytest.approx(result.flops_per_token * result.tokens_per_s)
    assert result.mfu is None  # CPU: no known peak unless INFLUMIX_PEAK_FLOPS is set
