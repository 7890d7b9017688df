"""Data-parallel training with ``torch.distributed``: all-reduce, DDP, and memory per device.

Data parallelism keeps a full copy of the model on each of N processes ("ranks"). Each rank
takes its own slice of the batch, computes gradients on it, and then the ranks *all-reduce*
their gradients: every rank ends up with the sum, divides it by N, and takes the same
optimizer step. With a loss that is a mean over examples and slices of equal size, the
averaged gradient is the gradient of the combined batch, so N ranks train exactly like one
process with an N times larger batch (up to float rounding).

What is here:

- :func:`average_gradients`: the all-reduce that averages gradients (sum, then divide),
  written against an injectable ``all_reduce`` so it can also run without a process group;
- :func:`ring_all_reduce`: the ring algorithm with point-to-point ``send``/``recv``, for
  teaching (``dist.all_reduce`` does the same, faster); :func:`ring_all_reduce_simulated`
  runs the same schedule over a list of tensors in one process;
- :func:`train_step`, the step that both the manual averaging and
  ``DistributedDataParallel`` (DDP) use, and :func:`data_parallel_gradients`, the
  single-process simulation of N ranks that the equivalence rests on;
- :func:`memory_per_device`: bytes per device for DDP and the three ZeRO stages (stage 3
  is what PyTorch's FSDP does), after Rajbhandari et al., "ZeRO: Memory Optimizations Toward
  Training Trillion Parameter Models" (2020);
- a ``torchrun`` entry point: ``torchrun --nproc_per_node=2 -m llm_course.distributed``.

The library never picks a device. The only hardware choice here is the *backend*:
:func:`default_backend` says "nccl" when CUDA is available and "gloo" otherwise. Where the
tensors live (CPU for gloo, ``cuda:LOCAL_RANK`` for NCCL) is chosen by the caller: the
``torchrun`` entry point at the bottom, the book, the tests.

Left out: tensor and pipeline parallelism, gradient bucketing and overlap of communication
with the backward pass (DDP does both), and activation memory (it depends on batch and
sequence length, not on the sharding strategy).
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from llm_course.transformer import Transformer, TransformerConfig

# ---------------------------------------------------------------------------------------
# Process groups
# ---------------------------------------------------------------------------------------


def default_backend() -> str:
    """ "nccl" when CUDA (and PyTorch's NCCL) is available, else "gloo" (CPU tensors)."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that is free right now (the OS picks it when we bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_process(
    rank: int | None = None, world_size: int | None = None, backend: str | None = None, init_method: str = "env://",
    timeout_s: float = 60.0,
) -> str:  # fmt: skip
    """Join the default process group and return the backend used.

    With no arguments it reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the
    environment, which is what ``torchrun`` sets. Pass `rank`, `world_size` and an
    `init_method` such as ``"tcp://127.0.0.1:29500"`` when starting processes yourself.
    `backend` None means :func:`default_backend`. A collective that waits longer than
    `timeout_s` for the other ranks raises instead of hanging.
    """
    backend = backend or default_backend()
    if rank is None:
        rank = int(os.environ["RANK"])
    if world_size is None:
        world_size = int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
    )
    return backend


