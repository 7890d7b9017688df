"""Checks for the chapter 01 exercises (neural networks from first principles).

The student writes, with the signatures of :mod:`llm_course.nn_basics`:

- ``linear_forward(x, W, b=None) -> y``: y = x W^T + b, x (B, in), W (out, in), y (B, out)
- ``linear_backward(x, W, grad_out) -> (grad_x, grad_W, grad_b)``: by hand, without autograd
- ``sgd_step(params, grads, lr) -> new_params``: p - lr * g for each parameter, inputs unchanged
- ``rnn_gradient_norms(W_hh, W_xh, xs, h0) -> [||dL/dh_1||, ..., ||dL/dh_T||]`` for the RNN
  h_t = tanh(W_hh h_{t-1} + W_xh x_t) and L = sum(h_T) (by hand or with autograd)

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test cell) or
seeded random cases and edge cases compared with the reference (``hidden=True``, the hidden
test cell). The gradient checks run in float64, where the reference is exact to about 1e-15,
so a tolerance of 1e-10 separates rounding from mistakes. When a wrong answer equals what a
common mistake gives (a transposed W, a gradient averaged instead of summed, the tanh
derivative taken at the wrong place, ...), the message names the mistake.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch.nn import functional as F

from llm_course import nn_basics
from llm_course.grading import (
    CheckFailed,
    _code_objects,
    call,
    expect_tensor,
    fail,
    first_difference,
    forbid_reference,
    passed,
    seeded,
    short,
)

from llm_course.grading.edges import edge  # noqa: E402

F64 = torch.float64
TOL = dict(atol=1e-10, rtol=1e-10)  # float64, unit-scale values, a few products deep
# The RNN norms range from 1e-30 to 1e+30: compare relatively, with a floor far below the largest norm
# (near-saturated units make 1 - h^2 sensitive to the order of the sums in a student's forward pass).
NORM_RTOL, NORM_FLOOR = 1e-6, 1e-14


def _show(t: torch.Tensor, limit: int = 100) -> str:
    """A tensor as a short nested list with 4 decimals."""
    return short(torch.round(t.detach().double() * 1e4).div(1e4).tolist(), limit)


def _close(a: torch.Tensor, b: torch.Tensor, **tol) -> bool:
    tol = tol or TOL
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), **tol)


def _diagnose(got: torch.Tensor, mistakes: list[tuple[str, Callable[[], torch.Tensor]]], **tol) -> str:
    """The hint of the first mistake whose result equals `got` (each mistake is computed lazily)."""
    for hint, compute in mistakes:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                candidate = compute()
        except Exception:  # noqa: BLE001 - a mistake that cannot be computed for these shapes is not it
            continue
        if _close(got, candidate, **tol):
            return f" ({hint})"
    return ""


def _tensor(fn, got, what: str) -> torch.Tensor:
    return expect_tensor(fn, got, what).detach()


def _raised(err: CheckFailed) -> str:
    """The 'raised SomeError: ...' part of a call() failure, without the long list of arguments."""
    text = str(err)
    return text[text.index(" raised ") + 1 :] if " raised " in text else text


def _forbid_autograd(fn, why: str) -> None:
    """Fail if fn's own code uses autograd (.backward(), torch.autograd, requires_grad)."""
    code = getattr(getattr(fn, "__wrapped__", fn), "__code__", None)
    if code is None:
        return
    names = {name for c in _code_objects(code) for name in c.co_names}
    used = sorted(names & {"backward", "autograd", "requires_grad", "requires_grad_", "func"})
    if used:
        fail(f"{fn.__name__} uses autograd ({', '.join(used)}): {why} (this earns no points).")


# --------------------------------------------------------------------------- linear_forward
def _forward_mistakes(x, W, b):
    plus_b = 0.0 if b is None else b
    return [
        ("you computed x @ W; W is laid out (out_features, in_features) like nn.Linear.weight, so use x @ W.T",
         lambda: x @ W + plus_b),
        ("the bias is missing: add b (one per output, broadcast over the batch)", lambda: x @ W.T),
        ("the bias was subtracted: y = x @ W.T + b", lambda: x @ W.T - plus_b),
        ("no activation here: linear_forward is the affine part Wx + b only; sigma comes after",
         lambda: torch.sigmoid(x @ W.T + plus_b)),
        ("no activation here: linear_forward is the affine part Wx + b only; ReLU comes after",
         lambda: torch.relu(x @ W.T + plus_b)),
        ("the bias was added once as a sum, b.sum(); add the vector b to every row", lambda: x @ W.T + b.sum()),
    ]  # fmt: skip


