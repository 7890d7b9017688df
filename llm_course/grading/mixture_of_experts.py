"""Checks for the chapter 10 exercises (mixture of experts).

The student writes, with the signatures of the reference:

- ``top_k_routing(logits, k, renormalize=True) -> (weights, indices)``
  (:func:`llm_course.moe.top_k_routing`)
- ``load_balancing_loss(router_logits, k, n_experts) -> Tensor``
  (:func:`llm_course.moe.load_balancing_loss`)
- ``moe_forward(x, router_weight, w_gate, w_up, w_down, k) -> Tensor``: an MoE layer of SwiGLU
  experts from explicit weights, compared with :class:`llm_course.moe.MoE` holding the same
  weights

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test cell) or
seeded random cases and edge cases compared with the reference (``hidden=True``, the hidden
test cell). When a wrong answer equals what a common mistake would give, the message names
the mistake.
"""

from __future__ import annotations

import math
import random
import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from llm_course import moe
from llm_course.grading import call, fail, first_difference, forbid_reference, passed, short
from llm_course.grading.edges import edge

edge_case = edge  # the checks below keep a local list named `edge`
from llm_course.moe import MoE

ATOL = RTOL = 1e-5  # float32 results of unit scale; the reference computes in float32


def _show(t: torch.Tensor) -> str:
    """A tensor as a short nested list with 4 decimals."""
    t = t.detach()
    if t.is_floating_point():
        return short(torch.round(t.double() * 1e4).div(1e4).tolist(), 110)
    return short(t.tolist(), 110)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> bool:
    return a.shape == b.shape and torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol)


def _diagnose(got: torch.Tensor, mistakes: list[tuple[str, Callable[[], torch.Tensor]]], atol=1e-4) -> str:
    """The hint of the first mistake whose result equals `got` (each mistake is computed lazily)."""
    for hint, compute in mistakes:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                candidate = compute()
        except Exception:  # noqa: BLE001 - a mistake that cannot even be computed here is not it
            continue
        if _close(got, candidate, atol=atol, rtol=atol):
            return f" ({hint})"
    return ""


def _mixtral_reference(name: str):
    """Hugging Face's Mixtral function or class `name`, if the student's session already imported it."""
    module = sys.modules.get("transformers.models.mixtral.modeling_mixtral")
    return getattr(module, name, None) if module is not None else None


def _forbid(fn, *references) -> None:
    forbid_reference(fn, *[r for r in references if r is not None])


def _random_logits(g: torch.Generator, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    return torch.randn(shape, generator=g) * scale


# --------------------------------------------------------------------------- top_k_routing
def _routing_mistakes(logits: torch.Tensor, k: int, renormalize: bool, part: str):
    probs = torch.softmax(logits.float(), dim=-1)
    top, idx = torch.topk(probs, k, dim=-1)
    normalized = top / top.sum(-1, keepdim=True)
    top_logits, _ = torch.topk(logits.float(), k, dim=-1)
    out = []
    if part == "weights":
        if renormalize:
            out.append(("with renormalize=True divide the k probabilities by their sum, so each token's weights "
                        "add up to 1", lambda: top))  # fmt: skip
        else:
            out += [
                ("with renormalize=False the weights are the softmax probabilities themselves, not divided by their sum",
                 lambda: normalized),
                ("with renormalize=False the weights are the probabilities of the softmax over all E experts, "
                 "not a softmax over the k chosen logits", lambda: torch.softmax(top_logits, dim=-1)),
            ]  # fmt: skip
        out += [
            ("the weights are probabilities: take the softmax of the logits before choosing", lambda: top_logits),
            ("compute the softmax in float32 (logits.float()): a bfloat16 softmax keeps only 3 significant digits",
             lambda: (lambda p: (p / p.sum(-1, keepdim=True)) if renormalize else p)(
                 torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)[0]).float()),
            ("the softmax is over the experts, the last dimension (dim=-1), one distribution per token",
             lambda: (lambda p: (p / p.sum(-1, keepdim=True)) if renormalize else p)(
                 torch.topk(torch.softmax(logits.float(), dim=0), k, dim=-1)[0])),
        ]  # fmt: skip
    else:
        out += [
            ("the k *largest* probabilities: torch.topk(probs, k) (largest=True is its default)",
             lambda: torch.topk(probs, k, dim=-1, largest=False)[1]),
            ("sort the k experts best first (torch.topk does, with sorted=True)",
             lambda: idx.flip(-1)),
            ("choose among the experts, along the last dimension", lambda: torch.topk(probs, k, dim=0)[1]),
            ("the softmax is over the experts, the last dimension (dim=-1), one distribution per token",
             lambda: torch.topk(torch.softmax(logits.float(), dim=0), k, dim=-1)[1]),
        ]  # fmt: skip
    return out


