"""Checks for the chapter 13 exercises (training at scale).

The student writes, with the signatures of the reference:

- ``average_gradients(model, world_size, all_reduce=None)``: sum every gradient over the
  ranks with ``all_reduce`` and divide by ``world_size``
  (:func:`llm_course.distributed.average_gradients`). The check starts no processes: it
  injects an ``all_reduce`` that plays the other ranks, adding their gradients in place,
  as ``torch.distributed.all_reduce`` does;
- ``data_parallel_gradients(model, loss_fn, inputs, targets, world_size)``: the gradients N
  data-parallel ranks end up with, simulated in one process, which must equal the gradient
  of the combined batch (:func:`llm_course.distributed.data_parallel_gradients`);
- ``memory_per_device(n_params, n_devices, strategy, param_bytes, grad_bytes,
  optimizer_bytes)``: bytes per device for DDP and ZeRO stages 1-3 / FSDP
  (:func:`llm_course.distributed.memory_per_device`).

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test cell) or
seeded random cases and edge cases compared with the reference (``hidden=True``). When a
wrong answer equals what a common mistake would give, the message names the mistake.
"""

from __future__ import annotations

import copy
import math
import random

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from llm_course import distributed as D
from llm_course.grading import CheckFailed, call, fail, forbid_reference, passed, short
from llm_course.grading.edges import edge


def _show(t: torch.Tensor) -> str:
    return short(torch.round(t.detach().double() * 1e4).div(1e4).tolist(), 110)


def _close(a, b, atol=1e-6, rtol=1e-5) -> bool:
    return (
        isinstance(a, torch.Tensor) and a.shape == b.shape
        and torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol)
    )  # fmt: skip


# --------------------------------------------------------------------------- average_gradients
class _FakeGroup:
    """Plays the other ranks of a process group for one model: its `all_reduce(tensor)` adds
    the other ranks' gradient of the parameter whose `.grad` `tensor` is, in place."""

    def __init__(self, model: nn.Module, others: dict[str, torch.Tensor]):
        self.model, self.others, self.calls = model, others, {}

    def all_reduce(self, tensor, op=None, group=None, async_op=False):
        if op is not None and op != dist.ReduceOp.SUM:
            fail(f"all_reduce was called with op={op}: use the default op, SUM (gloo has no AVG), and divide "
                 "by world_size yourself")  # fmt: skip
        if not isinstance(tensor, torch.Tensor):
            fail(f"all_reduce was called with {short(tensor, 60)} instead of a tensor: skip the parameters whose "
                 ".grad is None (frozen parameters, or ones the loss does not use)")  # fmt: skip
        for name, p in self.model.named_parameters():
            if p.grad is not None and tensor is p.grad:
                if name in self.calls:
                    fail(f"the gradient of {name!r} was all-reduced twice: each rank must reduce each gradient once, "
                         "or the other ranks' gradients are added twice")  # fmt: skip
                self.calls[name] = True
                tensor.add_(self.others[name])
                return None
        for name, p in self.model.named_parameters():
            if tensor is p or (isinstance(tensor, torch.Tensor) and tensor.data_ptr() == p.data_ptr()):
                fail(f"all_reduce was called on the weights of {name!r}, not on their gradient: data parallelism "
                     "averages the gradients (p.grad); the weights stay equal because every rank takes the same step")  # fmt: skip
        fail("all_reduce was called on a tensor that is not the .grad of a parameter (a copy, like p.grad.clone() "
             "or p.grad / world_size?): all_reduce changes the tensor you pass in place and returns None, so "
             "reduce p.grad itself, then divide it")  # fmt: skip


def _grad_case(model: nn.Module, world_size: int, g: torch.Generator, scale: float = 1.0, no_grad=()):
    """Give `model` (rank 0) random gradients; returns the other ranks' sum and the expected mean.

    Parameters named in `no_grad` stay trainable but get no gradient (.grad None), like a
    parameter the loss did not use on this step.
    """
    others, expected = {}, {}
    for name, p in model.named_parameters():
        if not p.requires_grad or name in no_grad:
            p.grad = None
            continue
        local = (torch.randn(p.shape, generator=g) * scale).round(decimals=2)
        rest = [(torch.randn(p.shape, generator=g) * scale).round(decimals=2) for _ in range(world_size - 1)]
        p.grad = local.clone()
        others[name] = sum(rest, torch.zeros_like(local))
        expected[name] = (local + others[name]) / world_size
    return others, expected