def _compare_linear_forward(fn, x, W, b=None, label: str = "", expected: torch.Tensor | None = None) -> None:
    want = nn_basics.linear_forward(x, W, b) if expected is None else expected
    what = label or f"x {tuple(x.shape)}, W {tuple(W.shape)}, b {'None' if b is None else tuple(b.shape)}"
    try:
        got = call(fn, x, W, b)
    except CheckFailed as err:
        if "cannot be multiplied" in str(err) or "size of tensor" in str(err):
            fail(
                f"linear_forward({what}) {_raised(err)}. W has shape (out_features, in_features) = {tuple(W.shape)}, "
                f"like nn.Linear.weight; for x of shape (B, in_features) = {tuple(x.shape)} the product is x @ W.T, "
                "of shape (B, out)."
            )
        raise
    got = _tensor(fn, got, "y = x W^T + b, one row per example")
    B, n_out = x.shape[0], W.shape[0]
    if tuple(got.shape) != (B, n_out):
        hint = ""
        if tuple(got.shape) == (n_out, B):
            hint = (
                ": that is one column per example, W @ x.T; the batch comes first, so compute x @ W.T "
                "(the same numbers, transposed)"
            )
        elif b is not None and tuple(got.shape) in ((n_out, n_out), (B, B)):
            hint = ": b was broadcast as a column; add it as a row vector of shape (out,), y = x @ W.T + b"
        fail(
            f"linear_forward({what}) should have shape (B, out_features) = {(B, n_out)}, "
            f"got {tuple(got.shape)}{hint}."
        )
    if got.dtype != x.dtype:
        fail(f"linear_forward returned dtype {got.dtype} for {x.dtype} inputs; keep the inputs' dtype.")
    tol = {F64: TOL, torch.bfloat16: dict(atol=5e-2, rtol=2e-2)}.get(x.dtype, dict(atol=1e-6, rtol=1e-6))
    if x.dtype == torch.bfloat16:  # compare with float64 arithmetic on the same (rounded) inputs
        want = nn_basics.linear_forward(x.double(), W.double(), None if b is None else b.double())
    if not _close(got, want, **tol):
        hint = _diagnose(got, _forward_mistakes(x, W, b), atol=1e-6, rtol=1e-6)
        small = f"\n  expected {_show(want)}\n  got      {_show(got)}" if want.numel() <= 12 else ""
        fail(f"linear_forward({what}) is wrong: {first_difference(got, want)}{hint}.{small}")


def check_linear_forward(fn, hidden: bool = False) -> None:
    """linear_forward(x, W, b=None) = x @ W.T + b, shape (B, out).

    Edges the exercise defines, all in the hidden test: b=None (no bias); one example, one input
    feature, one output; a square W (a transposed W would still run); the result keeps x's dtype for
    float64, float32 and bfloat16 inputs, with and without a bias.
    """
    forbid_reference(fn, nn_basics.linear_forward, nn_basics.mlp_forward)
    try:
        forbid_reference(fn, F.linear, torch.nn.Linear)
    except CheckFailed:
        fail(
            f"{fn.__name__} calls torch's own linear layer; the exercise is to write x W^T + b yourself "
            "(this earns no points)."
        )
    if not hidden:
        x = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=F64)
        W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)  # 2 inputs -> 3 outputs
        b = torch.tensor([0.5, -1.0, 0.0], dtype=F64)
        want = torch.tensor([[1.5, 1.0, 3.0], [0.5, -2.0, -1.0]], dtype=F64)
        _compare_linear_forward(fn, x, W, b, "the worked example (expected [[1.5, 1, 3], [0.5, -2, -1]])", want)
        want = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, -1.0]], dtype=F64)
        label = "the worked example with b=None (expected [[1, 2, 3], [0, -1, -1]])"
        _compare_linear_forward(fn, x, W, None, label, want)
        g = seeded(10)
        x, W, b = (torch.randn(*shape, generator=g, dtype=F64) for shape in [(4, 3), (5, 3), (5,)])
        _compare_linear_forward(fn, x, W, b)
        passed(fn, "the worked example (with and without bias) and a random batch are right")
        return
    g = seeded(11)
    shapes = [(1, 1, 1), (1, 4, 3), (6, 2, 5), (3, 4, 4), (5, 5, 5), (32, 10, 7), (2, 1, 6), (7, 6, 1)]
    n = 0
    for i, (B, n_in, n_out) in enumerate(shapes):
        x = torch.randn(B, n_in, generator=g, dtype=F64)
        W = torch.randn(n_out, n_in, generator=g, dtype=F64)
        b = None if i % 3 == 2 else torch.randn(n_out, generator=g, dtype=F64)
        _compare_linear_forward(fn, x, W, b)
        n += 1
    x, W, b = torch.randn(8, 3, generator=g), torch.randn(2, 3, generator=g), torch.randn(2, generator=g)
    _compare_linear_forward(fn, x, W, b, "float32 inputs")
    for bias in (True, False):
        name = f"bfloat16 inputs, {'with a bias' if bias else 'b=None'}"
        with edge(name):
            x, W, b = (torch.randn(*shape, generator=g).to(torch.bfloat16) for shape in [(4, 3), (2, 3), (2,)])
            _compare_linear_forward(fn, x, W, b if bias else None, name)
    passed(fn, f"all {n + 3} random and edge cases (one example, one feature, square W, no bias, float32, bf16) are right")