def _compare_routing(fn, logits: torch.Tensor, k: int, renormalize: bool | None, what: str,
                     expected: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:  # fmt: skip
    kwargs = {} if renormalize is None else {"renormalize": renormalize}
    renorm = True if renormalize is None else renormalize
    want_w, want_i = moe.top_k_routing(logits, k, renorm) if expected is None else expected
    name = getattr(fn, "__name__", "top_k_routing")
    args = f"{name}(logits of shape {tuple(logits.shape)}, k={k}" + "".join(f", {a}={v}" for a, v in kwargs.items()) + ")"
    before = logits.clone()
    got = call(fn, logits, k, copy_args=False, **kwargs)
    if not torch.equal(logits, before):
        fail(f"{args} changed the logits in place; compute new tensors instead (e.g. probs = torch.softmax(...))")
    if not isinstance(got, tuple | list) or len(got) != 2:
        fail(f"{args} should return a pair (weights, indices), got {type(got).__name__}: {short(got)}")
    weights, indices = got
    for part, value in (("weights", weights), ("indices", indices)):
        if not isinstance(value, torch.Tensor):
            fail(f"{args} should return tensors; its {part} is a {type(value).__name__}: {short(value)}")
    shape = tuple(want_w.shape)
    for part, value in (("weights", weights), ("indices", indices)):
        if tuple(value.shape) != shape:
            fail(f"{args} returned {part} of shape {tuple(value.shape)}, expected {shape} ({what}): "
                 f"one row of k values per token, the experts' dimension (the last) shrinks from E to k")  # fmt: skip
    if weights.dtype != torch.float32:
        fail(f"{args} returned weights of dtype {weights.dtype}; they must be float32 whatever the logits' dtype "
             "(compute the softmax on logits.float())")  # fmt: skip
    if indices.dtype != torch.int64:
        fail(f"{args} returned indices of dtype {indices.dtype}, expected torch.int64 (what torch.topk returns)")
    if not torch.isfinite(weights).all():
        fail(f"{args} returned NaN or inf weights ({what}): exp of large logits overflows; torch.softmax "
             "subtracts the maximum first")  # fmt: skip
    if not torch.equal(indices, want_i):
        hint = _diagnose(indices, _routing_mistakes(logits, k, renorm, "indices"))
        if not hint and torch.equal(indices.sort(-1).values, want_i.sort(-1).values):
            hint = " (the right experts in the wrong order: best first, as torch.topk returns them)"
        detail = f"\n  logits   {_show(logits)}\n  expected {_show(want_i)}\n  got      {_show(indices)}"
        fail(f"{args} chose the wrong experts ({what}){hint}." + (detail if logits.numel() <= 12 else ""))
    if not _close(weights, want_w):
        hint = _diagnose(weights, _routing_mistakes(logits, k, renorm, "weights"))
        detail = f"\n  logits   {_show(logits)}\n  expected {_show(want_w)}\n  got      {_show(weights)}"
        fail(f"{args} returned the right experts but wrong weights ({what}): {first_difference(weights, want_w)}"
             f"{hint}." + (detail if logits.numel() <= 12 else ""))  # fmt: skip


WORKED_LOGITS = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
"""Two tokens, three experts: softmax(WORKED_LOGITS) = the probabilities written in it."""


def check_top_k_routing(fn, hidden: bool = False) -> None:
    """top_k_routing(logits, k, renormalize) equals llm_course.moe.top_k_routing.

    Edges the exercise defines, all in the hidden test: k = 1 with renormalize (the weight is exactly
    1) and without (the top probability); k = E; a single token; (B, T, E) logits; large logits (the
    softmax must not overflow); bfloat16 logits (softmax in float32, float32 weights, int64 indices);
    logits left unchanged.
    """
    _forbid(fn, moe.top_k_routing, moe.router_probs, _mixtral_reference("MixtralTopKRouter"))
    if not hidden:
        # probabilities [0.1, 0.6, 0.3] and [0.5, 0.2, 0.3]: top 2 = experts (1, 2) and (0, 2)
        _compare_routing(fn, WORKED_LOGITS, 2, None, "the worked example, renormalized",
                         (torch.tensor([[2 / 3, 1 / 3], [0.625, 0.375]]), torch.tensor([[1, 2], [0, 2]])))
        _compare_routing(fn, WORKED_LOGITS, 2, False, "the worked example, not renormalized",
                         (torch.tensor([[0.6, 0.3], [0.5, 0.3]]), torch.tensor([[1, 2], [0, 2]])))
        _compare_routing(fn, WORKED_LOGITS, 1, True, "the worked example with k = 1",
                         (torch.ones(2, 1), torch.tensor([[1], [0]])))  # fmt: skip
        g = torch.Generator().manual_seed(0)
        _compare_routing(fn, torch.randn(6, 8, generator=g), 2, True, "6 tokens, 8 experts")
        passed(fn, "the worked example (k = 2 and 1, renormalized or not) and 6 random tokens are right")
        return
    rng, g = random.Random(10), torch.Generator().manual_seed(10)
    n = 0
    for _ in range(30):
        E = rng.choice([2, 3, 4, 8, 16, 64])
        k = rng.randint(1, min(E, 6))
        shape = rng.choice([(rng.randint(1, 40), E), (rng.randint(1, 3), rng.randint(1, 9), E)])
        logits = _random_logits(g, shape, rng.choice([0.1, 1.0, 5.0]))
        _compare_routing(fn, logits, k, rng.choice([True, False]), f"random logits, E = {E}")
        n += 1
    edge = [
        (_random_logits(g, (5, 4), 1.0), 4, True, "k = E: every expert, sorted"),
        (_random_logits(g, (1, 8), 1.0), 2, False, "a single token"),
        (_random_logits(g, (7, 8), 1.0) * 60 + 500, 2, True, "large logits (around 500): exp overflows float32"),
        (_random_logits(g, (9, 8), 2.0).to(torch.bfloat16), 2, True, "bfloat16 logits"),
        (_random_logits(g, (9, 8), 2.0).to(torch.bfloat16), 3, False, "bfloat16 logits, not renormalized"),
    ]
    for logits, k, renormalize, what in edge:
        _compare_routing(fn, logits, k, renormalize, what)
    for renormalize in (True, False):
        what = f"k = 1, renormalize={renormalize}"
        with edge_case(what):
            _compare_routing(fn, _random_logits(g, (6, 5), 1.0), 1, renormalize, what)
    n += 2
    passed(fn, f"all {n + len(edge)} random and edge cases match (k = E, large and bfloat16 logits, (B, T, E) input)")


# --------------------------------------------------------------------------- load_balancing_loss
def _balance_mistakes(logits: torch.Tensor, k: int, E: int):
    probs = torch.softmax(logits.float(), dim=-1).reshape(-1, E)
    N = probs.shape[0]
    top, idx = torch.topk(probs, k, dim=-1)
    f = F.one_hot(idx, E).sum((0, 1)).float() / N
    P = probs.mean(0)
    f_top1 = F.one_hot(probs.argmax(-1), E).sum(0).float() / N
    P_topk = torch.zeros_like(probs).scatter(1, idx, top / top.sum(-1, keepdim=True)).mean(0)
    return [
        ("f_i counts every one of a token's k choices, not only its first: f sums to k",
         lambda: E * (f_top1 * P).sum()),
        ("f_i is the number of tokens that chose expert i divided by the number of tokens N, not by N k "
         "(so f sums to k and balanced routing gives k)", lambda: E * (f / k * P).sum()),
        ("multiply by the number of experts: E * sum_i f_i P_i", lambda: (f * P).sum()),
        ("f_i is a count of the chosen experts, not a probability: E * sum_i P_i^2 is a different loss",
         lambda: E * (P * P).sum()),
        ("P_i is the mean of the softmax over all E experts, not of the renormalized top-k weights",
         lambda: E * (f * P_topk).sum()),
        ("P_i is a mean over the tokens (divide by N): a sum grows with the batch", lambda: E * (f * probs.sum(0)).sum()),
        ("router_logits of shape (B, T, E) holds B T tokens: reshape it to (-1, E) before counting and averaging",
         lambda: (lambda p: E * (F.one_hot(torch.topk(p, k, -1)[1], E).sum(tuple(range(p.dim()))).float()
                                 / p.shape[0] * p.mean(0)).sum())(torch.softmax(logits.float(), dim=-1))),
        ("P_i is a mean of probabilities: take the softmax of the logits", lambda: E * (f * logits.float().reshape(-1, E).mean(0)).sum()),
        ("compute the softmax in float32 (logits.float()): bfloat16 keeps only 3 significant digits",
         lambda: (lambda p: E * (F.one_hot(torch.topk(p, k, -1)[1], E).sum((0, 1)).float() / N * p.float().mean(0)).sum())(
             torch.softmax(logits, dim=-1).reshape(-1, E))),
    ]  # fmt: skip


def _compare_balance(fn, logits: torch.Tensor, k: int, E: int, what: str, expected: float | None = None,
                     check_grad: bool = False) -> None:  # fmt: skip
    name = getattr(fn, "__name__", "load_balancing_loss")
    args = f"{name}(router_logits of shape {tuple(logits.shape)}, k={k}, n_experts={E})"
    want = moe.load_balancing_loss(logits, k, E) if expected is None else torch.tensor(expected, dtype=torch.float64)
    student_logits = logits.detach().clone().requires_grad_(check_grad)
    got = call(fn, student_logits, k, E, copy_args=False)
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        fail(f"{args} returned a Python {type(got).__name__}; return a tensor (no .item()): the router is trained "
             "through this loss, so it must keep its gradient")  # fmt: skip
    if not isinstance(got, torch.Tensor):
        fail(f"{args} should return a scalar tensor, got {type(got).__name__}: {short(got)}")
    if got.numel() != 1:
        fail(f"{args} should return one number (a scalar tensor), got shape {tuple(got.shape)}: sum over the experts")
    if not torch.isfinite(got).all():
        fail(f"{args} returned {got.item()} ({what})")
    if not _close(got.reshape(()), want.reshape(()), atol=1e-5, rtol=1e-5):
        hint = _diagnose(got.reshape(()), _balance_mistakes(logits, k, E), atol=1e-5)
        detail = f"\n  logits {_show(logits)}" if logits.numel() <= 16 else ""
        fail(f"{args} is wrong ({what}): expected {want.item():.6g}, got {got.item():.6g}{hint}.{detail}")
    if check_grad:
        if not got.requires_grad:
            fail(f"{args} has no gradient with respect to the logits: keep the softmax's graph (no .detach(), "
                 ".item() or torch.no_grad() around P)")  # fmt: skip
        (grad,) = torch.autograd.grad(got.sum(), student_logits)
        ref_logits = logits.detach().clone().requires_grad_(True)
        (want_grad,) = torch.autograd.grad(moe.load_balancing_loss(ref_logits, k, E), ref_logits)
        if not _close(grad, want_grad, atol=1e-5, rtol=1e-4):
            fail(f"{args} has the right value but the wrong gradient ({what}): {first_difference(grad, want_grad)}. "
                 "Only P_i should carry a gradient; f_i is a count of the top-k choices")  # fmt: skip


def check_load_balancing_loss(fn, hidden: bool = False) -> None:
    """load_balancing_loss(router_logits, k, n_experts) equals llm_course.moe.load_balancing_loss (and
    Hugging Face's Mixtral load_balancing_loss_func).

    Edges the exercise defines, all in the hidden test: k = 1 (Switch) and k = E (every f_i = 1);
    a single token; (B, T, E) logits flattened over every leading dimension; bfloat16 logits (float32
    probabilities); a skewed router; a scalar tensor with a gradient to the router.
    """
    _forbid(fn, moe.load_balancing_loss, _mixtral_reference("load_balancing_loss_func"))
    if not hidden:
        # k = 1: f = [1/2, 1/2], P = [0.6, 0.4] -> 2 (0.3 + 0.2) = 1
        _compare_balance(fn, torch.log(torch.tensor([[0.8, 0.2], [0.4, 0.6]])), 1, 2, "two tokens, k = 1", 1.0)
        # k = 2: top-2 sets {0,1} {1,2} {2,0} {0,1} -> f = [3/4, 3/4, 1/2]; P = [0.3875, 0.3125, 0.3]
        worked = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.15, 0.6], [0.7, 0.2, 0.1]]))
        _compare_balance(fn, worked, 2, 3, "the worked example, k = 2", 2.025)
        _compare_balance(fn, torch.zeros(8, 4), 2, 4, "uniform router: every probability 1/4", 2.0)
        certain = torch.tensor([[30.0, 20.0, 0.0, 0.0]]).repeat(8, 1)
        _compare_balance(fn, certain, 2, 4, "every token sure of expert 0, then 1", 4.0)
        _compare_balance(fn, torch.randn(10, 6, generator=torch.Generator().manual_seed(0)), 2, 6,
                         "10 random tokens, 6 experts", check_grad=True)  # fmt: skip
        passed(fn, "the worked examples (k = 1 and 2), a uniform and a collapsed router, and a gradient are right")
        return
    rng, g = random.Random(11), torch.Generator().manual_seed(11)
    n = 0
    for i in range(30):
        E = rng.choice([2, 3, 4, 8, 16, 32])
        k = rng.randint(1, min(E, 4))
        shape = rng.choice([(rng.randint(1, 200), E), (rng.randint(1, 4), rng.randint(1, 20), E)])
        logits = _random_logits(g, shape, rng.choice([0.1, 1.0, 4.0]))
        _compare_balance(fn, logits, k, E, f"random logits, {logits.numel() // E} tokens", check_grad=i % 3 == 0)
        n += 1
    skewed = _random_logits(g, (64, 8), 1.0) + torch.tensor([4.0, 3.0, 0, 0, 0, 0, 0, 0])
    edge = [
        (_random_logits(g, (1, 4), 1.0), 2, 4, "a single token"),
        (_random_logits(g, (20, 5), 1.0), 5, 5, "k = E: f_i = 1 for every expert"),
        (skewed, 2, 8, "a router that prefers experts 0 and 1"),
        (_random_logits(g, (2, 16, 8), 2.0).to(torch.bfloat16), 2, 8, "bfloat16 logits of shape (B, T, E)"),
    ]
    for logits, k, E, what in edge:
        _compare_balance(fn, logits, k, E, what, check_grad=logits.dtype == torch.float32)
    with edge_case("k = 1 (Switch Transformer)"):
        _compare_balance(fn, _random_logits(g, (3, 5, 6), 1.5), 1, 6, "k = 1, (B, T, E) logits", check_grad=True)
    n += 1
    passed(fn, f"all {n + len(edge)} random and edge cases match, values and gradients ((B, T, E), bfloat16, k = E)")


