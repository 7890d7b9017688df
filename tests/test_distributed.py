"""Tests of llm_course.distributed and of the Trainer on N ranks: worked examples in one process, and
`torchrun --standalone` runs of `python -m llm_course train` with 2 gloo ranks on 127.0.0.1.

The torchrun runs (marked slow, about 5 minutes together on 2 busy cores) share one fixture; every
command is bounded by a timeout.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from llm_course import distributed as D
from llm_course import trainer as D_trainer
from llm_course.tokenizer import Tokenizer


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_ring_simulation_sums(n):
    g = torch.Generator().manual_seed(n)
    tensors = [torch.randn(5, 3, generator=g) for _ in range(n)]  # 15 elements: uneven chunks for n = 4, 7
    for out in D.ring_all_reduce_simulated(tensors):
        torch.testing.assert_close(out, sum(tensors))


def test_average_gradients_with_an_injected_all_reduce():
    """Two 'ranks' simulated in one process: the injected all_reduce adds the other rank's gradient."""
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # no gradient: must be skipped
    model.weight.grad = torch.ones(2, 3)
    other = torch.full((2, 3), 3.0)
    D.average_gradients(model, 2, all_reduce=lambda t: t.add_(other))
    torch.testing.assert_close(model.weight.grad, torch.full((2, 3), 2.0))
    assert model.bias.grad is None