# --------------------------------------------------------------------------- linear_backward
def _backward_mistakes(x, W, grad_out, which: int):
    B = x.shape[0]
    if which == 0:  # grad_x
        return [
            ("grad_x = grad_out @ W, not grad_out @ W.T: y = x W^T, so going back multiplies by W",
             lambda: grad_out @ W.T),
            ("grad_x must not be averaged over the batch: each example has its own row", lambda: grad_out @ W / B),
            ("the sign is flipped: grad_x is grad_out @ W, not its negative", lambda: -(grad_out @ W)),
            ("that is x, not its gradient: grad_x = grad_out @ W", lambda: x),
        ]  # fmt: skip
    if which == 1:  # grad_W
        return [
            ("grad_W is the transpose of the right answer: dL/dW[i, j] = sum over the batch of "
             "grad_out[b, i] * x[b, j], which is grad_out.T @ x, not x.T @ grad_out", lambda: x.T @ grad_out),
            ("grad_W was averaged over the batch: sum it (grad_out.T @ x); any 1/B of the loss is already in grad_out",
             lambda: grad_out.T @ x / B),
            ("the sign is flipped: grad_W is grad_out.T @ x, not its negative", lambda: -(grad_out.T @ x)),
            ("only the first example was used: grad_out.T @ x sums over the whole batch",
             lambda: grad_out[:1].T @ x[:1]),
        ]  # fmt: skip
    return [  # grad_b
        ("grad_b was averaged over the batch: sum grad_out over dim 0 (the loss's 1/B is already in grad_out)",
         lambda: grad_out.mean(dim=0)),
        ("the sign is flipped: grad_b is grad_out.sum(dim=0), not its negative", lambda: -grad_out.sum(dim=0)),
        ("grad_b was summed over the outputs (dim 1); sum over the batch, dim 0", lambda: grad_out.sum(dim=1)),
        ("only the first example was used: sum over the batch, grad_out.sum(dim=0)", lambda: grad_out[0]),
        ("grad_b was multiplied by the bias's input; y depends on b with slope 1: grad_b = grad_out.sum(dim=0)",
         lambda: (grad_out * x.sum(dim=1, keepdim=True)).sum(dim=0)),
    ]  # fmt: skip


NAMES = ("grad_x", "grad_W", "grad_b")


def _shape_hint(name: str, got: tuple, want: tuple, x, W) -> str:
    B, n_in = x.shape
    n_out = W.shape[0]
    if name == "grad_W" and got == (n_in, n_out) and got != want:
        return (
            f"grad_W has shape {got} but W is {want}: did you compute x.T @ grad_out instead of grad_out.T @ x? "
            "A gradient always has the shape of its variable"
        )
    if name == "grad_b":
        if got == (B, n_out):
            return "grad_b has one row per example: b is shared by the whole batch, so sum over it, grad_out.sum(dim=0)"
        if got == ():
            return "grad_b is a single number: sum over the batch only, grad_out.sum(dim=0), one value per output"
        if got == (1, n_out):
            return "drop the kept dimension: grad_out.sum(dim=0), not keepdim=True"
        if got == (B,):
            return "grad_b was summed over the outputs (dim 1); sum over the batch, dim 0"
    if name == "grad_x" and got == (n_in, B):
        return "grad_x is transposed: it must have x's shape (B, in), grad_out @ W"
    if name == "grad_x" and got == (B, n_out):
        return "grad_x has the shape of grad_out: multiply by W to go back to the inputs, grad_out @ W"
    return f"a gradient always has the shape of its variable: {name} is {want}"