# --------------------------------------------------------------------------- moe_forward
def _library_moe(router_weight, w_gate, w_up, w_down, k) -> MoE:
    """The course's MoE layer holding the given weights (SwiGLU experts, no biases, no capacity limit)."""
    E, Fh, C = w_gate.shape
    layer = MoE(C, Fh, E, k, activation="swiglu", bias=False).to(w_gate.dtype).eval()
    with torch.no_grad():
        layer.router.weight.copy_(router_weight)
        for e, expert in enumerate(layer.experts):
            expert.w1.weight.copy_(w_gate[e])
            expert.w3.weight.copy_(w_up[e])
            expert.w2.weight.copy_(w_down[e])
    return layer


def _moe_variant(x, router_weight, w_gate, w_up, w_down, k, *, renormalize=True, dense=False, swap=False,
                 weight_inputs=False, unweighted=False, act=F.silu, token_softmax=False, no_softmax=False,
                 first_only=False):  # fmt: skip
    """An MoE forward with one planted mistake, to name the student's (not the reference)."""
    C = x.shape[-1]
    h = x.reshape(-1, C).float()
    logits = h @ router_weight.float().t()  # (N, E)
    probs = logits if no_softmax else torch.softmax(logits, dim=0 if token_softmax else -1)
    E = probs.shape[-1]
    if dense:
        weights, indices = probs, torch.arange(E).expand(h.shape[0], E)
    else:
        weights, indices = torch.topk(probs, k, dim=-1)
        if renormalize and not no_softmax:
            weights = weights / weights.sum(-1, keepdim=True)
    if unweighted:
        weights = torch.ones_like(weights)
    out = torch.zeros_like(h)
    for j in range(1 if first_only else indices.shape[-1]):
        for e in range(E):
            rows = indices[:, j] == e
            if not rows.any():
                continue
            w = weights[rows, j, None]
            inp = h[rows] * w if weight_inputs else h[rows]
            gate, up = inp @ w_gate[e].float().t(), inp @ w_up[e].float().t()
            y = (act(up) * gate if swap else act(gate) * up) @ w_down[e].float().t()
            out[rows] += y if weight_inputs else w * y
    return out.view(x.shape)


