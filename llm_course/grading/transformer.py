"""Checks for the chapter 05 exercises (the transformer block and its parts).

The student writes, with the signatures of the reference:

- ``layer_norm(x, weight=None, bias=None, eps=1e-5) -> Tensor``  (:func:`llm_course.norms.layer_norm`)
- ``rms_norm(x, weight=None, eps=1e-6) -> Tensor``  (:func:`llm_course.norms.rms_norm`)
- ``block_forward(x, norm1, attn, norm2, ffn, pre_ln=True) -> Tensor``: one transformer
  block from its four sub-layers, compared with :class:`llm_course.transformer.Block` on the
  same weights
- ``count_parameters(config) -> int``  (:func:`llm_course.transformer.count_parameters`, and
  the real count ``sum(p.numel())`` of ``Transformer(config)``)

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test cell) or
seeded random cases and edge cases compared with the reference (``hidden=True``, the hidden
test cell). When a wrong answer equals what a common mistake would give, the message names
the mistake.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import random
import warnings
from collections.abc import Callable

import torch

from llm_course import norms, transformer
from llm_course.grading import call, expect_tensor, fail, first_difference, forbid_reference, passed, short
from llm_course.grading.edges import edge, expect_dtype

edge_case = edge  # where a check's local list is already named `edge`
from llm_course.transformer import Block, Transformer, TransformerConfig

ATOL = RTOL = 1e-4  # float32 results of unit scale; the reference computes in float32
_NORM_HINT = "the output has the input's shape; reduce with keepdim=True so the statistics broadcast back"
_EPS_HINT = ": eps goes inside the square root, so that a constant row does not divide by zero"


def _show(t: torch.Tensor) -> str:
    """A tensor as a short nested list with 4 decimals."""
    return short(torch.round(t.detach().double() * 1e4).div(1e4).tolist(), 100)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=False)


def _check_tensor(fn, got, want: torch.Tensor, what: str, shape_hint: str, nan_hint: str = "") -> torch.Tensor:
    """Fail unless `got` is a finite tensor of `want`'s shape and dtype."""
    name = getattr(fn, "__name__", "your function")
    if not isinstance(got, torch.Tensor):
        fail(f"{name} should return a torch.Tensor ({what}), got {type(got).__name__}: {short(got)}")
    if tuple(got.shape) != tuple(want.shape):
        fail(
            f"{name} returned shape {tuple(got.shape)}, expected {tuple(want.shape)} ({what}): {shape_hint}"
        )
    if got.dtype != want.dtype:
        fail(f"{name} returned dtype {got.dtype} for a {want.dtype} input; keep the input's dtype")
    if not torch.isfinite(got).all():
        fail(f"{name} returned NaN or inf ({what}) where the reference is finite{nan_hint}")
    return got.detach()


def _diagnose(got: torch.Tensor, mistakes: list[tuple[str, Callable[[], torch.Tensor]]]) -> str:
    """The hint of the first mistake whose result equals `got` (each mistake is computed lazily)."""
    for hint, compute in mistakes:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. torch.var of a single value
                candidate = compute()
        except Exception:  # noqa: BLE001 - a mistake that cannot even be computed here is not it
            continue
        if _close(got, candidate):
            return f" ({hint})"
    return ""


# --------------------------------------------------------------------------- layer_norm
def _layer_norm_mistakes(x, weight, bias, eps):
    w = 1.0 if weight is None else weight
    b = 0.0 if bias is None else bias
    mean = x.mean(-1, keepdim=True)
    return [
        ("the variance must be the biased one, mean((x - mean)^2), not torch.var's default which divides by C - 1",
         lambda: (x - mean) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b),
        ("eps goes inside the square root: (x - mean) / sqrt(var + eps)",
         lambda: (x - mean) / (x.var(-1, correction=0, keepdim=True).sqrt() + eps) * w + b),
        ("normalize over the last dimension (the features of one token), dim=-1",
         lambda: (x - x.mean(0, keepdim=True)) / torch.sqrt(x.var(0, correction=0, keepdim=True) + eps) * w + b),
        ("normalize each row over its last dimension, not over all elements of x at once",
         lambda: (x - x.mean()) / torch.sqrt(x.var(correction=0) + eps) * w + b),
        ("subtract the mean first: LayerNorm centers, then divides by the standard deviation",
         lambda: x / torch.sqrt(x.var(-1, correction=0, keepdim=True) + eps) * w + b),
        ("divide by the standard deviation sqrt(var + eps), not by the variance",
         lambda: (x - mean) / (x.var(-1, correction=0, keepdim=True) + eps) * w + b),
        ("scale first, then shift: x_hat * weight + bias",
         lambda: ((x - mean) / torch.sqrt(x.var(-1, correction=0, keepdim=True) + eps) + b) * w),
        ("the bias was not added", lambda: norms.layer_norm(x, weight, None, eps)),
        ("the weight (gain) was not applied", lambda: norms.layer_norm(x, None, bias, eps)),
        ("var = E[x^2] - E[x]^2 loses precision in float32 when the mean is large: subtract the mean, then square",
         lambda: (x - mean) / torch.sqrt((x * x).mean(-1, keepdim=True) - mean * mean + eps) * w + b),
    ]  # fmt: skip