def _compare_linear_backward(fn, x, W, grad_out, label: str = "", expected=None) -> None:
    want = nn_basics.linear_backward(x, W, grad_out) if expected is None else expected
    what = label or f"x {tuple(x.shape)}, W {tuple(W.shape)}, grad_out {tuple(grad_out.shape)}"
    try:
        got = call(fn, x, W, grad_out)
    except CheckFailed as err:
        if "cannot be multiplied" in str(err):
            fail(
                f"linear_backward({what}) {_raised(err)}. Write down the shapes first: x is (B, in) = "
                f"{tuple(x.shape)}, W is (out, in) = {tuple(W.shape)}, grad_out is (B, out) = {tuple(grad_out.shape)}; "
                "grad_x = grad_out @ W is (B, in) and grad_W = grad_out.T @ x is (out, in)."
            )
        raise
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        fail(
            f"linear_backward should return three tensors (grad_x, grad_W, grad_b), got "
            f"{type(got).__name__}{f' of length {len(got)}' if isinstance(got, (tuple, list)) else ''}: {short(got)}"
        )
    got = [_tensor(fn, g, f"{name}, the gradient with respect to {name[5:]}") for g, name in zip(got, NAMES)]
    for i, (g, name) in enumerate(zip(got, NAMES)):
        if _close(g, want[i]):
            continue
        others = [NAMES[j] for j in range(3) if j != i and _close(g, want[j])]
        if others:
            fail(
                f"linear_backward({what}) returned {others[0]} where {name} belongs: return the three gradients "
                f"in the order (grad_x, grad_W, grad_b), with shapes {[tuple(t.shape) for t in want]}."
            )
    for i, (g, w, name) in enumerate(zip(got, want, NAMES)):
        if tuple(g.shape) != tuple(w.shape):
            fail(
                f"linear_backward({what}): {name} should have shape {tuple(w.shape)}, got {tuple(g.shape)}: "
                f"{_shape_hint(name, tuple(g.shape), tuple(w.shape), x, W)}."
            )
        if g.dtype != w.dtype:
            fail(f"linear_backward returned {name} as {g.dtype} for {w.dtype} inputs; keep the inputs' dtype.")
    for i, (g, w, name) in enumerate(zip(got, want, NAMES)):
        if not _close(g, w):
            hint = _diagnose(g, _backward_mistakes(x, W, grad_out, i))
            small = f"\n  expected {_show(w)}\n  got      {_show(g)}" if w.numel() <= 12 else ""
            fail(f"linear_backward({what}): {name} is wrong: {first_difference(g, w)}{hint}.{small}")