def _compare_average(fn, model: nn.Module, world_size: int, g: torch.Generator, what: str, no_grad=()) -> None:
    others, expected = _grad_case(model, world_size, g, no_grad=no_grad)
    local = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    group = _FakeGroup(model, others)
    name = getattr(fn, "__name__", "average_gradients")
    args = f"{name}(model, world_size={world_size}, all_reduce) ({what})"
    try:
        got = call(fn, model, world_size, group.all_reduce, copy_args=False)
    except CheckFailed as err:
        if "'NoneType'" in str(err):
            fail(f"{err}\n(all_reduce returns None: it changes the tensor you pass in place. Call all_reduce(p.grad), "
                 "then divide p.grad)")  # fmt: skip
        raise
    if got is not None and not isinstance(got, nn.Module):
        fail(f"{args} returned {short(got, 60)}; it should change the gradients in place and return None")
    for pname, p in model.named_parameters():
        if not torch.equal(p.detach(), weights[pname]):
            fail(f"{args} changed the weights of {pname!r}: only the gradients are averaged; the optimizer step "
                 "comes after")  # fmt: skip
        if pname not in expected:
            if p.grad is not None:
                fail(f"{args} gave {pname!r}, which had no gradient (.grad None), a gradient: leave "
                     "parameters whose .grad is None alone")  # fmt: skip
            continue
        if p.grad is None:
            fail(f"{args} set the gradient of {pname!r} to None")
        if pname not in group.calls:
            hint = ""
            if _close(p.grad, local[pname] / world_size):
                hint = " (it was divided by world_size but never summed over the ranks)"
            fail(f"{args} never all-reduced the gradient of {pname!r}{hint}: call all_reduce(p.grad) for every "
                 "parameter that has a gradient")  # fmt: skip
        if not _close(p.grad, expected[pname]):
            hint = ""
            if _close(p.grad, expected[pname] * world_size):
                hint = " (that is the sum over the ranks: divide it by world_size to get the mean)"
            elif world_size > 1 and _close(p.grad, expected[pname] * world_size / (world_size - 1)):
                hint = " (that is the sum divided by world_size - 1: there are world_size ranks)"
            fail(f"{args}: the gradient of {pname!r} should be the mean over the ranks, "
                 f"{_show(expected[pname].flatten()[:6])}..., got {_show(p.grad.flatten()[:6])}...{hint}")  # fmt: skip


def _frozen_mlp(g: torch.Generator) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    model[0].bias.requires_grad_(False)
    return model