def _compare_layer_norm(fn, x, weight=None, bias=None, eps=1e-5, expected=None, atol=ATOL) -> None:
    want = norms.layer_norm(x, weight, bias, eps) if expected is None else expected
    got = call(fn, x, weight, bias, eps)
    got = _check_tensor(fn, got, want, "one normalized vector per row", _NORM_HINT, _EPS_HINT)
    if _close(got, want, atol=atol):
        return
    hint = _diagnose(got, _layer_norm_mistakes(x, weight, bias, eps))  # in x's dtype, as a student computes
    fail(
        f"layer_norm(x of shape {tuple(x.shape)}, weight={'None' if weight is None else 'given'}, "
        f"bias={'None' if bias is None else 'given'}, eps={eps:g}) is wrong: {first_difference(got, want)}{hint}."
        + (f"\n  x = {_show(x)}\n  expected {_show(want)}\n  got      {_show(got)}" if x.numel() <= 8 else "")
    )


def check_layer_norm(fn, hidden: bool = False) -> None:
    """layer_norm(x, weight, bias, eps) normalizes the last dimension: (x - mean) / sqrt(var + eps) * w + b.

    Edges the exercise defines, all in the hidden test: C = 1 and C = 2; weight and/or bias None;
    a constant row (variance 0 gives bias, not NaN: eps inside the square root); the biased variance;
    tiny and large scales; any number of leading dimensions; float64 and bfloat16 inputs keep their dtype.
    """
    forbid_reference(
        fn, norms.layer_norm, norms.LayerNorm, torch.nn.functional.layer_norm, torch.nn.LayerNorm, torch.layer_norm
    )
    if not hidden:
        # mean 1, variance 1, eps 3: sqrt(1 + 3) = 2
        _compare_layer_norm(fn, torch.tensor([[0.0, 2.0]]), eps=3.0, expected=torch.tensor([[-0.5, 0.5]]))
        # mean 4, variance 5, eps 4: sqrt(9) = 3 -> [-1, -1/3, 1/3, 1]; times weight, plus bias
        x = torch.tensor([[1.0, 3.0, 5.0, 7.0]])
        _compare_layer_norm(fn, x, eps=4.0, expected=torch.tensor([[-1.0, -1 / 3, 1 / 3, 1.0]]))
        weight, bias = torch.tensor([1.0, 3.0, 3.0, 1.0]), torch.tensor([0.0, 1.0, 0.0, -1.0])
        _compare_layer_norm(fn, x, weight, bias, eps=4.0, expected=torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
        # a constant row has variance 0: the output is the bias (eps avoids 0 / 0)
        _compare_layer_norm(fn, torch.full((1, 4), 2.0), weight, bias, expected=bias.unsqueeze(0))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 8, generator=g) * 2 + 1
        _compare_layer_norm(fn, x, torch.randn(8, generator=g), torch.randn(8, generator=g))
        passed(fn, "all 5 hand-worked examples are right (including a constant row and a (2, 3, 8) batch)")
        return
    g = torch.Generator().manual_seed(5)
    rng = random.Random(5)
    n = 0
    for shape in [(16,), (3, 1), (4, 2), (5, 7), (2, 3, 64), (2, 2, 5, 33), (1, 768), (6, 6)]:
        for scale, offset in [(1.0, 0.0), (3.0, -2.0), (1e-3, 0.0), (0.05, 0.3)]:
            c = shape[-1]
            x = torch.randn(*shape, generator=g) * scale + offset
            weight = torch.randn(c, generator=g) if rng.random() < 0.7 else None
            bias = torch.randn(c, generator=g) if rng.random() < 0.7 else None
            eps = rng.choice([1e-5, 1e-6, 0.1])
            _compare_layer_norm(fn, x, weight, bias, eps)
            n += 1
    edge = [
        (torch.randn(3, 16, generator=g).double(), torch.rand(16, generator=g).double(), None, 1e-5),  # float64
        (torch.zeros(2, 8), torch.ones(8), torch.arange(8.0), 1e-5),  # all zeros -> bias
    ]
    for args in edge:
        _compare_layer_norm(fn, *args)
    # A large mean and a unit spread: float32 rounding of the mean alone gives errors near 1e-4.
    _compare_layer_norm(fn, torch.randn(4, 32, generator=g) + 1000.0, atol=2e-3)
    with edge_case("bfloat16 input"):
        x, weight, bias = torch.randn(3, 24, generator=g) * 2 + 1, torch.randn(24, generator=g), torch.randn(24, generator=g)
        x, weight, bias = (t.to(torch.bfloat16) for t in (x, weight, bias))
        want = norms.layer_norm(x.double(), weight.double(), bias.double(), 1e-5)
        _compare_bf16(fn, "layer_norm", (x, weight, bias, 1e-5), want)
    n += 1
    passed(fn, f"all {n + len(edge) + 1} random and edge cases match the reference (tiny and large scales, float64)")