def check_linear_backward(fn, hidden: bool = False) -> None:
    """linear_backward(x, W, grad_out) = (grad_out @ W, grad_out.T @ x, grad_out.sum(0)), by hand.

    Edges the exercise defines, all in the hidden test: each gradient with the shape of its variable
    when B = 1, in = 1 or out = 1 (no squeeze); grad_b summed, not averaged, over the batch; square W
    (a transposed product would still run); the inputs' dtype kept.
    """
    forbid_reference(fn, nn_basics.linear_backward, nn_basics.mlp_backward)
    _forbid_autograd(fn, "the exercise is to apply the chain rule by hand; autograd is what it is checked against")
    if not hidden:
        # y = x W^T with one example, two inputs, one output; L = 3 y, so grad_out = [[3]].
        x, W = torch.tensor([[2.0, -1.0]], dtype=F64), torch.tensor([[0.5, 4.0]], dtype=F64)
        expected = tuple(torch.tensor(v, dtype=F64) for v in ([[1.5, 12.0]], [[6.0, -3.0]], [3.0]))
        _compare_linear_backward(
            fn, x, W, torch.tensor([[3.0]], dtype=F64),
            "the worked example x = [[2, -1]], W = [[0.5, 4]], grad_out = [[3]] (expected grad_x = [[1.5, 12]], "
            "grad_W = [[6, -3]], grad_b = [3])", expected,
        )  # fmt: skip
        # Two examples, 3 inputs -> 2 outputs, integers: the sums over the batch are visible.
        x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], dtype=F64)
        W = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]], dtype=F64)
        grad_out = torch.tensor([[1.0, 0.0], [2.0, -1.0]], dtype=F64)
        expected = (
            torch.tensor([[1.0, 2.0, 0.0], [2.0, 3.0, -1.0]], dtype=F64),
            torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]], dtype=F64),
            torch.tensor([3.0, -1.0], dtype=F64),
        )
        _compare_linear_backward(fn, x, W, grad_out, "the batch of two (x is 2 x 3, W is 2 x 3)", expected)
        g = seeded(20)
        x, W = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
        _compare_linear_backward(fn, x, W, torch.randn(5, 3, generator=g, dtype=F64))
        passed(fn, "the 2 hand-worked examples and a random batch match the chain rule (and autograd)")
        return
    g = seeded(21)
    shapes = [(1, 1, 1), (4, 4, 4), (3, 5, 5), (6, 2, 7), (1, 8, 3), (9, 3, 1), (16, 12, 10), (2, 6, 6), (5, 1, 4)]
    for B, n_in, n_out in shapes:
        x = torch.randn(B, n_in, generator=g, dtype=F64)
        W = torch.randn(n_out, n_in, generator=g, dtype=F64)
        _compare_linear_backward(fn, x, W, torch.randn(B, n_out, generator=g, dtype=F64))
    for name, (B, n_in, n_out) in {"one example": (1, 3, 2), "one output": (4, 3, 1), "one input feature": (4, 1, 3)}.items():
        with edge(name):
            x = torch.randn(B, n_in, generator=g, dtype=F64)
            W = torch.randn(n_out, n_in, generator=g, dtype=F64)
            _compare_linear_backward(fn, x, W, torch.randn(B, n_out, generator=g, dtype=F64), name)
    passed(fn, f"all {len(shapes) + 3} random and edge cases (square W, one example, one feature) match the reference")


# --------------------------------------------------------------------------- sgd_step
def _sgd_mistakes(params, grads, lr):
    def each(f):
        return lambda: [f(p, g) for p, g in zip(params, grads)]

    return [
        ("the parameters moved uphill: gradient descent subtracts, p - lr * g", each(lambda p, g: p + lr * g)),
        ("the learning rate is missing: p - lr * g", each(lambda p, g: p - g)),
        ("the gradient is divided by lr: p - lr * g, a multiplication", each(lambda p, g: p - g / lr)),
        ("lr was applied twice: p - lr * g", each(lambda p, g: p - lr * lr * g)),
        ("that is the step itself, lr * g; the new parameter is p - lr * g", each(lambda p, g: lr * g)),
        ("the gradient is missing: p - lr * g", each(lambda p, g: p - lr)),
    ]  # fmt: skip


