"""DDP pretraining equals single-process pretraining (gloo, 2 CPU processes), and FLOPs accounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.distributed import DistInfo, init_distributed, shard_batch, train_ddp
from models.flops import device_peak_flops, flops_per_token, matmul_params, mfu
from models.proxy_lm import build_proxy_lm, count_params, pack_sequences
from models.tokenizer import encode_documents, train_bpe_tokenizer
from models.trainer import TrainConfig, batch_order, make_optimizer, train
from tests.conftest import REPO, SMALL_LM, sample_texts

SEQ_LEN = 32
VOCAB = 512


def _cfg(**kw) -> TrainConfig:
    base = {"steps": 5, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.1, "beta1": 0.9,
            "beta2": 0.95, "grad_clip": 0.5, "device": "cpu", "bf16": True, "seed": 0}
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def rows() -> torch.Tensor:
    texts = sample_texts(200)
    tok = train_bpe_tokenizer(texts, vocab_size=VOCAB)
    packed, _ = pack_sequences(encode_documents(tok, texts), SEQ_LEN, eos_id=0)
    return packed


def _launch(rows_file: Path, out: Path, nproc: int) -> dict:
    """Run scripts/pretrain_ddp.py: plain python for 1 process, torchrun (gloo) for more."""
    script = str(REPO / "scripts" / "pretrain_ddp.py")
    flags = [
        "--vocab-size", str(VOCAB), "--seq-len", str(SEQ_LEN), "--model-overrides", json.dumps(SMALL_LM),
        "--steps", "5", "--global-batch", "4", "--lr", "3e-3", "--warmup-steps", "2",
        # 0.5 is below the gradient norm of the first steps (~1.6), so clipping is exercised
        "--grad-clip", "0.5", "--seed", "0", "--data", str(rows_file), "--out", str(out),
        "--backend", "gloo", "--threads", "1",
    ]
    if nproc == 1:
        cmd = [sys.executable, script, *flags]
    else:  # --standalone: the rendezvous binds port 0, so the OS picks a free port (no race between tests)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               script, *flags]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("world=") == 1  # only rank 0 prints
    return json.loads((out / "result.json").read_text())


def test_ddp_two_processes_match_single_process(rows, tmp_path):
    rows_file = tmp_path / "rows.safetensors"
    save_file({"input_ids": rows.contiguous()}, str(rows_file))
    one = _launch(rows_file, tmp_path / "one", nproc=1)
    two = _launch(rows_file, tmp_path / "two", nproc=2)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["tokens"] == two["tokens"] == 5 * 4 * SEQ_LEN  # global tokens, not per rank
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-4, atol=0)
    w1 = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "checkpoint" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=2e-5, msg=name)
    start = build_proxy_lm("tiny", VOCAB, SEQ_LEN, seed=0, overrides=SMALL_LM).state_dict()
    assert any(not torch.allclose(start[k], w1[k]) for k in w1)  # training did move the weights
    assert json.loads((tmp_path / "two" / "checkpoint" / "meta.json").read_text())["world_size"] == 2


def test_shard_batch_slices_cover_the_global_batch():
    order = torch.arange(24).view(3, 8)
    shards = [shard_batch(order, r, 4) for r in range(4)]
    assert all(s.shape == (3, 2) for s in shards)
    assert torch.equal(torch.cat(shards, dim=1), order)
    assert shard_batch(torch.arange(8), 1, 2).tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="divisible"):
        shard_batch(order, 0, 3)
    with pytest.raises(ValueError, match="outside"):
        shard_batch(order, 2, 2)


def test_single_process_train_ddp_equals_train(rows, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed("gloo")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device="cpu") and info.is_main
    assert not torch.distributed.is_initialized()  # no torchrun: no process group
    cfg = _cfg(steps=3)
    a = build_proxy_lm("tiny", VOCAB, SEQ_LEN, seed=0, overrides=SMALL_LM)
    b = build_proxy_lm("tiny", VOCAB, SEQ_LEN, seed=0, overrides=SMALL_LM)
    ra = train(a, make_optimizer(a, cfg), rows, cfg, step_offset=7, progress=False)
    rb = train_ddp(b, make_optimizer(b, cfg), rows, cfg, info, step_offset=7)
    assert ra.losses == rb.losses and ra.tokens == rb.tokens
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert batch_order(len(rows), cfg, 7).shape == (3, 4)


def test_flops_per_token_matches_hand_count():
    model = build_proxy_lm("tiny", VOCAB, SEQ_LEN, seed=0, overrides=SMALL_LM)
    h, i, layers = 32, 128, 2
    per_layer = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * i + i + i * h + h)
    n = layers * per_layer + 2 * h + VOCAB * h  # blocks, final LayerNorm, LM head; not the input table
    assert matmul_params(model) == matmul_params(model.config) == n == count_params(model) - VOCAB * h
    expected = 6 * n + 12 * layers * h * SEQ_LEN
    assert flops_per_token(model, SEQ_LEN) == flops_per_token(model.config, SEQ_LEN) == expected == 275_712
    tied = build_proxy_lm("tiny", VOCAB, SEQ_LEN, seed=0, overrides=SMALL_LM | {"tie_word_embeddings": True})
    assert matmul_params(tied) == matmul_params(tied.config) == n  # the shared table counts once, as the head
    with pytest.raises(ValueError):
        flops_per_token(model, 0)


def test_peak_flops_and_mfu(monkeypatch):
    monkeypatch.delenv("INFLUMIX_PEAK_FLOPS", raising=False)
    assert device_peak_flops("cpu", "float32") is None and device_peak_flops("cpu", "bf16") is None
    assert device_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert device_peak_flops("NVIDIA H200", "bfloat16") == 989e12
    assert device_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "torch.bfloat16") == 312e12
    assert device_peak_flops("NVIDIA H100 80GB HBM3", "float64") is None
    assert mfu(1_000.0, 1e6, None) is None
    assert mfu(1_000.0, 1e6, 1e10) == pytest.approx(0.1)
    monkeypatch.setenv("INFLUMIX_PEAK_FLOPS", "2e11")
    assert device_peak_flops("cpu", "float32") == 2e11