def shard_batch(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s contiguous slice of `batch` (B, ...) -> (B / world_size, ...).

    The batch must split evenly: with slices of unequal size, the average of the slices'
    mean losses is not the mean loss of the batch, and data parallelism would no longer
    equal one process on the combined batch.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0 .. {world_size - 1}, got {rank}")
    if batch.shape[0] % world_size != 0:
        raise ValueError(f"batch of {batch.shape[0]} does not split evenly over {world_size} ranks")
    per_rank = batch.shape[0] // world_size
    return batch[rank * per_rank : (rank + 1) * per_rank]


# ---------------------------------------------------------------------------------------
# All-reduce
# ---------------------------------------------------------------------------------------


def average_gradients(model: nn.Module, world_size: int, all_reduce: Callable | None = None) -> None:
    """Replace every parameter's gradient by its average over the `world_size` ranks, in place.

    ``all_reduce(tensor)`` sums `tensor` over all ranks in place (default
    ``torch.distributed.all_reduce``, whose default op is SUM; gloo has no AVG op), and then
    each rank divides by `world_size`. Parameters without a gradient are skipped; every rank
    must skip the same ones, or the collectives would pair up the wrong tensors.
    """
    all_reduce = all_reduce or dist.all_reduce
    for p in model.parameters():
        if p.grad is None:
            continue
        all_reduce(p.grad)  # sum over ranks, in place
        p.grad /= world_size


def ring_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place with the ring algorithm, using send/recv only.

    The flattened tensor is cut into N chunks. In N - 1 *reduce-scatter* steps each rank
    sends one chunk to its right neighbour and adds the chunk it receives from its left
    one; afterwards rank r holds the full sum of chunk (r + 1) mod N. In N - 1 *all-gather*
    steps the finished chunks travel once more round the ring. Each rank sends
    2 (N - 1) / N times the tensor's size, whatever N is. Returns `tensor`.
    """
    rank, n = dist.get_rank(), dist.get_world_size()
    if n == 1:
        return tensor
    flat = tensor.detach().reshape(-1).clone()  # (numel,)
    chunks = list(torch.tensor_split(flat, n))  # views of `flat`
    right, left = (rank + 1) % n, (rank - 1) % n
    for step in range(2 * (n - 1)):
        reduce_phase = step < n - 1
        send_index = (rank - step) % n if reduce_phase else (rank + 1 - (step - (n - 1))) % n
        recv_index = (send_index - 1) % n
        incoming = torch.empty_like(chunks[recv_index])
        # Even ranks send first, odd ranks receive first, so no pair of ranks waits on the other.
        if rank % 2 == 0:
            dist.send(chunks[send_index].contiguous(), right)
            dist.recv(incoming, left)
        else:
            dist.recv(incoming, left)
            dist.send(chunks[send_index].contiguous(), right)
        if reduce_phase:
            chunks[recv_index] += incoming
        else:
            chunks[recv_index].copy_(incoming)
    tensor.copy_(flat.view_as(tensor))
    return tensor


def ring_all_reduce_simulated(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ring schedule of :func:`ring_all_reduce` for N ranks, simulated in one process.

    `tensors[r]` is rank r's tensor; returns each rank's result (all equal to the sum).
    Each step, every rank "sends" the chunk it would send; the messages are delivered after
    all ranks have sent, as on a real ring.
    """
    n = len(tensors)
    chunks = [list(torch.tensor_split(t.detach().reshape(-1).clone(), n)) for t in tensors]
    for step in range(2 * (n - 1)):
        reduce_phase = step < n - 1
        messages = []
        for rank in range(n):
            send_index = (rank - step) % n if reduce_phase else (rank + 1 - (step - (n - 1))) % n
            messages.append((send_index, chunks[rank][send_index].clone()))
        for rank in range(n):
            index, payload = messages[(rank - 1) % n]  # from the left neighbour
            chunks[rank][index] = chunks[rank][index] + payload if reduce_phase else payload
    return [torch.cat(c).view_as(t) for c, t in zip(chunks, tensors)]


def ring_traffic_per_rank(n_bytes: float, world_size: int) -> float:
    """Bytes each rank sends in a ring all-reduce of `n_bytes`: 2 (N - 1) / N * n_bytes."""
    return 2 * (world_size - 1) / world_size * n_bytes


# ---------------------------------------------------------------------------------------
# Training: one step, and the equivalence with one process
# ---------------------------------------------------------------------------------------


def lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `model` on token ids inputs, targets (B, T)."""
    logits = model(inputs)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable = lm_loss,
    sync: Callable[[nn.Module], None] | None = None,
) -> float:
    """One optimizer step on this rank's `inputs`, `targets`; returns the local loss.

    `sync(model)` runs between backward and the optimizer step: :func:`average_gradients`
    for manual data parallelism, None for one process or for a DDP-wrapped `model` (DDP
    all-reduces the gradients during ``backward``).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, inputs, targets)
    loss.backward()
    if sync is not None:
        sync(model)
    optimizer.step()
    return loss.item()