def _compare_sgd(fn, params, grads, lr, label: str = "", expected=None) -> None:
    want = nn_basics.sgd_step(params, grads, lr) if expected is None else expected
    what = label or (f"{len(params)} parameter{'s' if len(params) != 1 else ''} of shape"
                     f"{'s' if len(params) != 1 else ''} {[tuple(p.shape) for p in params]}, lr={lr:g}")
    saved = [p.clone() for p in params], [g.clone() for g in grads]
    mine = [p.clone() for p in params], [g.clone() for g in grads]
    got = call(fn, *mine, lr, copy_args=False)
    changed = [i for i, (a, b) in enumerate(zip(mine[0], saved[0])) if not torch.equal(a, b)]
    if changed:
        fail(
            f"sgd_step({what}) changed parameter {changed[0]} in place (p -= ..., p.sub_(...) or p[...] = ...). "
            "Return new tensors, p - lr * g, and leave the inputs as they were: the caller decides what to keep."
        )
    if any(not torch.equal(a, b) for a, b in zip(mine[1], saved[1])):
        fail(f"sgd_step({what}) changed the gradients it was given; leave them as they were.")
    if isinstance(got, torch.Tensor) or not isinstance(got, (list, tuple)):
        fail(f"sgd_step should return a list of tensors, one per parameter, got {type(got).__name__}: {short(got)}")
    got = list(got)
    if len(got) != len(params):
        hint = ""
        if len(got) == 1 and len(params) > 1:
            hint = " (only the first parameter was updated: is the return inside the loop?)"
        fail(f"sgd_step({what}) should return {len(params)} tensors, one per parameter, got {len(got)}{hint}.")
    got = [_tensor(fn, t, "the updated parameter") for t in got]
    for i, (t, w) in enumerate(zip(got, want)):
        if tuple(t.shape) != tuple(w.shape):
            fail(
                f"sgd_step({what}): new parameter {i} should have shape {tuple(w.shape)}, like the old one, "
                f"got {tuple(t.shape)}."
            )
    bad = [i for i, (t, w) in enumerate(zip(got, want)) if not _close(t, w, atol=1e-12, rtol=1e-12)]
    if bad:
        i = bad[0]
        hint = ""
        for text, compute in _sgd_mistakes(params, grads, lr):
            try:
                candidate = compute()
            except Exception:  # noqa: BLE001
                continue
            if all(_close(t, c, atol=1e-12, rtol=1e-12) for t, c in zip(got, candidate)):
                hint = f" ({text})"
                break
        small = ""
        if params[i].numel() <= 6:
            small = (
                f"\n  p = {_show(params[i])}, g = {_show(grads[i])}"
                f"\n  expected {_show(want[i])}\n  got      {_show(got[i])}"
            )
        fail(f"sgd_step({what}): new parameter {i} is wrong: {first_difference(got[i], want[i])}{hint}.{small}")


def check_sgd_step(fn, hidden: bool = False) -> None:
    """sgd_step(params, grads, lr) returns [p - lr * g, ...] and leaves its inputs unchanged.

    Edges the exercise defines, all in the hidden test: lr = 0 (unchanged copies); an empty list;
    0-d, 1-d and 2-d parameters; a new list returned and the inputs left unchanged.
    """
    forbid_reference(fn, nn_basics.sgd_step, nn_basics.train_mlp)
    if not hidden:
        params = [torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([[0.5]], dtype=F64)]
        grads = [torch.tensor([10.0, -20.0], dtype=F64), torch.tensor([[4.0]], dtype=F64)]
        expected = [torch.tensor([-1.5, 7.0], dtype=F64), torch.tensor([[-0.5]], dtype=F64)]
        label = "the worked example, lr = 0.25 (expected [[-1.5, 7], [[-0.5]]])"
        _compare_sgd(fn, params, grads, 0.25, label, expected)
        _compare_sgd(fn, [torch.tensor([3.0], dtype=F64)], [torch.tensor([2.0], dtype=F64)], 0.5,
                     "p = 3, g = 2, lr = 0.5 (expected [2])", [torch.tensor([2.0], dtype=F64)])
        passed(fn, "the 2 hand-worked examples are right, and the inputs are left unchanged")
        return
    g = seeded(30)
    cases = 0
    for lr in [0.1, 1e-3, 2.5, 0.0, 0.7]:
        for n in [1, 3, 6]:
            dims = [int(torch.randint(0, 3, (1,), generator=g)) for _ in range(n)]  # scalars, vectors, matrices
            shapes = [tuple(torch.randint(1, 6, (k,), generator=g).tolist()) for k in dims]
            params = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
            grads = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
            _compare_sgd(fn, params, grads, lr)
            cases += 1
    _compare_sgd(fn, [], [], 0.1, "no parameters at all (expected [])")
    passed(fn, f"all {cases + 1} random and edge cases (scalars, lr = 0, no parameters) match the reference")


