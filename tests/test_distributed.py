"""Tests of llm_course.distributed: real gloo processes on 127.0.0.1, and worked examples.

The multi-process tests start 2 ranks on the loopback interface only (a free port found by
binding to port 0), and every one of them is bounded by a timeout.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from llm_course import distributed as D

SGD_ATOL = 1e-6  # float32; SGD keeps the rounding differences of summation order at ~1e-9


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """One run of 2 gloo processes: manual averaging and DDP, 3 SGD steps, plus the ring test."""
    out_dir = tmp_path_factory.mktemp("dp")
    return D.run_data_parallel(str(out_dir), world_size=2, modes=("manual", "ddp"), timeout_s=120, steps=3)


def test_manual_averaging_equals_ddp_equals_one_process(spawned):
    single = D.train_single_process(steps=3)
    for mode in ("manual", "ddp"):
        assert _max_difference(spawned[0][mode], spawned[1][mode]) == 0.0  # the ranks stay identical
        assert _max_difference(spawned[0][mode], single) < SGD_ATOL
    assert _max_difference(spawned[0]["manual"], spawned[0]["ddp"]) < SGD_ATOL
    assert _max_difference(spawned[0]["manual"], D.train_single_process(steps=0)) > 1e-3  # training moved them


def test_ring_all_reduce_equals_all_reduce(spawned):
    for rank in range(2):
        torch.testing.assert_close(spawned[rank]["ring_all_reduce"], spawned[rank]["all_reduce"])
        torch.testing.assert_close(spawned[rank]["all_reduce"], torch.arange(10.0) * 3)


def test_torchrun_matches_one_process(tmp_path):
    out = tmp_path / "weights.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={D.find_free_port()}",
        "-m", "llm_course.distributed", "--out", str(out), "--mode", "ddp", "--steps", "3", "--backend", "gloo",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _max_difference(torch.load(out), D.train_single_process(steps=3)) < SGD_ATOL


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


@pytest.mark.cuda
def test_nccl_torchrun_matches_one_process(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs for 2 NCCL ranks")
    out = tmp_path / "weights.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={D.find_free_port()}", "-m", "llm_course.distributed", "--out", str(out), "--backend", "nccl",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _max_difference(torch.load(out), D.train_single_process(steps=3)) < 1e-5  # GPU kernels round differently