def check_average_gradients(fn, hidden: bool = False) -> None:
    """average_gradients(model, world_size, all_reduce) leaves the mean gradient over the ranks.

    Edges the exercise defines, all in the hidden test: world_size = 1 (the mean of one rank); a frozen
    parameter (requires_grad=False) and a *trainable* parameter whose .grad is None because the loss
    did not use it (both skipped, neither crashes nor gets a gradient); every other gradient reduced
    exactly once, in place, with SUM then divided; the weights unchanged; None returned.
    """
    forbid_reference(fn, D.average_gradients)
    if not hidden:
        # 2 ranks: this rank's gradient [1, 2], the other's [3, 6] -> mean [2, 4].
        model = nn.Linear(2, 1, bias=False)
        model.weight.grad = torch.tensor([[1.0, 2.0]])
        group = _FakeGroup(model, {"weight": torch.tensor([[3.0, 6.0]])})
        call(fn, model, 2, group.all_reduce, copy_args=False)
        got = model.weight.grad
        if got is None or not _close(got, torch.tensor([[2.0, 4.0]])):
            hint = ""
            if got is not None and _close(got, torch.tensor([[4.0, 8.0]])):
                hint = " (that is the sum: divide by world_size)"
            elif got is not None and _close(got, torch.tensor([[0.5, 1.0]])):
                hint = " (only this rank's gradient, divided: all_reduce(p.grad) must run on p.grad itself)"
            fail(f"with gradients [1, 2] on this rank and [3, 6] on the other, the averaged gradient should be "
                 f"[[2.0, 4.0]], got {_show(got) if got is not None else None}{hint}")  # fmt: skip
        g = torch.Generator().manual_seed(0)
        _compare_average(fn, nn.Linear(3, 2), 4, g, "a Linear(3, 2), 4 ranks")
        passed(fn, "the worked example (2 ranks) and a linear layer on 4 ranks give the mean gradient")
        return
    g = torch.Generator().manual_seed(13)
    for world_size in (1, 2, 3, 8):
        _compare_average(fn, nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), world_size, g,
                         f"a 2-layer MLP, {world_size} rank{'s' if world_size > 1 else ''}")  # fmt: skip
    _compare_average(fn, _frozen_mlp(g), 3, g, "an MLP with a frozen bias (its .grad is None)")
    with edge("a trainable parameter that got no gradient"):
        _compare_average(fn, _WithUnused(), 2, g, "a trainable parameter the loss did not use: its .grad is None",
                         no_grad={"unused"})  # fmt: skip
    with edge("every parameter without a gradient"):
        _compare_average(fn, nn.Linear(3, 2), 4, g, "no parameter has a gradient yet", no_grad={"weight", "bias"})
    tiny = D.Transformer(D.demo_config(), generator=torch.Generator().manual_seed(1))
    _compare_average(fn, tiny, 2, g, "the chapter's tiny GPT, 2 ranks")
    passed(fn, "MLPs on 1 to 8 ranks, a frozen parameter and a tiny GPT all end with the mean gradient")


# --------------------------------------------------------------------------- data_parallel_gradients
def _mse(model, x, y):
    return F.mse_loss(model(x), y)


def _cross_entropy(model, x, y):
    return F.cross_entropy(model(x), y)


def _summed_cross_entropy(model, x, y):
    return F.cross_entropy(model(x), y, reduction="sum")


class _WithUnused(nn.Module):
    """A linear layer plus a parameter the loss never uses (its gradient stays None)."""

    def __init__(self):
        super().__init__()
        self.linear, self.unused = nn.Linear(3, 2), nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.linear(x)


def _full_batch_gradients(model, loss_fn, inputs, targets) -> list[torch.Tensor]:
    replica = copy.deepcopy(model)
    replica.zero_grad(set_to_none=True)
    loss_fn(replica, inputs, targets).backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in replica.parameters()]


def _dp_mistakes(model, loss_fn, inputs, targets, world_size):
    N = world_size
    shards = [(D.shard_batch(inputs, r, N), D.shard_batch(targets, r, N)) for r in range(N)]
    per_rank = [_full_batch_gradients(model, loss_fn, x, y) for x, y in shards]
    accumulated = [[sum(g[i] for g in per_rank[: r + 1]) for i in range(len(per_rank[0]))] for r in range(N)]
    return [
        ("the sum of the ranks' gradients: divide by world_size to average them",
         [sum(g[i] for g in per_rank) for i in range(len(per_rank[0]))]),
        ("the gradient of rank 0's slice only: loop over all world_size ranks",
         per_rank[0]),
        ("gradients accumulate in .grad across backward() calls: give each rank a fresh copy of the model "
         "(copy.deepcopy) or zero the gradients before each rank's backward",
         [sum(a[i] for a in accumulated) / N for i in range(len(per_rank[0]))]),
        ("divide the sum of the ranks' gradients by world_size, not by the batch size: each rank's loss is "
         "already a mean over its slice",
         [sum(g[i] for g in per_rank) / inputs.shape[0] for i in range(len(per_rank[0]))]),
    ]  # fmt: skip