# --------------------------------------------------------------------------- rms_norm
def _rms_norm_mistakes(x, weight, eps):
    w = 1.0 if weight is None else weight
    ms = x.pow(2).mean(-1, keepdim=True)
    return [
        ("RMSNorm does not subtract the mean (that is LayerNorm); divide x itself by its root mean square",
         lambda: norms.layer_norm(x, weight, None, eps)),
        ("subtract nothing: RMSNorm divides x itself by sqrt(mean(x^2) + eps)",
         lambda: (x - x.mean(-1, keepdim=True)) / torch.sqrt(ms + eps) * w),
        ("eps goes inside the square root: x / sqrt(mean(x^2) + eps)", lambda: x / (ms.sqrt() + eps) * w),
        ("take the mean of the squares, not the sum: the RMS of a vector of ones is 1, not sqrt(C)",
         lambda: x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w),
        ("take the square root of the mean square", lambda: x / (ms + eps) * w),
        ("normalize over the last dimension (the features of one token), dim=-1",
         lambda: x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + eps) * w),
        ("normalize each row over its last dimension, not over all elements of x at once",
         lambda: x / torch.sqrt(x.pow(2).mean() + eps) * w),
        ("the weight (gain) was not applied", lambda: norms.rms_norm(x, None, eps)),
    ]  # fmt: skip


def _compare_bf16(fn, name: str, args: tuple, want64: torch.Tensor) -> None:
    """A norm of bfloat16 inputs: the result stays bfloat16 and matches float64 arithmetic to bf16 precision."""
    got = expect_tensor(fn, call(fn, *args), "the normalized tensor")
    if tuple(got.shape) != tuple(want64.shape):
        fail(f"{name} of a bfloat16 x of shape {tuple(args[0].shape)} should keep its shape, got {tuple(got.shape)}")
    expect_dtype(got, torch.bfloat16, f"{name} of a bfloat16 x")
    if not torch.allclose(got.detach().double(), want64, atol=5e-2, rtol=2e-2):
        fail(f"{name} of a bfloat16 x is wrong beyond bf16 rounding: {first_difference(got.double(), want64)}")


def _compare_rms_norm(fn, x, weight=None, eps=1e-6, expected=None) -> None:
    want = norms.rms_norm(x, weight, eps) if expected is None else expected
    got = call(fn, x, weight, eps)
    got = _check_tensor(fn, got, want, "one normalized vector per row", _NORM_HINT, _EPS_HINT)
    if _close(got, want):
        return
    hint = _diagnose(got, _rms_norm_mistakes(x, weight, eps))
    fail(
        f"rms_norm(x of shape {tuple(x.shape)}, weight={'None' if weight is None else 'given'}, eps={eps:g}) "
        f"is wrong: {first_difference(got, want)}{hint}."
        + (f"\n  x = {_show(x)}\n  expected {_show(want)}\n  got      {_show(got)}" if x.numel() <= 8 else "")
    )


