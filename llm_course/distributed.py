"""Data-parallel training with ``torch.distributed``: all-reduce, the Trainer on N ranks, memory per rank.

Data parallelism keeps a copy of the model on each of N processes ("ranks"). Each rank
takes its own slice of the batch, computes gradients on it, and then the ranks *all-reduce*
their gradients: every rank ends up with the sum, divides it by N, and takes the same
optimizer step. With a loss that is a mean over examples and slices of equal size, the
averaged gradient is the gradient of the combined batch, so N ranks train like one process
with an N times larger batch (up to float rounding).

What is here:

- :func:`average_gradients`: the all-reduce that averages gradients (sum, then divide),
  written against an injectable ``all_reduce`` so it can also run without a process group;
  :func:`data_parallel_gradients`, the single-process simulation of N ranks that the
  equivalence rests on;
- :func:`ring_all_reduce`: the ring algorithm with point-to-point ``send``/``recv``, for
  teaching (``dist.all_reduce`` does the same, faster); :func:`ring_all_reduce_simulated`
  runs the same schedule over a list of tensors in one process;
- the course's ``Trainer`` on N ranks (``torchrun ... -m llm_course train --parallel ddp``,
  see ``llm_course.train_cli``): :func:`setup_from_env` joins torchrun's process group,
  :func:`wrap_model` wraps the model in DDP or FSDP2 (``fully_shard`` per block, then the
  root), :func:`all_reduce_mean` averages what the trainer logs and decides on, and
  :func:`save_sharded` / :func:`load_sharded` write and read checkpoints with
  ``torch.distributed.checkpoint``, on any number of ranks;
- :func:`memory_per_device`: bytes per device for DDP and the three ZeRO stages (stage 3
  is what PyTorch's FSDP does), after Rajbhandari et al., "ZeRO: Memory Optimizations Toward
  Training Trillion Parameter Models" (2020); :func:`measured_memory_per_rank` counts what a
  rank really holds, and :func:`measure_memory_per_rank` runs DDP and FSDP on gloo processes.

The library never picks a device. The only hardware choice here is the *backend*:
:func:`default_backend` says "nccl" when CUDA is available and "gloo" otherwise; under
torchrun, :func:`setup_from_env` puts NCCL ranks on ``cuda:LOCAL_RANK`` and gloo ranks on
the CPU.

Left out: tensor and pipeline parallelism, mixed-precision FSDP policies, and activation
memory (it depends on batch and sequence length, not on the sharding strategy).
"""

from __future__ import annotations