# --------------------------------------------------------------------------- rnn_gradient_norms
def _norm_variants(W_hh, W_xh, xs, h0) -> list[tuple[str, Callable[[], torch.Tensor]]]:
    """What common mistakes give, as (hint, norms)."""
    hs = nn_basics.rnn_forward(xs, h0, W_hh, W_xh)  # (T, H)
    T = hs.shape[0]
    prev = torch.cat([h0[None], hs[:-1]])  # h_{t-1} for t = 1..T

    def backward(step: Callable[[int, torch.Tensor], torch.Tensor], last: torch.Tensor | None = None):
        def compute():
            grads = [torch.ones_like(hs[-1]) if last is None else last]
            for t in range(T - 1, 0, -1):
                grads.append(step(t, grads[-1]))
            return torch.stack(grads[::-1]).norm(dim=-1)

        return compute

    want = torch.tensor(nn_basics.rnn_gradient_norms(W_hh, W_xh, xs, h0), dtype=F64)
    return [
        ("the list is in reverse order: element 0 must be ||dL/dh_1||, the state farthest from the loss, and the "
         "last one ||dL/dh_T|| = sqrt(H)", lambda: want.flip(0)),
        ("these are the norms of a linear RNN: going back through step t multiplies by tanh'(a_t) = 1 - h_t^2 "
         "before W_hh^T", backward(lambda t, g: g @ W_hh)),
        ("the tanh derivative was taken at h_t instead of the pre-activation a_t: h_t is already tanh(a_t), so "
         "tanh'(a_t) = 1 - h_t^2, not 1 - tanh(h_t)^2",
         backward(lambda t, g: ((1 - torch.tanh(hs[t]) ** 2) * g) @ W_hh)),
        ("the tanh derivative of the wrong step: from h_t back to h_{t-1} the factor is 1 - h_t^2, not 1 - h_{t-1}^2",
         backward(lambda t, g: ((1 - prev[t] ** 2) * g) @ W_hh)),
        ("W_hh is not transposed: dL/dh_{t-1} = W_hh^T (tanh' * dL/dh_t), which for a row vector is g @ W_hh",
         backward(lambda t, g: ((1 - hs[t] ** 2) * g) @ W_hh.T)),
        ("the derivative was multiplied by h_t instead of (1 - h_t^2): d tanh(a)/da = 1 - tanh(a)^2",
         backward(lambda t, g: (hs[t] * g) @ W_hh)),
        ("these are squared norms: return ||g||, the square root of the sum of squares", lambda: want**2),
        ("these are the norms of dL/da_t, the gradients of the pre-activations; the exercise asks for dL/dh_t "
         "(the last one is sqrt(H), since L = sum(h_T))",
         lambda: ((1 - hs**2) * nn_basics.hidden_state_gradients(hs, W_hh, torch.ones_like(hs[-1]))).norm(dim=-1)),
        ("L must be sum(h_T), so dL/dh_T is a vector of ones; you started from h_T (as for L = ||h_T||^2 / 2)",
         backward(lambda t, g: ((1 - hs[t] ** 2) * g) @ W_hh, last=hs[-1])),
    ]  # fmt: skip


def _as_norms(fn, got, T: int) -> torch.Tensor:
    if isinstance(got, torch.Tensor):
        if got.dim() != 1:
            fail(f"rnn_gradient_norms should return a list of T = {T} floats, got a tensor of shape {tuple(got.shape)}")
        got = got.tolist()
    if not isinstance(got, (list, tuple)):
        fail(f"rnn_gradient_norms should return a list of T = {T} floats, got {type(got).__name__}: {short(got)}")
    values = []
    for v in got:
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            fail(
                f"rnn_gradient_norms should return a list of floats, but it contains {short(v, 60)} "
                f"({type(v).__name__}); one norm per time step, e.g. g.norm().item()"
            )
        values.append(float(v))
    return torch.tensor(values, dtype=F64)


def _compare_norms(fn, W_hh, W_xh, xs, h0, label: str = "", expected: list[float] | None = None) -> None:
    want = torch.tensor(nn_basics.rnn_gradient_norms(W_hh, W_xh, xs, h0) if expected is None else expected, dtype=F64)
    T, H = xs.shape[0], W_hh.shape[0]
    what = label or f"H = {H}, T = {T}, spectral radius {nn_basics.spectral_radius(W_hh):.3g}"
    got = _as_norms(fn, call(fn, W_hh, W_xh, xs, h0), T)
    if len(got) != T:
        hint = ""
        if len(got) == T + 1:
            hint = ": it looks like h_0 was included; return the norms for h_1 ... h_T (h_0 is the given start)"
        elif len(got) == T - 1:
            hint = ": one is missing; the last element is ||dL/dh_T|| = sqrt(H) itself"
        fail(f"rnn_gradient_norms ({what}) should return T = {T} norms, one per time step, got {len(got)}{hint}.")
    if not torch.isfinite(got).all():
        fail(f"rnn_gradient_norms ({what}) returned NaN or inf where the reference is finite: {short(got.tolist())}.")
    tol = dict(rtol=NORM_RTOL, atol=NORM_FLOOR * want.abs().max().item())
    if torch.allclose(got, want, **tol):
        return
    hint = ""
    for text, compute in _norm_variants(W_hh, W_xh, xs, h0):
        try:
            candidate = compute()
        except Exception:  # noqa: BLE001
            continue
        if candidate.shape == got.shape and torch.allclose(got, candidate, **tol):
            hint = f" ({text})"
            break
    t = int(((got - want).abs() / want.abs().clamp_min(1e-300)).argmax())
    shown = (f"\n  expected {short([float(f'{v:.4g}') for v in want.tolist()], 200)}"
             f"\n  got      {short([float(f'{v:.4g}') for v in got.tolist()], 200)}") if T <= 8 else ""  # fmt: skip
    fail(
        f"rnn_gradient_norms ({what}) is wrong: ||dL/dh_{t + 1}|| should be {want[t].item():.6g}, "
        f"got {got[t].item():.6g}{hint}.{shown}"
    )