def data_parallel_gradients(
    model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor, world_size: int
) -> list[torch.Tensor]:
    """The gradients N data-parallel ranks end up with, computed in one process.

    Each rank r gets a copy of `model` and the slice ``shard_batch(., r, world_size)`` of
    `inputs` and `targets`; its gradient of ``loss_fn(model, x, y)`` is computed separately,
    and the N gradients are averaged. Returns one tensor per parameter, in
    ``model.parameters()`` order (zeros where a parameter gets no gradient). With a mean loss
    this equals the gradient of ``loss_fn`` on the whole batch. `model` is not modified.
    """
    total = [torch.zeros_like(p) for p in model.parameters()]
    for rank in range(world_size):
        replica = copy.deepcopy(model)
        replica.zero_grad(set_to_none=True)
        loss_fn(replica, shard_batch(inputs, rank, world_size), shard_batch(targets, rank, world_size)).backward()
        for t, p in zip(total, replica.parameters()):
            if p.grad is not None:
                t += p.grad
    return [t / world_size for t in total]


# ---------------------------------------------------------------------------------------
# Memory per device
# ---------------------------------------------------------------------------------------

STRATEGIES = ("ddp", "zero1", "zero2", "fsdp")


def memory_per_device(
    n_params: float,
    n_devices: int,
    strategy: str = "ddp",
    param_bytes: float = 2,
    grad_bytes: float = 2,
    optimizer_bytes: float = 12,
) -> float:
    """Bytes of parameters, gradients and optimizer state each device holds (no activations).

    The defaults are the ZeRO paper's mixed-precision Adam: 16-bit parameters (2 bytes) and
    gradients (2 bytes), and 12 bytes of optimizer state per parameter (a float32 master
    copy of the weights, Adam's first and second moments). With N devices:

    - "ddp":   every device holds everything:       (2 + 2 + 12) P
    - "zero1": optimizer states sharded:            (2 + 2) P + 12 P / N
    - "zero2": gradients and optimizer states too:  2 P + (2 + 12) P / N
    - "fsdp":  parameters as well (ZeRO stage 3):   (2 + 2 + 12) P / N

    FSDP gathers each layer's full parameters just before using them and frees them after,
    so a device also needs room for one layer's parameters at a time; that is left out here.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if n_devices < 1:
        raise ValueError(f"n_devices must be at least 1, got {n_devices}")
    sharded = {"ddp": 0, "zero1": 1, "zero2": 2, "fsdp": 3}[strategy]  # how many of the 3 parts are split
    parts = [optimizer_bytes, grad_bytes, param_bytes]  # sharded in this order by ZeRO stages 1, 2, 3
    return n_params * sum(b / n_devices if i < sharded else b for i, b in enumerate(parts))


# ---------------------------------------------------------------------------------------
# A tiny run: the same code in one process, with manual averaging, and with DDP
# ---------------------------------------------------------------------------------------


def demo_config() -> TransformerConfig:
    """The tiny GPT trained by the demo runs (a few thousand parameters)."""
    return TransformerConfig(vocab_size=32, context_length=16, d_model=32, n_layers=2, n_heads=4)


def demo_data(batch_size: int = 8, seq_len: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of random token sequences: inputs and next-token targets (B, T)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, demo_config().vocab_size, (batch_size, seq_len + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def _demo_model_and_optimizer(optimizer: str, lr: float, seed: int, device: str = "cpu"):
    model = Transformer(demo_config(), generator=torch.Generator().manual_seed(seed)).to(device)
    opt_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    return model, opt_class(model.parameters(), lr=lr)


def train_single_process(steps: int = 3, optimizer: str = "sgd", lr: float = 0.1, batch_size: int = 8,
                         seed: int = 0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Train the demo model in one process on the whole batch; returns its final state dict."""
    model, opt = _demo_model_and_optimizer(optimizer, lr, seed)
    inputs, targets = demo_data(batch_size, seed=seed)
    for _ in range(steps):
        train_step(model, opt, inputs, targets)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_data_parallel(
    rank: int, world_size: int, mode: str = "manual", steps: int = 3, optimizer: str = "sgd", lr: float = 0.1,
    batch_size: int = 8, seed: int = 0, device: str = "cpu",
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Train the demo model as rank `rank` of an initialized process group; returns its weights.

    Every rank builds the same model (same seed) and the same batch, keeps its own slice of
    the batch, and runs :func:`train_step`. `mode` "manual" syncs with
    :func:`average_gradients`; "ddp" wraps the model in ``DistributedDataParallel`` instead.
    """
    model, opt = _demo_model_and_optimizer(optimizer, lr, seed, device)
    inputs, targets = (shard_batch(t, rank, world_size).to(device) for t in demo_data(batch_size, seed=seed))
    if mode == "ddp":
        device_ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
        net, sync = nn.parallel.DistributedDataParallel(model, device_ids=device_ids), None
    elif mode == "manual":
        net, sync = model, lambda m: average_gradients(m, world_size)
    else:
        raise ValueError(f"mode must be 'manual' or 'ddp', got {mode!r}")
    for _ in range(steps):
        train_step(net, opt, inputs, targets, sync=sync)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _spawned_worker(rank: int, world_size: int, init_method: str, out_path: str, modes: Sequence[str],
                    kwargs: dict) -> None:  # fmt: skip
    """What each process started by :func:`run_data_parallel` does (top level, so spawn can pickle it)."""
    torch.set_num_threads(1)
    init_process(rank, world_size, backend="gloo", init_method=init_method, timeout_s=60)
    try:
        results = {mode: train_data_parallel(rank, world_size, mode, **kwargs) for mode in modes}
        ring_input = torch.arange(10, dtype=torch.float32) * (rank + 1)  # (10,)
        ring, builtin = ring_all_reduce(ring_input.clone()), ring_input.clone()
        dist.all_reduce(builtin)
        results["ring_all_reduce"], results["all_reduce"] = ring, builtin
        torch.save(results, f"{out_path}.rank{rank}")
    finally:
        dist.destroy_process_group()


def run_data_parallel(out_dir: str, world_size: int = 2, modes: Sequence[str] = ("manual", "ddp"),
                      timeout_s: float = 120.0, **kwargs) -> list[dict]:  # fmt: skip
    """Start `world_size` gloo processes on 127.0.0.1 and train the demo model in each `mode`.

    Uses ``torch.multiprocessing.spawn``; the processes meet through a free TCP port on the
    loopback interface; if they have not finished after `timeout_s` seconds they are killed
    and TimeoutError is raised. Returns, for each rank, a dict: mode -> final state dict, plus the
    results of :func:`ring_all_reduce` and ``dist.all_reduce`` on a test tensor. `kwargs` go
    to :func:`train_data_parallel` (steps, optimizer, lr, batch_size, seed).
    """
    import torch.multiprocessing as mp

    init_method = f"tcp://127.0.0.1:{find_free_port()}"
    out_path = os.path.join(out_dir, "dp_result")
    args = (world_size, init_method, out_path, tuple(modes), kwargs)
    context = mp.start_processes(_spawned_worker, args=args, nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=0.5):  # raises if a process failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"{world_size} data-parallel processes did not finish within {timeout_s:g} s")
    return [torch.load(f"{out_path}.rank{r}") for r in range(world_size)]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for ``torchrun --nproc_per_node=N -m llm_course.distributed --out weights.pt``."""
    parser = argparse.ArgumentParser(description="Data-parallel training of a tiny GPT (run under torchrun).")
    parser.add_argument("--out", required=True, help="where rank 0 writes the final state dict")
    parser.add_argument("--mode", choices=["manual", "ddp"], default="ddp")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None, help="default: nccl if CUDA, else gloo")
    args = parser.parse_args(argv)
    backend = init_process(backend=args.backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    # The script, not the library, picks the device: one GPU per process for NCCL.
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu"
    if device != "cpu":
        torch.cuda.set_device(device)
    try:
        state = train_data_parallel(rank, world_size, args.mode, steps=args.steps, optimizer=args.optimizer,
                                    lr=args.lr, batch_size=args.batch_size, device=device)  # fmt: skip
        if rank == 0:
            torch.save(state, args.out)
            print(f"{backend}: {world_size} ranks, {args.steps} steps, weights written to {args.out}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
