"""Checks for the chapter 07 exercises (scaling laws).

The student writes, with the signatures of :mod:`llm_course.scaling`:

- ``flops_per_token(config, include_head=False) -> int``
  (training FLOPs per token: 3 x (2 N + 2 n_layers n_ctx d_model [+ 2 d_model V]), N the
  non-embedding parameters, given by ``non_embedding_parameters(config)``)
- ``fit_power_law(x, y) -> (a, b)``  (y = a x^b, least squares on (log x, log y))
- ``chinchilla_optimal(compute, law=CHINCHILLA) -> (n_opt, d_opt)``
  (the N and D that minimize E + A / N^alpha + B / D^beta subject to 6 N D = compute)

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test cell) or
seeded random cases and edge cases compared with the reference (``hidden=True``, the
hidden test cell). When a result differs, the check compares it with what the usual
mistakes would give (forward pass only, no attention term, swapped outputs, ...) and says
which one it looks like.
"""

from __future__ import annotations

import math
import numbers
import random

import numpy as np
import torch

from llm_course import scaling
from llm_course.grading import call, fail, forbid_reference, passed, short
from llm_course.grading.edges import edge
from llm_course.scaling import CHINCHILLA, ChinchillaLaw, non_embedding_parameters
from llm_course.transformer import TransformerConfig, count_parameters, gpt2_medium, gpt2_small, llama2_7b, seeds_70b

REL = 1e-9  # these are closed formulas in float64: only rounding may differ