def _compare_dp(fn, model, loss_fn, inputs, targets, world_size: int, what: str, mean_loss: bool = True) -> None:
    """`mean_loss`: the loss is a mean over the examples of equal slices, so the answer equals the
    gradient on the whole batch; otherwise (a sum, or a mean over a different number of tokens on
    each rank) it is only the mean of the ranks' gradients."""
    name = getattr(fn, "__name__", "data_parallel_gradients")
    args = f"{name}(model, loss_fn, inputs of shape {tuple(inputs.shape)}, targets, world_size={world_size}) ({what})"
    want = D.data_parallel_gradients(model, loss_fn, inputs, targets, world_size)
    full = _full_batch_gradients(model, loss_fn, inputs, targets)
    equal = all(_close(a, b, atol=1e-5) for a, b in zip(want, full))
    assert equal == mean_loss  # the equivalence the exercise is about, and where it stops
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = call(fn, model, loss_fn, inputs, targets, world_size, copy_args=False)
    for k, v in model.state_dict().items():
        if not torch.equal(v, before[k]):
            fail(f"{args} changed the model's weights ({k!r}): compute gradients only, on copies of the model")
    if isinstance(got, torch.Tensor) or not isinstance(got, list | tuple):
        fail(f"{args} should return a list with one gradient tensor per parameter, got {type(got).__name__}")
    names = [n for n, _ in model.named_parameters()]
    if len(got) != len(names):
        fail(f"{args} returned {len(got)} gradients for {len(names)} parameters ({', '.join(names)}): one per "
             "parameter, in model.parameters() order")  # fmt: skip
    for i, (pname, g, w) in enumerate(zip(names, got, want)):
        if g is None:
            fail(f"{args} returned None for {pname!r}, which gets no gradient from this loss: return zeros of "
                 "the parameter's shape instead (torch.zeros_like(p))")  # fmt: skip
        if not isinstance(g, torch.Tensor) or g.shape != w.shape:
            fail(f"{args}: the gradient of {pname!r} should be a tensor of shape {tuple(w.shape)}, got "
                 f"{tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__}")  # fmt: skip
        if not _close(g, w, atol=1e-5, rtol=1e-4):
            hint = ""
            mistakes = _dp_mistakes(model, loss_fn, inputs, targets, world_size)
            if not mean_loss:
                mistakes.insert(0, (
                    "the gradient on the whole batch, which equals the ranks' mean only for a mean loss over equal "
                    "slices: here it is not, so compute each rank's gradient on its slice and average them", full))  # fmt: skip
            for text, mistake in mistakes:
                if _close(g, mistake[i], atol=1e-5, rtol=1e-4):
                    hint = f" ({text})"
                    break
            should = "the gradient on the whole batch" if mean_loss else "the mean of the ranks' gradients"
            fail(f"{args}: the gradient of {pname!r} should equal {should}, "
                 f"{_show(w.flatten()[:5])}..., got {_show(g.flatten()[:5])}...{hint}")  # fmt: skip