def test_data_parallel_gradients_equal_the_combined_batch_gradient():
    torch.manual_seed(0)
    model = D.Transformer(D.demo_config())
    inputs, targets = D.demo_data(batch_size=8)
    model.zero_grad()
    D.lm_loss(model, inputs, targets).backward()
    full = [p.grad.clone() for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for world_size in (1, 2, 4, 8):
        got = D.data_parallel_gradients(model, D.lm_loss, inputs, targets, world_size)
        for a, b in zip(got, full):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert _max_difference(before, model.state_dict()) == 0.0


def test_shard_batch():
    batch = torch.arange(12).view(6, 2)
    assert D.shard_batch(batch, 1, 3).tolist() == [[4, 5], [6, 7]]
    assert torch.equal(torch.cat([D.shard_batch(batch, r, 3) for r in range(3)]), batch)
    with pytest.raises(ValueError, match="evenly"):
        D.shard_batch(batch, 0, 4)


def test_memory_per_device_zero_paper_example():
    # ZeRO paper, Figure 1: 7.5B parameters on 64 devices, mixed-precision Adam (K = 12).
    gb = {s: D.memory_per_device(7.5e9, 64, s) / 1e9 for s in D.STRATEGIES}
    assert gb["ddp"] == pytest.approx(120.0)
    assert gb["zero1"] == pytest.approx(31.40625)  # the paper rounds to 31.4
    assert gb["zero2"] == pytest.approx(16.640625)  # 16.6
    assert gb["fsdp"] == pytest.approx(1.875)  # 1.9
    assert all(D.memory_per_device(1000, 1, s) == 16_000 for s in D.STRATEGIES)  # one device: nothing to shard
    assert D.memory_per_device(100, 4, "fsdp", param_bytes=4, grad_bytes=4, optimizer_bytes=8) == 400
    with pytest.raises(ValueError):
        D.memory_per_device(100, 4, "zero3")


def test_ring_traffic_per_rank():
    assert D.ring_traffic_per_rank(100, 2) == 100
    assert D.ring_traffic_per_rank(100, 4) == 150
    assert D.ring_traffic_per_rank(0, 1) == 0


def test_default_backend():
    assert D.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


# --------------------------------------------------------------------------- the Trainer on N ranks
def test_token_batches_shards_are_the_rows_of_the_global_batch():
    stream = torch.arange(2000)
    whole = D_trainer.TokenBatches(stream, batch_size=6, seq_len=10, seed=3)
    ranks = [D_trainer.TokenBatches(stream, batch_size=3, seq_len=10, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(70):  # through several epochs
        x, y = whole.next_batch()
        parts = [data.next_batch() for data in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert ranks[0].state_dict() == ranks[1].state_dict() == whole.state_dict()  # one data position for all
    with pytest.raises(ValueError, match="rank"):
        D_trainer.TokenBatches(stream, 3, 10, rank=2, world_size=2)


def test_outside_a_process_group():
    model = nn.Linear(3, 2)
    assert D.rank_and_world() == (0, 1) and not D.in_process_group()
    value = torch.tensor([1.5, 2.0])
    assert D.all_reduce_mean(value) is value
    assert D.wrap_model(model, "none") is model and D.unwrap(model) is model and not D.is_sharded(model)
    with pytest.raises(RuntimeError, match="torchrun"):
        D.wrap_model(model, "ddp")
    with pytest.raises(ValueError, match="parallel"):
        D.wrap_model(model, "zero3")


def test_measured_memory_counts_every_tensor_once():
    model = D.Transformer(D.demo_config(), generator=torch.Generator().manual_seed(0))
    n = sum(p.numel() for p in model.parameters())  # tied embeddings once
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs, targets = D.demo_data(batch_size=2)
    D.lm_loss(model, inputs, targets).backward()
    optimizer.step()
    got = D.measured_memory_per_rank(model, optimizer)
    n_tensors = len(list(model.parameters()))
    assert got == {"parameters": 4 * n, "gradients": 4 * n, "optimizer": 8 * n + 4 * n_tensors}  # + Adam's step counts


def test_sharded_checkpoint_round_trip_in_one_process(tmp_path):
    def build():
        model = D.Transformer(D.demo_config(), generator=torch.Generator().manual_seed(len(build.calls)))
        build.calls.append(1)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    build.calls = []
    model, optimizer = build()
    fresh_model, fresh_optimizer = build()
    assert not D.save_sharded(model, optimizer, tmp_path / "before")  # no optimizer state yet: none saved
    inputs, targets = D.demo_data(batch_size=2)
    D.lm_loss(model, inputs, targets).backward()
    optimizer.step()
    assert D.save_sharded(model, optimizer, tmp_path / "after")
    D.load_sharded(fresh_model, fresh_optimizer, tmp_path / "after")
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[p][key], fresh_optimizer.state[q][key])
    D.load_sharded(fresh_model, fresh_optimizer, tmp_path / "before", with_optimizer=False)
    assert not fresh_optimizer.state
    assert _max_difference(fresh_model.state_dict(), model.state_dict()) > 0  # the weights of before the step


# --------------------------------------------------------------------------- torchrun, 2 gloo ranks
# 20 steps of the `tiny` preset on 32-token global batches. One process with batch 2 against
# 2 ranks with batch 1: the same global batches, whose mean loss and gradients are summed in
# another order, so the losses agree to float32 rounding grown by 20 Adam steps, not bit for
# bit (measured: at most 1.6e-7 relative, for DDP, FSDP and the 2 -> 1 resume).
STEPS = 20
LOSS_RTOL = 1e-5
TRAIN = ["--steps", str(STEPS), "--seq-len", "16", "--eval-interval", "10",
         "--checkpoint-interval", "5", "--no-progress"]  # fmt: skip
CRASH = '''
import os, signal, sys
from llm_course import __main__, trainer

original = trainer.Trainer.train_step

def train_step(self):  # rank 1 dies at step 12 of the first attempt, after the checkpoint of step 10
    if self.step == 12 and self.rank == 1 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self)

trainer.Trainer.train_step = train_step
sys.exit(__main__.main(sys.argv[1:]))
'''


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _train(out, *args, ranks=1, script=None, restarts=0):
    if ranks == 1:
        cmd = [sys.executable, "-m", "llm_course", "train", "--device", "cpu"]
    else:
        # --standalone: a c10d rendezvous on a free local port. torchrun's store outlives a restart, so
        # `distributed.init_process` gives each attempt its own keys (a restarted gloo rank could otherwise
        # read the address of a rank of the failed attempt, and dial a dead one).
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               f"--max-restarts={restarts}", "--monitor-interval=0.5"]  # fmt: skip
        cmd += [str(script), "train"] if script else ["-m", "llm_course", "train"]
    result = subprocess.run([*cmd, "--out", str(out), *args], capture_output=True, text=True, timeout=900, env=_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _history(out, step=STEPS):
    import json

    return json.loads((out / f"step_{step:07d}" / "trainer.json").read_text())["history"]["loss"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, DDP and FSDP on 2 ranks, the same run killed and restarted, FSDP resumed on 1 rank."""
    import shutil

    root = tmp_path_factory.mktemp("runs")
    corpus = root / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. Pack my box with five dozen jugs. " * 60)
    Tokenizer.train(corpus.read_text(), 299, special_tokens=["<|endoftext|>"]).save(root / "tokenizer.json")
    common = ["--corpus", str(corpus), "--tokenizer", str(root / "tokenizer.json"), *TRAIN]
    out = {name: root / name for name in ("single", "ddp", "fsdp", "killed", "resumed")}
    _train(out["single"], *common, "--batch-size", "2")
    _train(out["ddp"], *common, "--batch-size", "1", "--parallel", "ddp", ranks=2)
    _train(out["fsdp"], *common, "--batch-size", "1", "--parallel", "fsdp", ranks=2)
    (root / "crash.py").write_text(CRASH)
    killed = _train(out["killed"], *common, "--batch-size", "1", "--parallel", "ddp", ranks=2, script=root / "crash.py",
                    restarts=1)  # fmt: skip
    out["resumed"].mkdir()  # FSDP's checkpoint of step 10 (2 ranks), resumed by one process
    shutil.copytree(out["fsdp"] / "step_0000010", out["resumed"] / "step_0000010")
    shutil.copy(out["fsdp"] / "tokenizer.json", out["resumed"])
    resumed = _train(out["resumed"], "--corpus", str(corpus), "--resume", "--no-progress")
    return {"out": out, "killed": killed, "resumed": resumed}


@pytest.mark.slow
def test_ddp_and_fsdp_match_one_process_with_the_same_global_batch(runs):
    single = _history(runs["out"]["single"])
    assert len(single) == STEPS and single[-1] < single[0] - 0.5  # it trains
    for parallel in ("ddp", "fsdp"):
        got = _history(runs["out"][parallel])
        assert got == pytest.approx(single, rel=LOSS_RTOL)
    assert (runs["out"]["fsdp"] / "step_0000020" / "dcp").is_dir()


@pytest.mark.slow
def test_a_killed_rank_restarts_from_the_last_checkpoint_with_nothing_lost(runs):
    output = runs["killed"].stdout
    assert "resumed" in output and "at step 10 of 20" in output  # restarted by torchrun, from step 10
    assert _history(runs["out"]["killed"]) == _history(runs["out"]["ddp"])  # bit for bit


@pytest.mark.slow
def test_two_ranks_resume_on_one(runs):
    assert "at step 10 of 20 on 1 x cpu" in runs["resumed"].stdout
    got, fsdp = _history(runs["out"]["resumed"]), _history(runs["out"]["fsdp"])
    assert got[:10] == fsdp[:10]  # restored from the checkpoint
    assert got[10:] == pytest.approx(fsdp[10:], rel=LOSS_RTOL)


@pytest.mark.slow
def test_a_checkpoint_is_enough_to_sample_from(runs):
    from llm_course.generation import load_checkpoint

    for name in ("single", "fsdp"):
        folder = runs["out"][name] / f"step_{STEPS:07d}"
        model, tokenizer = load_checkpoint(folder)  # weights, config and tokenizer.json, whole also after FSDP
        assert tokenizer.n_vocab <= model.config.vocab_size


# --------------------------------------------------------------------------- exact resume on CPU
def test_a_resume_with_another_thread_count_says_it_will_not_be_exact(tmp_path):
    """Same thread count: bit for bit (tests/test_trainer.py). Another one: LayerNorm's backward adds its
    per-thread partial sums in another order, and the trainer says so."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (2000,), generator=g)
    model = D.Transformer(D.demo_config(), generator=torch.Generator().manual_seed(0))
    config = D_trainer.TrainConfig(batch_size=2, seq_len=16, max_steps=4, warmup_steps=1, checkpoint_interval=2)
    D_trainer.Trainer(model, config, tokens, out_dir=tmp_path, log=None).train(until_step=2)
    before = torch.get_num_threads()
    try:
        for threads, warned in ((before, False), (before + 1, True)):
            torch.set_num_threads(threads)
            lines = []
            D_trainer.Trainer.resume(tmp_path, tokens, log=lines.append)
            assert any("OMP_NUM_THREADS" in line for line in lines) == warned, lines
    finally:
        torch.set_num_threads(before)