def _rnn_case(g, H, T, d, radius, scale, h0_scale=0.5):
    W_hh = nn_basics.random_recurrent_weights(H, radius, g)
    W_xh = torch.randn(H, d, generator=g, dtype=F64) / math.sqrt(d)
    xs = scale * torch.randn(T, d, generator=g, dtype=F64)
    h0 = h0_scale * torch.randn(H, generator=g, dtype=F64)
    return W_hh, W_xh, xs, h0


def check_rnn_gradient_norms(fn, hidden: bool = False) -> None:
    """rnn_gradient_norms(W_hh, W_xh, xs, h0) = [||dL/dh_t|| for t = 1..T], L = sum(h_T).

    Edges the exercise defines, all in the hidden test: T = 1 (one norm, sqrt(H)); H = 1; zero
    inputs; vanishing (small weights) and exploding (large weights, saturated tanh) gradients; the norms
    in time order, h_1 first, as T Python floats.
    """
    forbid_reference(fn, nn_basics.rnn_gradient_norms, nn_basics.hidden_state_gradients)
    if not hidden:
        one = torch.ones(1, 1, dtype=F64)
        # One unit, W_hh = 0.5, no input, h0 = 0: the states stay 0, tanh' = 1, so dL/dh_t = 0.5^(T - t).
        _compare_norms(fn, 0.5 * one, 0 * one, torch.zeros(3, 1, dtype=F64), torch.zeros(1, dtype=F64),
                       "one unit, W_hh = [[0.5]], no input, h0 = 0 (expected [0.25, 0.5, 1.0])", [0.25, 0.5, 1.0])
        # One unit, W_hh = W_xh = 1, xs = [1, 0]: h_1 = tanh(1), h_2 = tanh(h_1), dL/dh_1 = 1 - h_2^2.
        h2 = math.tanh(math.tanh(1.0))
        label = (
            "one unit, W_hh = W_xh = [[1]], xs = [[1], [0]], h0 = 0 "
            f"(expected [1 - h_2^2, 1] = [{1 - h2 * h2:.4f}, 1])"
        )
        xs = torch.tensor([[1.0], [0.0]], dtype=F64)
        _compare_norms(fn, one, one, xs, torch.zeros(1, dtype=F64), label, [1 - h2 * h2, 1.0])
        g = seeded(40)
        _compare_norms(fn, *_rnn_case(g, H=4, T=6, d=3, radius=0.9, scale=1.0))
        passed(fn, "the 2 hand-worked examples and a small random RNN are right")
        return
    g = seeded(41)
    cases = [  # H, T, d, spectral radius, input scale
        (1, 1, 1, 0.5, 1.0), (3, 2, 2, 1.0, 1.0), (8, 12, 3, 0.5, 1.0), (16, 50, 4, 0.9, 0.0),
        (16, 50, 4, 1.5, 0.0), (32, 50, 4, 0.9, 1.0), (32, 50, 4, 3.0, 1.0), (8, 30, 5, 100.0, 1.0),
        (5, 20, 2, 1.1, 0.1),
    ]  # fmt: skip
    for H, T, d, radius, scale in cases:
        _compare_norms(fn, *_rnn_case(g, H, T, d, radius, scale))
    passed(fn, f"all {len(cases)} random and edge cases (T = 1, vanishing, exploding, saturated tanh) are right")