def check_rms_norm(fn, hidden: bool = False) -> None:
    """rms_norm(x, weight, eps) = x / sqrt(mean(x^2) + eps) * weight over the last dimension.

    Edges the exercise defines, all in the hidden test: C = 1; weight None; an all-zero row (stays
    zero: eps inside the square root); a constant row; no centering; tiny scales; float64 and bfloat16
    inputs keep their dtype.
    """
    forbid_reference(fn, norms.rms_norm, norms.RMSNorm, torch.nn.RMSNorm, torch.nn.functional.rms_norm, torch.rms_norm)
    if not hidden:
        # mean of squares (1 + 9 + 25 + 49) / 4 = 21, eps 4: sqrt(25) = 5
        x = torch.tensor([[1.0, 3.0, 5.0, 7.0]])
        _compare_rms_norm(fn, x, eps=4.0, expected=torch.tensor([[0.2, 0.6, 1.0, 1.4]]))
        weight = torch.tensor([5.0, 5.0, 1.0, 0.0])
        _compare_rms_norm(fn, x, weight, eps=4.0, expected=torch.tensor([[1.0, 3.0, 1.0, 0.0]]))
        # a constant row is not centered: [2, 2] / sqrt(4 + 0) = [1, 1]
        _compare_rms_norm(fn, torch.tensor([[2.0, 2.0]]), eps=0.0, expected=torch.tensor([[1.0, 1.0]]))
        g = torch.Generator().manual_seed(1)
        _compare_rms_norm(fn, torch.randn(2, 3, 8, generator=g) * 2, torch.randn(8, generator=g))
        passed(fn, "all 4 hand-worked examples are right (including a constant row and a (2, 3, 8) batch)")
        return
    g = torch.Generator().manual_seed(6)
    rng = random.Random(6)
    n = 0
    for shape in [(16,), (3, 1), (4, 2), (5, 7), (2, 3, 64), (2, 2, 5, 33), (1, 768), (6, 6)]:
        for scale, offset in [(1.0, 0.0), (3.0, 1.5), (1e-3, 0.0), (0.05, -0.2)]:
            x = torch.randn(*shape, generator=g) * scale + offset
            weight = torch.randn(shape[-1], generator=g) if rng.random() < 0.7 else None
            _compare_rms_norm(fn, x, weight, rng.choice([1e-6, 1e-5, 0.1]))
            n += 1
    edge = [
        (torch.randn(3, 16, generator=g).double(), torch.rand(16, generator=g).double(), 1e-6),  # float64
        (torch.zeros(2, 8), torch.ones(8), 1e-6),  # all zeros stay zeros
        (torch.full((2, 5), -3.0), None, 1e-6),  # constant rows: -1 everywhere
    ]
    for args in edge:
        _compare_rms_norm(fn, *args)
    with edge_case("bfloat16 input"):
        x, weight = torch.randn(3, 24, generator=g) * 2 + 1, torch.randn(24, generator=g)
        x, weight = x.to(torch.bfloat16), weight.to(torch.bfloat16)
        _compare_bf16(fn, "rms_norm", (x, weight, 1e-6), norms.rms_norm(x.double(), weight.double(), 1e-6))
    n += 1
    passed(fn, f"all {n + len(edge)} random and edge cases match the reference (tiny scales, float64, zeros, bf16)")


# --------------------------------------------------------------------------- block_forward
def _halve(t):
    return t / 2


def _plus_one(t):
    return t + 1


def _times_ten(t):
    return t * 10


def _square(t):
    return t * t


TOY_BLOCK = dict(norm1=_halve, attn=_plus_one, norm2=_times_ten, ffn=_square)
"""Stand-ins for the sub-layers, so the block's formula can be followed by hand."""