def _moe_mistakes(x, rw, wg, wu, wd, k):
    v = lambda **kw: (lambda: _moe_variant(x, rw, wg, wu, wd, k, **kw))  # noqa: E731
    return [
        ("the k chosen probabilities must be renormalized to sum to 1 (divide by their sum)", v(renormalize=False)),
        ("each token goes to its k best experts only; you mixed all E experts", v(dense=True)),
        ("gate and up are swapped: SwiGLU is silu(x @ w_gate[e].T) * (x @ w_up[e].T)", v(swap=True)),
        ("the router's weight multiplies the expert's output, not its input", v(weight_inputs=True)),
        ("weight each expert's output by the token's routing weight for that expert", v(unweighted=True)),
        ("the experts' activation is SiLU, x * sigmoid(x), inside SwiGLU", v(act=F.relu)),
        ("the experts' activation is SiLU, x * sigmoid(x), inside SwiGLU", v(act=F.gelu)),
        ("the softmax is over the experts (the last dimension of the logits), once per token", v(token_softmax=True)),
        ("route with the softmax of the router's logits, not the logits themselves", v(no_softmax=True)),
        ("a token's output sums over all k of its experts, not only its first choice: torch.where(indices == e) "
         "finds the tokens that chose e as any of their k choices", v(first_only=True)),
    ]