def check_data_parallel_gradients(fn, hidden: bool = False) -> None:
    """data_parallel_gradients(...) averages per-slice gradients and so equals the combined-batch gradient.

    Edges the exercise defines, all in the hidden test: world_size = 1; a *sum* loss (the ranks' mean is
    the whole batch's gradient / world_size, not the whole batch's gradient); a mean over tokens whose
    padding is spread unevenly over the ranks (slices that count different numbers of tokens: again
    the ranks' mean, not the whole batch's gradient); a parameter the loss does not use and a frozen one
    (zeros); the model left unchanged; one tensor per parameter in model.parameters() order.
    """
    forbid_reference(fn, D.data_parallel_gradients, D.average_gradients)
    if not hidden:
        # y = w x with w = 0, squared error: on (x, y) pairs (1, 2) and (3, 0), the slices' gradients
        # d/dw (w x - y)^2 = 2 (w x - y) x are -4 and 0; their mean -2 is the gradient of the mean loss.
        model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.zero_()
        x, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [0.0]])
        got = call(fn, model, _mse, x, y, 2, copy_args=False)
        if not isinstance(got, list | tuple) or len(got) != 1 or not _close(got[0], torch.tensor([[-2.0]])):
            hint = ""
            if isinstance(got, list | tuple) and len(got) == 1 and isinstance(got[0], torch.Tensor):
                if _close(got[0], torch.tensor([[-4.0]])):
                    hint = " (-4 is the sum of the two ranks' gradients, or rank 0's alone: average over the ranks)"
            fail(f"for w = 0, pairs (x, y) = (1, 2) and (3, 0) on 2 ranks and the squared error, the ranks' "
                 f"gradients are -4 and 0, so the result should be [tensor([[-2.]])], got {short(got, 80)}{hint}")  # fmt: skip
        g = torch.Generator().manual_seed(0)
        model = nn.Linear(3, 2)
        _compare_dp(fn, model, _mse, torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g), 4,
                    "a linear layer, squared error, 8 examples on 4 ranks")  # fmt: skip
        passed(fn, "the worked example and a linear layer on 4 ranks give the combined batch's gradient")
        return
    rng, g = random.Random(13), torch.Generator().manual_seed(13)
    for _ in range(4):
        world_size = rng.choice([1, 2, 3, 4, 6])
        batch = world_size * rng.randint(1, 3)
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4))
        x, y = torch.randn(batch, 5, generator=g), torch.randint(0, 4, (batch,), generator=g)
        _compare_dp(fn, model, _cross_entropy, x, y, world_size,
                    f"an MLP, cross-entropy, {batch} examples on {world_size} ranks")  # fmt: skip
    _compare_dp(fn, _WithUnused(), _mse, torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g), 2,
                "a parameter the loss does not use")  # fmt: skip
    tiny = D.Transformer(D.demo_config(), generator=torch.Generator().manual_seed(2))
    inputs, targets = D.demo_data(batch_size=4, seed=3)
    _compare_dp(fn, tiny, D.lm_loss, inputs, targets, 2, "the chapter's tiny GPT, 4 sequences on 2 ranks")
    with edge("world_size = 1"):
        _compare_dp(fn, nn.Linear(3, 2), _mse, torch.randn(3, 3, generator=g), torch.randn(3, 2, generator=g), 1,
                    "one rank: the whole batch")  # fmt: skip
    with edge("a sum loss"):
        x, y = torch.randn(6, 5, generator=g), torch.randint(0, 4, (6,), generator=g)
        _compare_dp(fn, nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)), _summed_cross_entropy, x, y, 3,
                    "an MLP, a cross-entropy summed over the examples, 6 examples on 3 ranks", mean_loss=False)  # fmt: skip
    with edge("padding spread unevenly over the ranks"):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 4, (8,), generator=g)
        y[:3] = -100  # rank 0 of 2 scores 1 example, rank 1 scores 4
        _compare_dp(fn, nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)), _cross_entropy, x, y, 2,
                    "cross-entropy with ignored targets: rank 0 scores 1 example, rank 1 scores 4", mean_loss=False)  # fmt: skip
    with edge("a frozen parameter"):
        frozen = _WithUnused()
        frozen.linear.bias.requires_grad_(False)
        _compare_dp(fn, frozen, _mse, torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g), 2,
                    "a frozen bias and an unused parameter: zeros for both")  # fmt: skip
    passed(fn, "MLPs on 1 to 6 ranks, sum and uneven losses, unused and frozen parameters and a tiny GPT are right")


# --------------------------------------------------------------------------- memory_per_device
def _memory_mistakes(P, N, strategy, pb, gb, ob):
    return [
        ("FSDP (ZeRO stage 3) shards the parameters too, not only gradients and optimizer states",
         P * (pb + (gb + ob) / N) if strategy == "fsdp" else None),
        ("ZeRO stage 1 shards only the optimizer states; the gradients stay whole",
         P * (pb + (gb + ob) / N) if strategy == "zero1" else None),
        ("ZeRO stage 2 shards the gradients as well as the optimizer states",
         P * (pb + gb + ob / N) if strategy == "zero2" else None),
        ("with DDP every device holds a full copy of everything: nothing is divided by n_devices",
         P * (pb + gb + ob) / N if strategy == "ddp" else None),
        ("ZeRO shards the optimizer states first (stage 1), then the gradients (2), then the parameters (3)",
         P * (pb / N + gb + ob) if strategy == "zero1" else P * ((pb + gb) / N + ob) if strategy == "zero2" else None),
        ("count parameters, gradients *and* optimizer states", P * (pb + ob) if strategy == "ddp" else None),
        ("use the arguments param_bytes, grad_bytes and optimizer_bytes rather than the numbers 2, 2 and 12",
         D.memory_per_device(P, N, strategy)),
    ]  # fmt: skip