def _block_mistakes(x, n1, a, n2, f, pre_ln):
    """Formulas a student may write instead of the block's, each with what to fix."""
    pre = [
        ("with pre_ln=True you computed Post-LN: normalize each sub-layer's input, x + attn(norm1(x)), "
         "and leave the stream itself unnormalized", lambda: n2(n1(x + a(x)) + f(n1(x + a(x))))),
        ("the FFN must read the stream after attention was added to it: h = x + attn(norm1(x)), then "
         "h + ffn(norm2(h)), not x + attn(norm1(x)) + ffn(norm2(x))", lambda: x + a(n1(x)) + f(n2(x))),
        ("norm1 belongs to attention and norm2 to the FFN",
         lambda: (lambda h: h + f(n1(h)))(x + a(n2(x)))),
        ("each sub-layer's output is added to its input (the residual connection): h = x + attn(norm1(x))",
         lambda: (lambda h: h + f(n2(h)))(a(n1(x)))),
        ("each sub-layer's output is added to its input (the residual connection): out = h + ffn(norm2(h))",
         lambda: f(n2(x + a(n1(x))))),
        ("add the sub-layer's output to the unnormalized stream x, not to norm1(x)",
         lambda: (lambda h: n2(h) + f(n2(h)))(n1(x) + a(n1(x)))),
        ("the norm goes before the sub-layer, on its input: x + attn(norm1(x)), not x + norm1(attn(x))",
         lambda: (lambda h: h + n2(f(h)))(x + n1(a(x)))),
        ("a Pre-LN block returns the residual stream itself; the model's final norm comes after the last block",
         lambda: n2((lambda h: h + f(n2(h)))(x + a(n1(x))))),
    ]
    post = [
        ("with pre_ln=False you computed Pre-LN: Post-LN normalizes after each residual addition, "
         "norm1(x + attn(x))", lambda: (lambda h: h + f(n2(h)))(x + a(n1(x)))),
        ("Post-LN normalizes the sum x + attn(x), not only the sub-layer's output",
         lambda: (lambda h: h + n2(f(h)))(x + n1(a(x)))),
        ("norm1 belongs to attention and norm2 to the FFN", lambda: (lambda h: n1(h + f(h)))(n2(x + a(x)))),
        ("the FFN must read h = norm1(x + attn(x)), the stream after attention", lambda: n2(n1(x + a(x)) + f(x))),
        ("each sub-layer's output is added to its input before the norm: norm1(x + attn(x))",
         lambda: (lambda h: n2(h + f(h)))(n1(a(x)))),
        ("each sub-layer's output is added to its input before the norm: norm2(h + ffn(h))",
         lambda: n2(f(n1(x + a(x))))),
    ]
    return pre if pre_ln else post


def _compare_block(fn, x, n1, a, n2, f, pre_ln: bool, want: torch.Tensor, what: str) -> None:
    with torch.no_grad():
        got = call(fn, x, n1, a, n2, f, pre_ln=pre_ln)
    got = _check_tensor(fn, got, want, "the block's output", "a block maps (B, T, C) to (B, T, C)")
    if _close(got, want):
        return
    hint = _diagnose(got, _block_mistakes(x, n1, a, n2, f, pre_ln))
    detail = f"\n  x = {_show(x)}\n  expected {_show(want)}\n  got      {_show(got)}" if x.numel() <= 8 else ""
    fail(f"block_forward on {what} with pre_ln={pre_ln} is wrong: {first_difference(got, want)}{hint}.{detail}")


def _randomized_block(rng: random.Random, g: torch.Generator, **overrides) -> Block:
    """A library Block with every weight random (gains near 1, nonzero biases), in eval mode."""
    n_heads = rng.choice([1, 2, 4])
    d_model = n_heads * rng.choice([4, 8, 12])
    kwargs = dict(
        d_model=d_model, n_heads=n_heads, d_ff=rng.choice([8, 24, 4 * d_model]),
        n_kv_heads=rng.choice([h for h in (1, 2, n_heads) if n_heads % h == 0]),
        norm=rng.choice(["layernorm", "rmsnorm"]), activation=rng.choice(["gelu_tanh", "gelu", "relu", "swiglu"]),
        bias=rng.random() < 0.5, pre_ln=rng.random() < 0.5, norm_eps=rng.choice([1e-5, 1e-6]),
    )  # fmt: skip
    kwargs.update(overrides)
    position = "rope" if rng.random() < 0.3 else "none"  # a RoPE block, or one that adds no positions
    block = Block(TransformerConfig(context_length=64, position=position, **kwargs)).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return block