def _compare_moe(fn, x, rw, wg, wu, wd, k, what: str, expected: torch.Tensor | None = None, atol=ATOL) -> None:
    name = getattr(fn, "__name__", "moe_forward")
    E, Fh, C = wg.shape
    args = (f"{name}(x of shape {tuple(x.shape)}, router_weight {tuple(rw.shape)}, w_gate/w_up {tuple(wg.shape)}, "
            f"w_down {tuple(wd.shape)}, k={k})")  # fmt: skip
    if expected is None:
        with torch.no_grad():
            expected = _library_moe(rw, wg, wu, wd, k)(x)
    before = x.clone()
    with torch.no_grad():
        got = call(fn, x, rw, wg, wu, wd, k, copy_args=False)
    if not torch.equal(x, before):
        fail(f"{args} changed x in place; build the output in a new tensor (torch.zeros_like(x))")
    if not isinstance(got, torch.Tensor):
        fail(f"{args} should return a tensor ({what}), got {type(got).__name__}: {short(got)}")
    if tuple(got.shape) != tuple(x.shape):
        fail(f"{args} returned shape {tuple(got.shape)}, expected {tuple(x.shape)} ({what}): an MoE layer maps "
             "each token's C features to C features, like the FFN it replaces; reshape back to x's shape")  # fmt: skip
    if got.dtype != x.dtype:
        fail(f"{args} returned dtype {got.dtype} for a {x.dtype} input; return x's dtype")
    if not torch.isfinite(got).all():
        fail(f"{args} returned NaN or inf ({what}) where the reference is finite")
    if _close(got, expected, atol=atol, rtol=atol):
        return
    hint = _diagnose(got, _moe_mistakes(x, rw, wg, wu, wd, k), atol=max(atol, 1e-4))
    detail = f"\n  expected {_show(expected)}\n  got      {_show(got)}" if x.numel() <= 8 else ""
    fail(f"{args} is wrong ({what}): {first_difference(got, expected)}{hint}.{detail}")