def _compare_memory(fn, P, N, strategy, kwargs: dict, what: str) -> None:
    name = getattr(fn, "__name__", "memory_per_device")
    shown = "".join(f", {k}={v}" for k, v in kwargs.items())
    args = f"{name}({P:g}, {N}, {strategy!r}{shown}) ({what})"
    want = D.memory_per_device(P, N, strategy, **kwargs)
    got = call(fn, P, N, strategy, **kwargs)
    if isinstance(got, bool) or not isinstance(got, int | float) or not math.isfinite(got):
        fail(f"{args} should return a number of bytes, got {short(got, 60)}")
    if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6):
        pb, gb, ob = kwargs.get("param_bytes", 2), kwargs.get("grad_bytes", 2), kwargs.get("optimizer_bytes", 12)
        hint = ""
        for text, value in _memory_mistakes(P, N, strategy, pb, gb, ob):
            if value is not None and math.isclose(got, value, rel_tol=1e-9):
                hint = f" ({text})"
                break
        fail(f"{args} should be {want:.6g} bytes, got {got:.6g}{hint}")


def check_memory_per_device(fn, hidden: bool = False) -> None:
    """memory_per_device(...) equals llm_course.distributed.memory_per_device.

    Edges the exercise defines, all in the hidden test: n_devices = 1 (every strategy holds everything);
    byte counts that all differ (1, 3, 7), so that using one in place of another shows; zero optimizer
    bytes; each strategy's own sharding (stage 1 the optimizer, 2 also the gradients, 3 everything).
    """
    forbid_reference(fn, D.memory_per_device)
    if not hidden:
        # The ZeRO paper's example: 7.5B parameters, 64 devices -> 120, 31.4, 16.6, 1.9 GB.
        for strategy in D.STRATEGIES:
            _compare_memory(fn, 7.5e9, 64, strategy, {}, "the ZeRO paper's 7.5B model on 64 devices")
        _compare_memory(fn, 1000, 1, "fsdp", {}, "one device: nothing to share")
        fp32 = {"param_bytes": 4, "grad_bytes": 4, "optimizer_bytes": 8}  # float32 Adam: no master copy needed
        for strategy in D.STRATEGIES:
            _compare_memory(fn, 1e9, 8, strategy, fp32, "1B parameters trained in float32 on 8 devices")
        passed(fn, "the ZeRO paper's 7.5B model on 64 devices and a float32 1B model on 8, for all four strategies")
        return
    rng = random.Random(13)
    for _ in range(24):
        P = rng.choice([124e6, 6.74e9, 69e9, rng.randint(1, 10**6)])
        N = rng.choice([1, 2, 8, 64, rng.randint(2, 4096)])
        kwargs = rng.choice([{}, {"param_bytes": 4, "grad_bytes": 4, "optimizer_bytes": 8},
                             {"param_bytes": 2, "grad_bytes": 4, "optimizer_bytes": 12}])  # fmt: skip
        for strategy in D.STRATEGIES:
            _compare_memory(fn, P, N, strategy, kwargs, "random sizes and byte counts")
    for N in (1, 5):
        for kwargs in ({"param_bytes": 1, "grad_bytes": 3, "optimizer_bytes": 7}, {"optimizer_bytes": 0}):
            with edge(f"{N} device{'s' if N > 1 else ''}, bytes {kwargs}"):
                for strategy in D.STRATEGIES:
                    _compare_memory(fn, 1000, N, strategy, kwargs, "distinct byte counts")
    passed(fn, "random model sizes, device counts and byte counts for all four strategies")