def _number(fn, value, what: str) -> float:
    """`value` as a float, or a failure naming what was expected."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(f"{fn.__name__} should return {what} as a number, got {type(value).__name__}: {short(value)}")
    value = float(value)
    if not math.isfinite(value):
        fail(f"{fn.__name__} returned {value} for {what}: is there a division by zero, or a log of a number <= 0?")
    return value


def _pair(fn, got, what: str) -> tuple[float, float]:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        fail(f"{fn.__name__} should return a pair {what}, got {type(got).__name__}: {short(got)}")
    names = what.strip("()").split(", ")
    return _number(fn, got[0], names[0]), _number(fn, got[1], names[1])


def _close(a: float, b: float, rel: float = REL, abs_tol: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


# --------------------------------------------------------------------------- FLOPs per token
def _describe(config: TransformerConfig) -> str:
    c = config
    return (
        f"(d_model={c.d_model}, n_layers={c.n_layers}, context_length={c.context_length}, "
        f"vocab_size={c.vocab_size}, N={non_embedding_parameters(c):,})"
    )


def _flops_hint(config: TransformerConfig, include_head: bool, got: float) -> str:
    c = config
    n = non_embedding_parameters(c)
    attention = 2 * c.n_layers * c.context_length * c.d_model
    head = 2 * c.d_model * c.vocab_size
    with_head = head if include_head else 0
    mistakes = [
        (2 * n + attention + with_head, "that is the forward pass only: the backward pass costs twice the forward, "
         "so training costs 3 x forward"),
        (3 * (2 * n + with_head), "the attention term 2 n_layers n_ctx d_model is missing (the scores q.k and the "
         "weighted sum of v grow with the context, not with the parameters)"),
        (3 * (2 * n + 2 * attention + with_head), "the attention term is twice too large: with the causal mask a "
         "token attends on average to n_ctx / 2 positions, so q.k and the sum of v cost 2 n_layers n_ctx d_model together"),
        (3 * (2 * n + attention + (0 if include_head else head)), "the output head 2 d_model V must be counted "
         f"only when include_head is True (here include_head={include_head})"),
        (3 * (2 * count_parameters(c) + attention + with_head), "N must be the non-embedding parameters, "
         "non_embedding_parameters(config): the embedding tables are lookups, not matrix products"),
        (3 * (n + attention // 2 + with_head // 2), "a multiply-add is 2 FLOPs: every weight costs 2 FLOPs per token "
         "in the forward pass"),
        (6 * n * c.context_length, "that is per sequence of context_length tokens, not per token"),
    ]
    for value, hint in mistakes:
        if _close(got, value):
            return f" It looks like {hint}."
    return " Count 3 x (2 N + 2 n_layers n_ctx d_model), plus 3 x 2 d_model V for the head when include_head is True."


def _compare_flops(fn, config: TransformerConfig, include_head: bool) -> None:
    want = scaling.kaplan_flops_per_token(config, include_head)
    got = _number(fn, call(fn, config, include_head=include_head), "the FLOPs per token")
    if not _close(got, want):
        fail(
            f"flops_per_token for {_describe(config)} with include_head={include_head} should be {want:,}, "
            f"got {got:,.0f}.{_flops_hint(config, include_head, got)}"
        )


WORKED_CONFIG = TransformerConfig(vocab_size=100, context_length=10, d_model=8, n_layers=1, n_heads=2, bias=False)


def _random_config(rng: random.Random) -> TransformerConfig:
    n_heads = rng.choice([1, 2, 4, 8, 12])
    d_model = n_heads * rng.choice([8, 16, 32, 64])
    kind = rng.choice(["gpt", "llama", "gpt_untied"])
    base = dict(
        vocab_size=rng.randrange(50, 60000), context_length=rng.choice([16, 128, 1000, 2048, 8192]),
        d_model=d_model, n_layers=rng.randrange(1, 40), n_heads=n_heads,
    )  # fmt: skip
    if kind == "llama":
        return TransformerConfig(
            **base, n_kv_heads=rng.choice([h for h in (1, 2, n_heads) if n_heads % h == 0]),
            d_ff=rng.choice([8 * d_model // 3, 2 * d_model + 8, 4 * d_model]), norm="rmsnorm", activation="swiglu",
            position="rope" if (d_model // n_heads) % 2 == 0 else "none", tie_embeddings=False, bias=False,
        )  # fmt: skip
    return TransformerConfig(**base, tie_embeddings=(kind == "gpt"), bias=rng.random() < 0.7)


def _replace(config: TransformerConfig, **changes) -> TransformerConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def check_flops_per_token(fn, hidden: bool = False) -> None:
    """flops_per_token(config, include_head=False): 3 x (2 N + 2 n_layers n_ctx d_model [+ 2 d_model V]).

    Edges the exercise defines, all in the hidden test: include_head left at its default (False);
    the head counted with include_head=True even when it is tied to the embedding (weights shared,
    FLOPs not); learned positions (their table is not in N); context_length 1 and one layer.
    """
    forbid_reference(fn, scaling.kaplan_flops_per_token)
    if not hidden:
        cases = [(WORKED_CONFIG, False), (WORKED_CONFIG, True), (gpt2_small(), False), (gpt2_small(), True)]
        for config, include_head in cases:
            _compare_flops(fn, config, include_head)
        passed(fn, "the worked example (5,232 and 10,032 FLOPs per token) and GPT-2 small are right")
        return
    rng = random.Random(7)
    configs = [gpt2_medium(), llama2_7b(), seeds_70b()] + [_random_config(rng) for _ in range(30)]
    for config in configs:
        for include_head in (False, True):
            _compare_flops(fn, config, include_head)
    for name, config in {
        "a tied head with include_head=True": _replace(gpt2_small(), tie_embeddings=True),
        "learned positions, context_length 1, one layer": _replace(gpt2_small(), context_length=1, n_layers=1),
    }.items():
        with edge(name):
            _compare_flops(fn, config, True)
            _compare_flops(fn, config, False)
    got = _number(fn, call(fn, gpt2_small()), "the FLOPs per token")
    if not _close(got, scaling.kaplan_flops_per_token(gpt2_small())):
        fail("flops_per_token(config) without include_head should leave the head out (include_head=False by default).")
    passed(fn, f"all {2 * len(configs) + 1} configurations (GPT-2, Llama 2 7B, the seeds' 70B, random) match the reference")


# --------------------------------------------------------------------------- power-law fit
def _fit_hint(x, y, got: tuple[float, float], want: tuple[float, float]) -> str:
    (ga, gb), (wa, wb) = got, want
    if _close(ga, wb, 1e-6) and _close(gb, wa, 1e-6):
        return " The two values are swapped: return (a, b), the coefficient first and the exponent second."
    if _close(gb, wb, 1e-6, abs_tol=1e-9):
        if _close(ga, math.log(wa), 1e-6):
            return " The exponent is right; the first value is log a: return a = exp(intercept)."
        if _close(ga, math.exp(math.log10(wa)), 1e-6):
            return " The exponent is right; the intercept came from log10 but was undone with exp: use one base."
        return " The exponent is right but a is not: a = exp(mean(log y) - b mean(log x))."
    if _close(gb, -wb, 1e-6):
        return " The exponent has the wrong sign: in y = a x^b a falling curve has b < 0."
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    end_slope = (ly[-1] - ly[0]) / (lx[-1] - lx[0])
    if _close(gb, end_slope, 1e-6):
        return " The slope comes from the first and last points only: least squares uses every point."
    if _close(gb, 1 / np.polyfit(ly, lx, 1)[0], 1e-6):
        return " That is log x regressed on log y: regress log y on log x (y is the measured quantity)."
    return " Fit a straight line log y = log a + b log x by least squares on the logarithms of the data."


def _compare_fit(fn, x, y) -> None:
    want = scaling.fit_power_law(x, y)
    got = _pair(fn, call(fn, x, y), "(a, b)")
    if _close(got[0], want[0], 1e-6) and _close(got[1], want[1], 1e-6, abs_tol=1e-9):
        return
    shown_x, shown_y = (short([float(f"{v:.4g}") for v in np.asarray(seq, float)], 70) for seq in (x, y))
    fail(
        f"fit_power_law(x={shown_x}, y={shown_y}) should give (a, b) = ({want[0]:.6g}, {want[1]:.6g}), "
        f"got ({got[0]:.6g}, {got[1]:.6g}).{_fit_hint(x, y, got, want)}"
    )


def check_fit_power_law(fn, hidden: bool = False) -> None:
    """fit_power_law(x, y) -> (a, b) with y = a x^b, least squares on (log x, log y).

    Edges the exercise defines, all in the hidden test: two points (an exact fit); a constant y
    (b = 0); lists of ints, tuples, NumPy arrays and tensors; x not sorted (the order of the points does
    not matter, pairs stay pairs); x spanning 17 orders of magnitude; Python floats returned.
    """
    forbid_reference(fn, scaling.fit_power_law)
    if not hidden:
        x = [1.0, 4.0, 16.0, 64.0]
        cases = [
            (x, [3.0 * v**-0.5 for v in x]),  # exactly 3 x^-0.5
            (np.array([1e6, 1e9, 1e12]), np.array([2.0 * v**1.5 for v in (1e6, 1e9, 1e12)])),  # 2 x^1.5, huge x
            ([1.0, 10.0, 100.0], [10.0, 2.0, 1.0]),  # not a power law: b = -1/2, a = 20^(1/3) 10^(1/2)
        ]
        for case in cases:
            _compare_fit(fn, *case)
        passed(fn, "3 x^-0.5, 2 x^1.5 and the least-squares line through 3 scattered points are right")
        return
    rng = np.random.default_rng(11)
    cases = []
    for k in range(12):
        n = int(rng.integers(3, 15))
        x = np.sort(np.exp(rng.uniform(0, 40, n)))
        y = float(np.exp(rng.uniform(-5, 5))) * x ** float(rng.uniform(-1, 1)) * np.exp(rng.normal(0, 0.2, n))
        as_type = [np.asarray, np.ndarray.tolist, torch.tensor][k % 3]  # arrays, lists and tensors
        cases.append((as_type(x), as_type(y)))
    cases += [([2.0, 8.0], [5.0, 1.25]), ([1e-3, 1.0, 1e3], [7.0, 7.0, 7.0])]  # two points; a constant: b = 0
    n = np.geomspace(1e5, 1e9, 9)
    cases.append((n, (8.8e13 / n) ** 0.076 * np.exp(rng.normal(0, 0.01, 9))))  # Kaplan's L(N) with 1% noise
    for x, y in cases:
        _compare_fit(fn, x, y)
    edges = {
        "lists of ints": ([1, 10, 100, 1000], [50, 20, 9, 4]),
        "tuples": ((2.0, 3.0, 5.0, 7.0), (0.9, 0.7, 0.6, 0.45)),
        "x not sorted": ([100.0, 1.0, 1e4, 10.0], [2.0, 9.0, 0.5, 4.0]),
    }
    for name, (x, y) in edges.items():
        with edge(name):
            _compare_fit(fn, x, y)
    cases += list(edges.values())
    passed(fn, f"all {len(cases)} noisy and edge cases (lists, arrays, tensors; 2 points; a constant) match the reference")


# --------------------------------------------------------------------------- compute-optimal N and D
def _optimal_hint(compute: float, law: ChinchillaLaw, got: tuple[float, float], want: tuple[float, float]) -> str:
    n, d = got
    spent = 6 * n * d
    a, b = law.alpha, law.beta
    g = (a * law.A / (b * law.B)) ** (1 / (a + b))
    if _close(n, want[1], 1e-6) and _close(d, want[0], 1e-6):
        return " N and D are swapped: return (n_opt, d_opt)."
    if _close(n, (compute / 120) ** 0.5, 1e-6):
        return (
            " That is the 20-tokens-per-parameter rule; this function minimizes the law's own loss, "
            "and the optimal ratio depends on its constants."
        )
    if not _close(spent, compute, 1e-6):
        extra = ""
        if _close(spent, 6 * compute, 1e-6) or _close(spent, compute / 6, 1e-6):
            extra = " (off by a factor 6: the budget is C = 6 N D, so D = C / (6 N), and C / 6 enters N_opt and D_opt)"
        return f" This choice spends 6 N D = {spent:.4g} FLOPs, but the budget is {compute:.4g}{extra}."
    if _close(n, g * (compute / 6) ** (a / (a + b)), 1e-6):
        return " The exponents are swapped: N_opt grows as (C / 6)^(beta / (alpha + beta)), D_opt as the alpha one."
    if _close(n, (compute / 6) ** (b / (a + b)) / g, 1e-6):
        return " G is inverted: N_opt = G (C / 6)^(beta / (alpha + beta)) with G = (alpha A / (beta B))^(1 / (alpha + beta))."
    got_loss, want_loss = scaling.chinchilla_loss(n, d, law), scaling.chinchilla_loss(*want, law)
    return (
        f" It spends the budget, but the loss there is {got_loss:.6f} while N = {want[0]:.4g} reaches {want_loss:.6f}: "
        "at the optimum alpha A / N^alpha = beta B / D^beta."
    )


def _compare_optimal(fn, compute: float, law: ChinchillaLaw | None) -> None:
    args = (compute,) if law is None else (compute, law)
    law = CHINCHILLA if law is None else law
    want = scaling.chinchilla_optimal(compute, law)
    got = _pair(fn, call(fn, *args), "(n_opt, d_opt)")
    if _close(got[0], want[0], 1e-7) and _close(got[1], want[1], 1e-7):
        return
    shown_law = "the default law" if len(args) == 1 else "law=CHINCHILLA" if law == CHINCHILLA else f"law={law}"
    fail(
        f"chinchilla_optimal({compute:.4g}) with {shown_law} should give (N, D) = ({want[0]:.6g}, {want[1]:.6g}), "
        f"got ({got[0]:.6g}, {got[1]:.6g}).{_optimal_hint(compute, law, got, want)}"
    )


def check_chinchilla_optimal(fn, hidden: bool = False) -> None:
    """chinchilla_optimal(compute, law) -> (N, D) minimizing law's loss with 6 N D = compute.

    Edges the exercise defines, all in the hidden test: the default law; alpha == beta with A != B;
    a budget of 6 FLOPs (C / 6 = 1: N = G, D = 1 / G); budgets up to 1e27; 6 N D equal to the budget.
    """
    forbid_reference(fn, scaling.chinchilla_optimal)
    if not hidden:
        symmetric = ChinchillaLaw(E=1.0, A=100.0, B=100.0, alpha=0.3, beta=0.3)
        cases = [(6e20, symmetric), (5.76e23, CHINCHILLA), (1e21, CHINCHILLA)]
        for compute, law in cases:
            _compare_optimal(fn, compute, law)
        passed(fn, "N = D = 1e10 for a symmetric law, and the published law at 5.76e23 and 1e21 FLOPs are right")
        return
    rng = random.Random(5)
    cases: list[tuple[float, ChinchillaLaw | None]] = [(5.76e23, None), (3.15e23, None)]
    for _ in range(25):
        law = ChinchillaLaw(
            E=rng.uniform(0.5, 3), A=math.exp(rng.uniform(1, 9)), B=math.exp(rng.uniform(1, 9)),
            alpha=rng.uniform(0.05, 0.9), beta=rng.uniform(0.05, 0.9),
        )  # fmt: skip
        cases.append((10 ** rng.uniform(12, 27), law))
    for compute, law in cases:
        _compare_optimal(fn, compute, law)
    edges = {
        "alpha == beta with A != B": (1e21, ChinchillaLaw(E=1.5, A=400.0, B=50.0, alpha=0.3, beta=0.3)),
        "a budget of 6 FLOPs (C / 6 = 1)": (6.0, ChinchillaLaw(E=1.0, A=300.0, B=20.0, alpha=0.4, beta=0.2)),
    }
    for name, (compute, law) in edges.items():
        with edge(name):
            _compare_optimal(fn, compute, law)
    cases += list(edges.values())
    passed(fn, f"all {len(cases)} budgets and laws (the default law included) match the reference")