def _moe_oracle(x, rw, wg, wu, wd, k) -> torch.Tensor:
    """The MoE layer with the routing a student computes (logits in x's dtype, softmax in float32) and
    the experts in float64: for bfloat16 inputs, the answer up to the rounding of the experts."""
    flat = x.reshape(-1, x.shape[-1])  # (N, C)
    weights, indices = moe.top_k_routing(flat @ rw.T, k)  # (N, k), float32
    out = torch.zeros(flat.shape, dtype=torch.float64)
    for j in range(k):
        e = indices[:, j]  # (N,)
        h = flat.double()
        gate = torch.einsum("nfc,nc->nf", wg[e].double(), h)
        up = torch.einsum("nfc,nc->nf", wu[e].double(), h)
        out += weights[:, j, None].double() * torch.einsum("ncf,nf->nc", wd[e].double(), F.silu(gate) * up)
    return out.reshape(x.shape).to(x.dtype)


def _random_weights(g: torch.Generator, C: int, Fh: int, E: int, router_scale: float = 1.0):
    rw = torch.randn(E, C, generator=g) * router_scale / math.sqrt(C)
    wg = torch.randn(E, Fh, C, generator=g) / math.sqrt(C)
    wu = torch.randn(E, Fh, C, generator=g) / math.sqrt(C)
    wd = torch.randn(E, C, Fh, generator=g) / math.sqrt(Fh)
    return rw, wg, wu, wd