def _compare_with_library_block(fn, block: Block, x: torch.Tensor, what: str) -> None:
    with torch.no_grad():
        want = block(x)
    _compare_block(fn, x, block.norm1, block.attn, block.norm2, block.ffn, block.pre_ln, want, what)


def check_block_forward(fn, hidden: bool = False) -> None:
    """block_forward(x, norm1, attn, norm2, ffn, pre_ln) equals the library's Block on the same weights.

    Edges the exercise defines, all in the hidden test: pre_ln True and False, and its default
    (True) when the argument is left out; one token and one sequence; x left unchanged (no in-place
    add); LayerNorm/RMSNorm, GELU/ReLU/SwiGLU, grouped-query attention and RoPE blocks.
    """
    forbid_reference(fn, Block, Block.forward, Transformer)
    if not hidden:
        toy = TOY_BLOCK
        x = torch.tensor([[[1.0, 2.0]]])
        # Pre-LN: h = x + attn(norm1(x)) = [1, 2] + [1.5, 2] = [2.5, 4]; out = h + ffn(norm2(h)) = h + (10 h)^2
        want = torch.tensor([[[627.5, 1604.0]]])
        _compare_block(fn, x, toy["norm1"], toy["attn"], toy["norm2"], toy["ffn"], True, want, "the toy sub-layers")
        # Post-LN: h = norm1(x + attn(x)) = ([1, 2] + [2, 3]) / 2 = [1.5, 2.5]; out = norm2(h + h^2) = 10 (h + h^2)
        want = torch.tensor([[[37.5, 87.5]]])
        _compare_block(fn, x, toy["norm1"], toy["attn"], toy["norm2"], toy["ffn"], False, want, "the toy sub-layers")
        rng, g = random.Random(0), torch.Generator().manual_seed(0)
        for pre_ln in (True, False):
            block = _randomized_block(rng, g, d_model=16, n_heads=4, n_kv_heads=4, norm="layernorm",
                                      activation="gelu_tanh", bias=True, pre_ln=pre_ln, d_ff=64)  # fmt: skip
            x = torch.randn(2, 5, 16, generator=g)
            _compare_with_library_block(fn, block, x, "a GPT-2 block (16 wide, 4 heads)")
        x = torch.tensor([[[1.0, 2.0]]])
        before = x.clone()
        with torch.no_grad():
            call(fn, x, *TOY_BLOCK.values(), pre_ln=True, copy_args=False)
        if not torch.equal(x, before):
            fail(
                "block_forward changed its input x in place (x += ... or x.add_): write x = x + ...; in a model "
                "autograd still needs the old x for the backward pass"
            )
        passed(fn, "the toy sub-layers (Pre-LN and Post-LN) and two GPT-2 blocks give the right outputs")
        return
    rng, g = random.Random(7), torch.Generator().manual_seed(7)
    n = 0
    for _ in range(24):
        block = _randomized_block(rng, g)
        c = block.norm1.weight.shape[0]
        x = torch.randn(rng.choice([1, 2, 3]), rng.choice([1, 4, 9]), c, generator=g) * rng.choice([0.05, 1.0, 3.0])
        norm, act = type(block.norm1).__name__, type(block.ffn).__name__
        heads = f"{block.attn.n_heads} heads, {block.attn.n_kv_heads} kv heads"
        _compare_with_library_block(fn, block, x, f"a random block ({c} wide, {heads}, {norm}, {act})")
        n += 1
    with edge("pre_ln left at its default (True)"):
        block = _randomized_block(rng, g)
        while not block.pre_ln:
            block = _randomized_block(rng, g)
        x = torch.randn(2, 3, block.norm1.weight.shape[0], generator=g)
        with torch.no_grad():
            want = block(x)
            got = call(fn, x, block.norm1, block.attn, block.norm2, block.ffn)
        got = _check_tensor(fn, got, want, "the block's output", "a block maps (B, T, C) to (B, T, C)")
        if not _close(got, want):
            fail(f"block_forward(x, norm1, attn, norm2, ffn) without pre_ln should be a Pre-LN block (pre_ln=True is "
                 f"the default), but it differs from one: {first_difference(got, want)}")  # fmt: skip
    n += 1
    passed(fn, f"all {n} random blocks (Pre/Post-LN, LayerNorm/RMSNorm, GELU/ReLU/SwiGLU, GQA, RoPE) match Block")