import copy
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from llm_course.transformer import Transformer, TransformerConfig  # noqa: F401  (the exercise checks use D.Transformer)

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
    timeout = timedelta(seconds=timeout_s)
    store, rank, world_size = next(dist.rendezvous(init_method, rank, world_size, timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is not None:
        # torchrun's store outlives a restart, and with it the keys where the failed attempt's ranks
        # wrote their addresses: a restarted rank could read a dead rank's address before the new one
        # is written ("Connection refused"). Each attempt gets keys of its own.
        store = dist.PrefixStore(f"llm_course/attempt_{attempt}", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
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
# The tiny model of the worked examples and of the exercise checks
# ---------------------------------------------------------------------------------------


def demo_config() -> TransformerConfig:
    """The tiny GPT of the chapter's worked examples (a few thousand parameters)."""
    return TransformerConfig(vocab_size=32, context_length=16, d_model=32, n_layers=2, n_heads=4)


def demo_data(batch_size: int = 8, seq_len: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of random token sequences: inputs and next-token targets (B, T)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, demo_config().vocab_size, (batch_size, seq_len + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


# ---------------------------------------------------------------------------------------
# The course's Trainer on N ranks: DDP and FSDP2
# ---------------------------------------------------------------------------------------

PARALLEL = ("none", "ddp", "fsdp")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process in the default process group; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for outside a process group)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all ranks (a new tensor; `value` itself outside a process group).

    The trainer averages its loss and metrics with it before logging *and* before its spike
    checks, so that every rank takes the same decision (skip, roll back) on the same numbers.
    """
    world = rank_and_world()[1]
    if world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)  # SUM: gloo has no AVG
    return total / world


def setup_from_env(backend: str | None = None, timeout_s: float = 600.0) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...) and
    return this rank's device: ``cuda:LOCAL_RANK`` with NCCL, the CPU with gloo.

    Outside torchrun (no WORLD_SIZE in the environment) nothing is joined and the CPU is returned.
    """
    if "WORLD_SIZE" not in os.environ:
        return torch.device("cpu")
    backend = backend or default_backend()
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        init_process(backend=backend, timeout_s=timeout_s)
    return device


def wrap_model(model: nn.Module, parallel: str = "none") -> nn.Module:
    """`model` (on its device, in the process group) ready for data-parallel training.

    - "none": `model` itself;
    - "ddp": `DistributedDataParallel(model)`: a full copy per rank, gradients all-reduced in
      buckets during `backward`;
    - "fsdp": FSDP2, ``fully_shard`` on every transformer block, then on the root (the
      embeddings, final norm and head): each rank keeps 1/N of every parameter, gradient and
      optimizer state, and all-gathers a block's weights just before using them.

    Call it before the optimizer is built: FSDP2 replaces the parameters by sharded DTensors.
    The returned module keeps `model.config`, which the Trainer reads.
    """
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if parallel == "none":
        return model
    if not dist.is_initialized():
        raise RuntimeError(f"--parallel {parallel} needs a process group: start the run with torchrun")
    if parallel == "ddp":
        device = next(model.parameters()).device
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        wrapped.config = model.config  # a plain attribute: the Trainer reads model.config
        return wrapped
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)  # one unit per block: its weights are gathered together, then freed
    fully_shard(model)  # the root unit: embeddings, final norm, head
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (an FSDP2 model is its own module)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    """True if some parameter of `model` is a DTensor (FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _local_bytes(t: torch.Tensor) -> int:
    """Bytes of `t` held by this rank: its local shard for a DTensor."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def measured_memory_per_rank(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state that this rank holds, counted tensor by tensor.

    Call it after an optimizer step and before `zero_grad`, when the gradients exist. With
    FSDP the parameters and gradients are local shards (the gathered copy of one block during
    its forward or backward pass is not counted: it is freed after use); tied parameters count once.
    """
    params = list(dict.fromkeys(model.parameters()))  # tied tensors once, in order
    grads = [p.grad for p in params if p.grad is not None]
    states = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {
        "parameters": sum(_local_bytes(p) for p in params),
        "gradients": sum(_local_bytes(g) for g in grads),
        "optimizer": sum(_local_bytes(t) for t in states),
    }


# ---------------------------------------------------------------------------------------
# Sharded checkpoints: torch.distributed.checkpoint (DCP)
# ---------------------------------------------------------------------------------------


def in_process_group() -> bool:
    """True inside an initialized default process group (a torchrun run, of any size)."""
    return dist.is_available() and dist.is_initialized()


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: str | os.PathLike) -> bool:
    """Write the model's and the optimizer's state to the folder `path` with DCP; a collective.

    Every rank writes the shards it holds (with DDP, DCP keeps one copy of what all ranks
    share), plus metadata that maps them to the full tensors, so that any number of ranks, or
    one process without a process group, can read them back (`load_sharded`). The keys are
    the unwrapped model's parameter names. An optimizer that has not stepped yet has no state
    to save: asking for it would make PyTorch create it with a zero step, which moves Adam's
    step count. Returns whether the optimizer state was saved.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer.state:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
    else:
        state = {"model": get_model_state_dict(model)}
    dcp.save(state, checkpoint_id=str(path))
    return "optimizer" in state


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: str | os.PathLike,
                 with_optimizer: bool = True) -> None:  # fmt: skip
    """Read a `save_sharded` folder into `model` and `optimizer`, resharding to this run's ranks.

    The number of ranks and the wrapping (none, DDP, FSDP) may differ from the run that
    saved it. With `with_optimizer` False (a checkpoint taken before the first step) the
    optimizer is reset to no state. Any gradients are dropped first.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    optimizer.zero_grad(set_to_none=True)  # PyTorch creates missing optimizer state only when no grads exist
    if with_optimizer:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
    else:
        optimizer.state.clear()
        state = {"model": get_model_state_dict(model)}
    with warnings.catch_warnings():  # one process reading a sharded checkpoint is intended here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    if with_optimizer:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        set_model_state_dict(model, state["model"])


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on the CPU, on rank 0 (None on the other ranks); a collective with FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        state = unwrap(model).state_dict()
        return {k: v.detach().cpu() for k, v in state.items()} if rank_and_world()[0] == 0 else None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered to rank 0 only
    state = get_model_state_dict(model, options=options)
    return state if rank_and_world()[0] == 0 else None


# ---------------------------------------------------------------------------------------
# Memory per rank, measured
# ---------------------------------------------------------------------------------------


def _memory_worker(rank: int, world_size: int, init_method: str, out_path: str, config: TransformerConfig,
                   parallels: Sequence[str]) -> None:  # fmt: skip
    """One rank of `measure_memory_per_rank` (top level, so that spawn can pickle it)."""
    from llm_course.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    init_process(rank, world_size, backend="gloo", init_method=init_method, timeout_s=120)
    try:
        tokens = torch.randint(0, config.vocab_size, (4096,), generator=torch.Generator().manual_seed(0))
        results = {}
        for parallel in parallels:
            model = wrap_model(Transformer(config, generator=torch.Generator().manual_seed(0)), parallel)
            trainer = Trainer(model, TrainConfig(batch_size=1, seq_len=16, max_steps=2, warmup_steps=1), tokens, log=None)
            trainer.train_step()  # creates the optimizer's state
            loss, _ = trainer.compute_loss(trainer.get_batch())
            loss.backward()  # the gradients, as they are when the optimizer steps
            results[parallel] = measured_memory_per_rank(model, trainer.optimizer)
        torch.save(results, f"{out_path}.rank{rank}")
    finally:
        dist.destroy_process_group()


def measure_memory_per_rank(config: TransformerConfig, world_size: int = 2, parallels: Sequence[str] = ("ddp", "fsdp"),
                            timeout_s: float = 300.0) -> list[dict[str, dict[str, int]]]:  # fmt: skip
    """Train `config`'s model one step with the course's Trainer in `world_size` gloo processes,
    wrapped in each of `parallels`, and return, for each rank, {parallel: measured_memory_per_rank}.

    The processes are started with ``torch.multiprocessing`` (spawn) and meet on a free port of
    127.0.0.1; after `timeout_s` seconds they are killed and TimeoutError is raised.
    """
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "memory")
        args = (world_size, f"tcp://127.0.0.1:{find_free_port()}", out_path, config, tuple(parallels))
        context = mp.start_processes(_memory_worker, args=args, nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        while not context.join(timeout=0.5):  # raises if a process failed
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"{world_size} processes did not finish within {timeout_s:g} s")
        return [torch.load(f"{out_path}.rank{r}") for r in range(world_size)]