# The worked example: C = 2, two experts of hidden size 1. x = [2, 1] scores [2, 1]: expert 0 with k = 1.
WORKED_ROUTER = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
WORKED_GATE = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (E, F, C)
WORKED_UP = torch.tensor([[[1.0, 1.0]], [[1.0, -1.0]]])
WORKED_DOWN = torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]])  # (E, C, F)


def check_moe_forward(fn, hidden: bool = False) -> None:
    """moe_forward(x, router_weight, w_gate, w_up, w_down, k) equals llm_course.moe.MoE with the same weights.

    Edges the exercise defines, all in the hidden test: experts that get no token; k = 1 and k = E;
    x = 0; (B, T, C) inputs; float64 and bfloat16 x and weights (the result has x's dtype, also when
    the float32 routing weights multiply bfloat16 expert outputs); x left unchanged.
    """
    _forbid(fn, MoE, MoE.forward, moe.dispatch, moe.combine, moe.top_k_routing, moe.router_probs,
            _mixtral_reference("MixtralSparseMoeBlock"), _mixtral_reference("MixtralExperts"))  # fmt: skip
    worked = (WORKED_ROUTER, WORKED_GATE, WORKED_UP, WORKED_DOWN)
    if not hidden:
        # k = 1: x = [2, 1] -> expert 0 (weight 1): gate 2, up 2 + 1 = 3 -> down @ (silu(2) * 3) = [3 silu(2), 0]
        silu2, silu1 = 2 * torch.sigmoid(torch.tensor(2.0)).item(), torch.sigmoid(torch.tensor(1.0)).item()
        x = torch.tensor([[2.0, 1.0]])
        _compare_moe(fn, x, *worked, 1, "the worked example, k = 1", torch.tensor([[3 * silu2, 0.0]]))
        # k = 2: weights softmax([2, 1]) = [0.7311, 0.2689]; expert 1: gate 1, up 2 - 1 = 1 -> [0, silu(1)]
        p0 = torch.sigmoid(torch.tensor(1.0)).item()
        _compare_moe(fn, x, *worked, 2, "the worked example, k = 2",
                     torch.tensor([[p0 * 3 * silu2, (1 - p0) * silu1]]))  # fmt: skip
        g = torch.Generator().manual_seed(0)
        weights = _random_weights(g, 8, 12, 4, router_scale=3.0)
        _compare_moe(fn, torch.randn(5, 8, generator=g), *weights, 2, "5 tokens, 4 experts, k = 2")
        _compare_moe(fn, torch.randn(2, 3, 8, generator=g), *weights, 1, "x of shape (B, T, C), k = 1")
        passed(fn, "the worked example (k = 1 and 2) and random layers equal the course's MoE on the same weights")
        return
    rng, g = random.Random(12), torch.Generator().manual_seed(12)
    n = 0
    for _ in range(16):
        C, Fh, E = rng.choice([4, 8, 16]), rng.choice([1, 6, 16]), rng.choice([2, 3, 4, 8])
        k = rng.randint(1, E)
        weights = _random_weights(g, C, Fh, E, router_scale=rng.choice([0.5, 2.0, 6.0]))
        shape = rng.choice([(rng.randint(1, 12), C), (rng.randint(1, 3), rng.randint(1, 7), C)])
        _compare_moe(fn, torch.randn(shape, generator=g), *weights, k, f"C = {C}, F = {Fh}, E = {E}")
        n += 1
    weights = _random_weights(g, 8, 8, 8, router_scale=0.5)
    edge = [
        (torch.randn(2, 8, generator=g), weights, 2, "2 tokens, 8 experts: most experts get no token"),
        (torch.randn(6, 8, generator=g), weights, 8, "k = E: every expert, every token"),
        (torch.zeros(3, 8), weights, 2, "x = 0: output 0"),
    ]
    for x, w, k, what in edge:
        _compare_moe(fn, x, *w, k, what)
    w64 = tuple(t.double() for t in _random_weights(g, 8, 8, 4, 2.0))
    _compare_moe(fn, torch.randn(4, 8, generator=g, dtype=torch.float64), *w64, 2, "float64 inputs and weights")
    with edge_case("bfloat16 inputs and weights"):
        wbf = tuple(t.to(torch.bfloat16) for t in _random_weights(g, 8, 6, 4, 6.0))
        xbf = torch.randn(2, 3, 8, generator=g).to(torch.bfloat16)
        _compare_moe(fn, xbf, *wbf, 2, "bfloat16 inputs and weights", expected=_moe_oracle(xbf, *wbf, 2), atol=5e-2)
    n += 1
    passed(fn, f"all {n + len(edge) + 1} random and edge layers equal the course's MoE (unused experts, k = E, float64)")