# --------------------------------------------------------------------------- count_parameters
def _count_mistakes(config: TransformerConfig, want: int) -> list[tuple[str, int]]:
    """(what was missed, the count a formula with that mistake gives): differences from the reference."""
    c = config
    C, V, F, L, b = c.d_model, c.vocab_size, c.d_ff, c.n_layers, int(c.bias)
    q, kv = c.n_heads * c.d_head, c.n_kv_heads * c.d_head
    norm = C * (1 + b) if c.norm == "layernorm" else C
    ffn_mats = 3 if c.activation == "swiglu" else 2
    out = []
    if c.tie_embeddings:
        out.append(("with tie_embeddings=True the head is the token embedding: the shared V x C matrix counts once",
                    want + V * C))  # fmt: skip
    else:
        out.append(("with tie_embeddings=False the output head is its own V x C matrix", want - V * C))
    if c.position == "learned":
        out.append(("learned positions are a context_length x C table of parameters", want - c.context_length * C))
    else:
        out.append((f'position="{c.position}" has no position table to learn (RoPE and sinusoidal are computed)',
                    want + c.context_length * C))  # fmt: skip
    if kv != q:
        out.append(("keys and values have n_kv_heads heads (grouped-query attention): w_k, w_v are C x (H_kv D)",
                    want + L * 2 * (C + b) * (q - kv)))  # fmt: skip
    if c.activation == "swiglu":
        out.append(("SwiGLU has three matrices (gate w1, up w3, down w2)", want - L * (C * F + b * F)))
    else:
        out.append(("a GELU/ReLU FFN has two matrices", want + L * (C * F + b * F)))
    if c.bias:
        out += [
            ("with bias=True the attention projections have biases", want - L * (q + 2 * kv + C)),
            ("with bias=True the FFN's linear layers have biases", want - L * ((ffn_mats - 1) * F + C)),
            ("with bias=True every linear layer has a bias", want - L * (q + 2 * kv + C + (ffn_mats - 1) * F + C)),
        ]
        if c.norm == "rmsnorm":
            out.append(("RMSNorm has no bias, only a gain, even with bias=True", want + (2 * L + int(c.pre_ln)) * C))
        else:
            out.append(("LayerNorm with bias=True has a gain and a bias", want - (2 * L + int(c.pre_ln)) * C))
    else:
        out += [
            ("with bias=False no linear layer has a bias", want + L * (q + 2 * kv + C + (ffn_mats - 1) * F + C)),
            ("with bias=False the norms have no bias", want + (2 * L + int(c.pre_ln)) * C),
        ]
    if c.pre_ln:
        out.append(("a Pre-LN model has one more norm after the last block (the final norm)", want - norm))
    else:
        out.append(("a Post-LN model has no final norm: each block already ends with one", want + norm))
    out += [
        ("each block has two norms (before attention and before the FFN)", want - L * norm),
        ("the output projection w_o (H D x C) is part of attention", want - L * (q * C + b * C)),
        ("the token embedding is a V x C matrix", want - V * C),
    ]
    return out


def _compare_count(fn, config: TransformerConfig, label: str, real: int | None = None) -> None:
    want = transformer.count_parameters(config)
    got = call(fn, config)
    name = getattr(fn, "__name__", "count_parameters")
    try:
        if isinstance(got, bool):
            raise TypeError
        got = operator.index(got)
    except TypeError:
        fail(f"{name} should return an int, got {type(got).__name__}: {short(got)} (use // to divide ints)")
    if got == want:
        return
    hints = [hint for hint, value in _count_mistakes(config, want) if value == got]
    fields = ", ".join(
        f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
        if f.name not in ("dropout", "norm_eps", "use_fused_attention", "rope_base")
    )  # fmt: skip
    parts = ", ".join(f"{k} {v:,}" for k, v in transformer.parameter_breakdown(config).items())
    counted = f" (Transformer(config) has {real:,} parameters)" if real is not None else ""
    fail(
        f"{name}({label}) should be {want:,}{counted}, got {got:,} (off by {got - want:+,})"
        + (f": {hints[0]}" if hints else "")
        + f".\n  config: {fields}\n  by component: {parts}"
    )


def _real_count(config: TransformerConfig) -> int:
    return sum(p.numel() for p in Transformer(config).parameters())


def _random_config(rng: random.Random) -> TransformerConfig:
    n_heads = rng.choice([1, 2, 3, 4, 6, 8])
    d_model = n_heads * rng.choice([2, 4, 8, 16])
    activation = rng.choice(["gelu_tanh", "gelu", "relu", "swiglu"])
    return TransformerConfig(
        vocab_size=rng.randrange(2, 3000), context_length=rng.choice([1, 8, 64, 100, 1024]), d_model=d_model,
        n_layers=rng.randrange(1, 13), n_heads=n_heads,
        n_kv_heads=rng.choice([h for h in range(1, n_heads + 1) if n_heads % h == 0]),
        d_ff=rng.choice([None, 3 * d_model, rng.randrange(1, 200)]), norm=rng.choice(["layernorm", "rmsnorm"]),
        activation=activation, position=rng.choice(["learned", "rope", "sinusoidal", "none"]),
        tie_embeddings=rng.random() < 0.5, bias=rng.random() < 0.5, pre_ln=rng.random() < 0.75,
    )  # fmt: skip


def check_count_parameters(fn, hidden: bool = False) -> None:
    """count_parameters(config) equals the library's formula and sum(p.numel()) of Transformer(config).

    Edges the exercise defines, all in the hidden test: tied and untied heads; learned positions
    only (RoPE, sinusoidal and none have no parameters); grouped-query attention, with and without
    biases (k and v biases have H_kv D entries); SwiGLU's three matrices; RMSNorm has no bias even when
    config.bias; the final norm only with pre_ln; one layer, one kv head; the result an int.
    """
    forbid_reference(fn, transformer.count_parameters, transformer.parameter_breakdown, Transformer, Block)
    if not hidden:
        _compare_count(fn, transformer.gpt2_small(), "gpt2_small()")  # 124,439,808, worked out in the notebook
        micro = TransformerConfig(vocab_size=10, context_length=4, d_model=4, n_layers=1, n_heads=2, d_ff=8)
        _compare_count(fn, micro, "a 1-layer GPT with d_model 4", real=_real_count(micro))
        for label, config in [
            ("llama_tiny(1000)", transformer.llama_tiny(1000)),
            ("tiny(1000) with an untied head", dataclasses.replace(transformer.tiny(1000), tie_embeddings=False)),
        ]:
            _compare_count(fn, config, label, real=_real_count(config))
        passed(fn, "GPT-2 small (124,439,808), a 1-layer GPT, llama_tiny and an untied tiny model are right")
        return
    rng = random.Random(8)
    configs = [(f"random config {i}", _random_config(rng)) for i in range(60)]
    for label, config in configs[:8]:  # these are also built, to compare with the real count
        _compare_count(fn, config, label, real=_real_count(config))
    for label, config in configs[8:]:
        _compare_count(fn, config, label)
    presets = [
        ("gpt2_medium()", transformer.gpt2_medium()),
        ("llama2_7b()", transformer.llama2_7b()),
        ("seeds_70b()", transformer.seeds_70b()),
        ("a Post-LN tiny(50)", dataclasses.replace(transformer.tiny(50), pre_ln=False)),
        ("llama_tiny(50) with biases", dataclasses.replace(transformer.llama_tiny(50), bias=True)),
    ]
    micro = TransformerConfig(vocab_size=7, context_length=3, d_model=8, n_layers=1, n_heads=4, d_ff=5)
    edges = [
        ("grouped-query attention with biases, one kv head", dataclasses.replace(micro, n_kv_heads=1, bias=True)),
        ("sinusoidal positions (no parameters)", dataclasses.replace(micro, position="sinusoidal")),
        ("RMSNorm with config.bias (the norm has no bias)", dataclasses.replace(micro, norm="rmsnorm", bias=True)),
        ("Post-LN with an untied head", dataclasses.replace(micro, pre_ln=False, tie_embeddings=False)),
        ("SwiGLU with biases", dataclasses.replace(micro, activation="swiglu", bias=True, n_kv_heads=2)),
    ]
    for label, config in edges:  # small enough to build: compared with the real count too
        with edge(label):
            _compare_count(fn, config, label, real=_real_count(config))
    presets += edges
    for label, config in presets:
        _compare_count(fn, config, label)
    passed(fn, f"all {len(configs) + len(presets)} configs (random, GPT-2 medium, Llama 2 7B, the seeds' 70B) match")
