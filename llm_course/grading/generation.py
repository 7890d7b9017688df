"""Checks for the chapter 08 exercises (generation).

The student writes, with the signatures of :mod:`llm_course.sampling` and :mod:`llm_course.generation`:

- ``apply_temperature(logits, temperature) -> logits / T``  (ValueError unless T > 0)
- ``top_k_filter(logits, k)``  (logits below the k-th largest of their row become -inf)
- ``top_p_filter(logits, top_p)``  (the nucleus: the fewest most probable tokens holding >= top_p)
- ``sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None) -> (B,) ids``
  (temperature 0: argmax; else temperature -> top-k -> top-p -> softmax -> torch.multinomial)
- ``perplexity(model, ids, context_length=None, stride=None) -> float``  (sliding window)

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test cell) or
seeded random cases and edge cases compared with the reference (``hidden=True``, the hidden
test cell). Samplers are random, so `sample_next` is checked on what must hold for any
correct sampler: greedy decoding, reproducibility from the generator, the set of tokens that
can be drawn, and a chi-square test of 20 000 draws against the filtered distribution (at
significance 1e-4, fixed seeds). `perplexity` is checked with a model that records the
windows it is shown, so a wrong value comes with the windows that were expected.
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn

from llm_course import generation, sampling
from llm_course.grading import (
    one_thread,
    CheckFailed,
    TimeLimitExceeded,
    call,
    expect_tensor,
    fail,
    forbid_reference,
    passed,
    seeded,
    short,
    time_limit,
)
from llm_course.grading.edges import edge, expect_dtype
from llm_course.transformer import Transformer, TransformerConfig

SIGNIFICANCE = 1e-4  # chi-square tests: a correct sampler fails one this rarely (and the seeds are fixed)
N_DRAWS = 20_000
SEEDS_PROBS = [0.05, 0.45, 0.30, 0.20]  # the four-token example of the chapter
# Dyadic probabilities: their softmax and every cumulative sum are exact in bf16, float32 and float64,
# so a token whose mass above it *equals* top_p is tested without rounding deciding the answer.
DYADIC_PROBS = [0.125, 0.5, 0.125, 0.25]  # sorted: 0.5, 0.25, 0.125, 0.125; mass above: 0, 0.5, 0.75, 0.875


def _fmt(values) -> str:
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    return short([v if not isinstance(v, float) or not math.isfinite(v) else round(v, 4) for v in values], 100)


def _expect_error(fn, args: tuple, kwargs: dict, what: str, why: str) -> None:
    """The student's function must raise ValueError on these (invalid) arguments."""
    parts = [f"logits{tuple(args[0].shape)}", *map(repr, args[1:]), *(f"{k}={v!r}" for k, v in kwargs.items())]
    shown = ", ".join(parts)
    try:
        with time_limit(10.0):
            fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
    except NotImplementedError:
        fail(f"{fn.__name__} is not implemented yet: replace `raise NotImplementedError()` with your code.")
    except ValueError:
        return
    except TimeLimitExceeded:
        fail(f"{fn.__name__}({shown}) did not finish within 10 s.")
    except Exception as err:  # noqa: BLE001 - the wrong kind of error is a finding
        fail(f"{fn.__name__}({shown}) should raise ValueError ({what}), but raised {type(err).__name__}: {err}")
    fail(f"{fn.__name__}({shown}) should raise ValueError ({what}), but it returned without an error: {why}.")


def _unchanged_input(fn, logits: torch.Tensor, *args) -> None:
    """Call fn on a tensor we keep, and fail if fn changed it in place."""
    mine = logits.clone()
    call(fn, mine, *args, copy_args=False)
    if not torch.equal(mine.nan_to_num(), logits.nan_to_num()) or not torch.equal(mine.isnan(), logits.isnan()):
        fail(
            f"{fn.__name__} changed the logits it was given (in place: `/=`, `masked_fill_` or `logits[...] = ...`). "
            "The caller may still need them: return a new tensor (logits / T, logits.masked_fill(...))."
        )


# --------------------------------------------------------------------------- temperature
def _compare_temperature(fn, logits: torch.Tensor, T: float) -> None:
    want = sampling.apply_temperature(logits, T)
    text = f"apply_temperature({_logits_text(logits)}, {T})"
    got = expect_tensor(fn, call(fn, logits, T), "the scaled logits")
    if tuple(got.shape) != tuple(want.shape):
        fail(f"{text} should keep the shape {tuple(want.shape)}, got {tuple(got.shape)}.")
    got = got.detach()
    if torch.allclose(got.double(), want.double(), atol=1e-6, rtol=1e-5):
        return
    hint = ""
    if T != 1 and torch.allclose(got.double(), (logits * T).double(), atol=1e-6, rtol=1e-5):
        hint = " You multiplied by the temperature: divide the logits by it, so that T < 1 sharpens the distribution."
    elif torch.allclose(got.double(), torch.softmax(want.double(), -1), atol=1e-6):
        hint = " That is softmax(logits / T): return the scaled logits themselves; the softmax comes later."
    elif T != 1 and torch.allclose(got.double(), logits.double(), atol=1e-6):
        hint = " The logits came back unchanged: divide them by the temperature."
    fail(f"{text} should be {_fmt(want)}, got {_fmt(got)}.{hint}")


def check_apply_temperature(fn, hidden: bool = False) -> None:
    """apply_temperature(logits, temperature) = logits / temperature; ValueError unless temperature > 0.

    Edges the exercise defines, all in the hidden test: temperature exactly 0 and below (ValueError);
    T = 1 (unchanged); tiny and large T; -inf logits stay -inf; bfloat16 and float64 logits keep their
    dtype; the input is left unchanged.
    """
    forbid_reference(fn, sampling.apply_temperature)
    if not hidden:
        logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
        for T in [0.5, 2.0, 1.0]:  # [4, 2, 0, -2], [1, 0.5, 0, -0.5], unchanged
            _compare_temperature(fn, logits, T)
        _compare_temperature(fn, torch.tensor([[1.0, 3.0], [-2.0, 0.5]]), 0.25)
        _expect_error(fn, (logits, -1.0), {}, "a negative temperature", "it would turn the distribution upside down")
        _unchanged_input(fn, logits, 0.5)
        passed(fn, "the hand-worked examples are right (T = 0.5, 2, 1, a batch) and T = -1 raises ValueError")
        return
    g = seeded(1)
    cases = 0
    for shape in [(7,), (3, 11), (2, 4, 50), (1, 1000)]:
        for T in [0.05, 0.7, 1.0, 1.5, 10.0]:
            _compare_temperature(fn, torch.randn(shape, generator=g) * 3, T)
            cases += 1
    _compare_temperature(fn, torch.randn(4, 9, generator=g, dtype=torch.float64), 0.3)
    _compare_temperature(fn, torch.tensor([[0.0, float("-inf"), 2.0]]), 0.5)  # a token removed earlier stays removed
    zero_why = "dividing by 0 gives inf and nan; temperature 0 means greedy decoding, handled by sample_next"
    _expect_error(fn, (torch.randn(5, generator=g), 0.0), {}, "temperature 0", zero_why)
    _expect_error(fn, (torch.randn(5, generator=g), -0.5), {}, "a negative temperature", "it would invert the ranking")
    _unchanged_input(fn, torch.randn(3, 6, generator=g), 2.0)
    for dtype in (torch.bfloat16, torch.float64):
        with edge(f"{dtype} logits"):
            logits = (torch.randn(3, 9, generator=g) * 3).to(dtype)
            expect_dtype(expect_tensor(fn, call(fn, logits, 0.7), "the scaled logits"), dtype, f"apply_temperature of {dtype} logits")
            _compare_temperature(fn, logits, 0.7)
    what = "shapes up to 3-D, T from 0.05 to 10, bf16, float64, -inf"
    passed(fn, f"all {cases + 2} random cases ({what}) and the errors are right")


# --------------------------------------------------------------------------- filters (shared)
def _kept(x: torch.Tensor) -> list[int]:
    return torch.isfinite(x).nonzero().flatten().tolist()


def _compare_filter(fn, logits: torch.Tensor, arg, want: torch.Tensor, text: str, hint, on_error: str = "") -> None:
    """Compare a filter's output with the reference's; `hint(row_logits, got_row, want_row)` explains a row."""
    try:
        got = call(fn, logits, arg)
    except CheckFailed as err:
        if on_error:
            fail(f"{err}. {on_error}")
        raise
    got = expect_tensor(fn, got, "the filtered logits, same shape as the input")
    if tuple(got.shape) != tuple(want.shape):
        extra = ""
        if got.shape[:-1] == want.shape[:-1] and got.shape[-1] < want.shape[-1]:
            extra = (
                ": return the full row, with -inf for the removed tokens, so that token ids stay where they are "
                "(not just the values that are kept)"
            )
        fail(f"{text} should have the shape of the logits, {tuple(want.shape)}, got {tuple(got.shape)}{extra}.")
    got = got.detach()
    if torch.allclose(got.double(), torch.softmax(want.double(), -1), atol=1e-6):
        fail(
            f"{text} returned probabilities (the softmax of the filtered logits): return the logits themselves, "
            "with -inf for the removed tokens; sample_next takes the softmax later."
        )
    rows_got = got.reshape(-1, got.shape[-1])  # (rows, V)
    rows_want, rows_in = want.reshape(-1, want.shape[-1]), logits.reshape(-1, logits.shape[-1])
    for r in range(rows_want.shape[0]):
        g, w, x = rows_got[r], rows_want[r], rows_in[r]
        where = f" (row {r}: {_fmt(x)})" if rows_want.shape[0] > 1 else ""
        removed = ~torch.isfinite(w)
        if torch.isnan(g).any():
            fail(f"{text}{where} contains NaN: {_fmt(g)}.")
        got_set, want_set = set(_kept(g)), set(_kept(w))
        if got_set != want_set and rows_want.shape[0] > 1:
            try:
                alone = call(fn, x.clone(), arg)  # the row as a 1-D tensor
            except CheckFailed:
                alone = None
            if isinstance(alone, torch.Tensor) and alone.shape == x.shape and set(_kept(alone)) == want_set:
                fail(
                    f"{text}{where} should keep the tokens {sorted(want_set)}, it keeps {sorted(got_set)}, although "
                    "the same row alone comes out right: each row is its own distribution, so work along the last "
                    "dimension only (dim=-1 in softmax, sort, cumsum and topk)."
                )
        if got_set != want_set:
            filled = removed & torch.isfinite(g)  # removed by the reference, finite in the answer
            fill = g[filled]
            if (
                want_set <= got_set
                and fill.numel()
                and bool((fill == fill[0]).all())
                and not torch.equal(fill, x[filled])
                and torch.allclose(g[~removed].double(), w[~removed].double(), atol=1e-6, rtol=1e-6)
            ):
                fail(
                    f"{text}{where}: the removed tokens should be -inf, got {fill[0].item()!r}. A removed token must "
                    "get probability exactly 0 after the softmax, and only exp(-inf) = 0 does that "
                    "(masked_fill(mask, float('-inf')))."
                )
            fail(f"{text}{where} should keep the tokens {sorted(want_set)}, it keeps {sorted(got_set)}{hint(x, g, w)}.")
        if not torch.isneginf(g[removed]).all():
            fail(f"{text}{where}: the removed tokens should be -inf, got {_fmt(g[removed])}.")
        kept = ~removed
        if not torch.allclose(g[kept].double(), w[kept].double(), atol=1e-6, rtol=1e-6):
            fail(
                f"{text}{where}: the kept logits should be unchanged, {_fmt(w[kept])}, got {_fmt(g[kept])}: "
                "only set the removed ones to -inf (no softmax, no sorting, no rescaling)."
            )


def _logits_text(logits: torch.Tensor) -> str:
    if logits.dim() == 1 and logits.numel() <= 8:
        return f"logits {_fmt(logits)}"
    return f"logits of shape {tuple(logits.shape)}"


# --------------------------------------------------------------------------- top-k
def _top_k_hint(k: int):
    def hint(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> str:
        n_got, n_want, V = len(_kept(g)), len(_kept(w)), x.shape[-1]
        finite = int(torch.isfinite(x).sum())
        if k < finite and set(_kept(g)) == set(x.topk(min(k, V), largest=False).indices.tolist()):
            return ": those are the k smallest logits; keep the k largest (torch.topk's default, largest=True)"
        if n_got == 0:
            return ": no token is left, so the softmax would divide 0 by 0"
        if n_got == min(k, V) < n_want:
            return (
                f": {n_want - n_got} of them are tied with the k-th largest logit ({w[torch.isfinite(w)].min().item():.4g}). "
                "Keep every logit >= the k-th largest value (logits < kth -> -inf), not exactly k indices"
            )
        if n_got == n_want + 1:
            return ": one token too many; the k-th largest is torch.topk(logits, k).values[..., -1] (index k - 1)"
        if n_got == n_want - 1:
            return ": one token too few; keep the logits >= the k-th largest (remove only those strictly below it)"
        if n_got == V and n_want < V:
            return ": nothing was removed"
        return f" (k = {k}: keep the k largest logits of each row, over the last dimension)"

    return hint


def _compare_top_k(fn, logits: torch.Tensor, k: int) -> None:
    want = sampling.top_k_filter(logits, k)
    V = logits.shape[-1]
    on_error = f"Here k = {k} is larger than the vocabulary, V = {V}: keep everything (k = min(k, V))." if k > V else ""
    _compare_filter(fn, logits, k, want, f"top_k_filter({_logits_text(logits)}, k={k})", _top_k_hint(k), on_error)


def check_top_k_filter(fn, hidden: bool = False) -> None:
    """top_k_filter(logits, k): the logits below the k-th largest of their row become -inf.

    Edges the exercise defines, all in the hidden test: logits tied with the k-th largest are all kept
    (k = 1 with a tie at the top too); k = V and k > V keep everything; k = 0 and k < 0 raise ValueError;
    a vocabulary of one token; -inf logits from an earlier filter; bfloat16 and float64 logits keep
    their dtype; the input is left unchanged.
    """
    forbid_reference(fn, sampling.top_k_filter)
    if not hidden:
        logits = torch.tensor([1.0, 3.0, 2.0, 0.5])
        for k in [2, 1, 4]:  # keeps [3, 2]; [3]; everything
            _compare_top_k(fn, logits, k)
        _compare_top_k(fn, torch.tensor([[1.0, 3.0, 2.0, 0.5], [4.0, -1.0, 0.0, 2.0]]), 2)  # each row its own k
        _compare_top_k(fn, torch.tensor([2.0, 1.0, 1.0, 0.0]), 2)  # a tie at the 2nd place: both 1.0 stay
        _expect_error(fn, (logits, 0), {}, "k = 0", "k must be at least 1 (None, not 0, turns top-k off)")
        _unchanged_input(fn, logits, 2)
        passed(fn, "the hand-worked examples are right (k = 2, 1, 4, a batch, a tie) and k = 0 raises ValueError")
        return
    g = seeded(2)
    cases = 0
    for shape in [(10,), (4, 30), (2, 3, 50)]:
        V = shape[-1]
        for k in [1, 3, V - 1, V, V + 5]:  # k > V keeps everything
            _compare_top_k(fn, torch.randn(shape, generator=g) * 2, k)
            cases += 1
    ties = torch.randint(0, 4, (5, 12), generator=g).float()  # many ties
    for k in [1, 2, 5]:
        _compare_top_k(fn, ties, k)
    with_inf = torch.randn(3, 10, generator=g)
    with_inf[:, :4] = float("-inf")  # tokens removed by an earlier filter
    _compare_top_k(fn, with_inf, 3)
    _compare_top_k(fn, torch.randn(4, 20, generator=g, dtype=torch.float64), 7)
    _expect_error(fn, (torch.randn(6, generator=g), -2), {}, "k = -2", "k must be at least 1")
    _unchanged_input(fn, torch.randn(3, 8, generator=g), 3)
    with edge("k = 1 with a tie at the top"):
        _compare_top_k(fn, torch.tensor([[1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0]]), 1)
    with edge("a vocabulary of one token"):
        _compare_top_k(fn, torch.tensor([[0.3], [-1.0]]), 1)
        _compare_top_k(fn, torch.tensor([[0.3], [-1.0]]), 4)
    for dtype in (torch.bfloat16, torch.float64):
        with edge(f"{dtype} logits"):
            logits = (torch.randn(3, 16, generator=g) * 2).to(dtype)
            expect_dtype(expect_tensor(fn, call(fn, logits, 5), "the filtered logits"), dtype, f"top_k_filter of {dtype} logits")
            _compare_top_k(fn, logits, 5)
    passed(fn, f"all {cases + 9} random and edge cases (k = 1 .. V + 5, ties, -inf, V = 1, bf16, float64, 3-D) are right")


# --------------------------------------------------------------------------- top-p
def _top_p_hint(top_p: float):
    def hint(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> str:
        probs = torch.softmax(x.double(), -1)
        order = probs.argsort(descending=True)
        cum = probs[order].cumsum(0)
        got = set(_kept(g))
        shown = ", ".join(f"{p:.3f}" for p in probs[order][:8].tolist())
        table = f" (the probabilities, sorted: {shown}{', ...' if len(order) > 8 else ''})"
        if not got:
            return ": no token is left; the most probable token must always be kept" + table
        mass_before = cum - probs[order]
        at_most, below = mass_before <= top_p + 1e-6, mass_before < top_p - 1e-6  # equality up to rounding
        if got == set(order[at_most].tolist()) and got != set(order[below].tolist()):
            return (
                ": the tokens above the last one you kept already hold exactly top_p, so it is not needed. Keep a token "
                "only while the mass above it is strictly less than top_p (<, not <=)" + table
            )
        if got == set(order[cum <= top_p].tolist()):
            return (
                ": the token that crosses top_p must be kept too. Keep a token while the probability of the tokens "
                "before it is < top_p (the nucleus is the smallest set whose total reaches top_p)" + table
            )
        sorted_logits = x.double()[order]
        logit_mass_before = sorted_logits.cumsum(0) - sorted_logits
        if torch.isfinite(sorted_logits).all() and got == set(order[logit_mass_before < top_p].tolist()):
            return ": accumulate probabilities (the softmax of the logits), not the logits" + table
        if len(got) < int(torch.isfinite(x).sum()) and got == set(order.flip(0)[: len(got)].tolist()):
            return ": those are the least probable tokens; sort in descending order" + table
        if len(got) == len(_kept(w)):
            return (
                ": the right number of tokens, but not the most probable ones. The mask was made in sorted order: "
                "map it back to the vocabulary (scatter with the sort indices), or keep each token whose "
                "probability is >= the smallest kept probability" + table
            )
        return f" (top_p = {top_p})" + table

    return hint


def _safe_top_p(logits: torch.Tensor, top_p: float) -> float:
    """top_p moved away from every cumulative sum, so float rounding cannot decide which tokens stay."""
    probs = torch.softmax(logits.double(), -1).sort(-1, descending=True).values.cumsum(-1)
    while top_p < 1 and bool(((probs - top_p).abs() < 1e-4).any()):
        top_p = round(top_p + 0.0007, 6)
    return min(top_p, 1.0)


def _compare_top_p(fn, logits: torch.Tensor, top_p: float) -> None:
    want = sampling.top_p_filter(logits, top_p)
    _compare_filter(fn, logits, top_p, want, f"top_p_filter({_logits_text(logits)}, top_p={top_p})", _top_p_hint(top_p))


def check_top_p_filter(fn, hidden: bool = False) -> None:
    """top_p_filter(logits, top_p): keep the fewest most probable tokens whose probabilities sum to >= top_p.

    Edges the exercise defines, all in the hidden test: a token whose mass above it *equals* top_p is
    dropped (kept only when that mass is strictly less), with exact dyadic probabilities in bf16,
    float32 and float64; the most probable token is always kept, however small top_p is; top_p = 1
    keeps everything; top_p <= 0 and > 1 raise ValueError; a vocabulary of one token; -inf logits from
    an earlier filter; the result in vocabulary order; bfloat16 and float64 logits keep their dtype.
    """
    forbid_reference(fn, sampling.top_p_filter)
    if not hidden:
        logits = torch.log(torch.tensor(SEEDS_PROBS))  # probabilities 0.05, 0.45, 0.30, 0.20
        for top_p in [0.4, 0.5, 0.8, 1.0]:  # keeps [0.45]; [0.45, 0.30]; [0.45, 0.30, 0.20]; all
            _compare_top_p(fn, logits, top_p)
        batch = torch.log(torch.tensor([SEEDS_PROBS, [0.1, 0.1, 0.1, 0.7]]))
        _compare_top_p(fn, batch, 0.6)  # row 0 keeps 0.45 and 0.30, row 1 keeps 0.7 alone
        removed = torch.log(torch.tensor([0.0, 0.5, 0.3, 0.2]))  # token 0 already -inf
        _compare_top_p(fn, removed, 0.6)
        _expect_error(fn, (logits, 0.0), {}, "top_p = 0", "top_p must be in (0, 1]")
        _expect_error(fn, (logits, 1.5), {}, "top_p = 1.5", "top_p must be in (0, 1]")
        _unchanged_input(fn, logits, 0.5)
        passed(fn, "the hand-worked examples are right (top_p = 0.4, 0.5, 0.8, 1, a batch, a removed token)")
        return
    g = seeded(3)
    cases = 0
    for scale in [0.5, 2.0, 5.0]:
        for top_p in [0.05, 0.3, 0.5, 0.9, 0.99]:
            logits = torch.randn(4, 40, generator=g) * scale
            _compare_top_p(fn, logits, _safe_top_p(logits, top_p))
            cases += 1
    logits = torch.randn(2, 3, 25, generator=g) * 2
    _compare_top_p(fn, logits, _safe_top_p(logits, 0.7))
    logits = torch.randn(3, 30, generator=g, dtype=torch.float64) * 3
    _compare_top_p(fn, logits, _safe_top_p(logits, 0.8))
    logits = torch.randn(3, 20, generator=g)
    _compare_top_p(fn, logits, 1.0)  # keeps everything
    logits = torch.tensor([[8.0, 1.0, 0.0, -1.0, 0.5]])  # the top token alone holds more than 0.99
    _compare_top_p(fn, logits, 0.95)
    logits = sampling.top_k_filter(torch.randn(4, 30, generator=g) * 2, 6)  # after top-k, as in sample_next
    _compare_top_p(fn, logits, _safe_top_p(logits, 0.75))
    _expect_error(fn, (torch.randn(6, generator=g), -0.2), {}, "top_p = -0.2", "top_p must be in (0, 1]")
    _unchanged_input(fn, torch.randn(3, 8, generator=g), 0.6)
    dyadic = torch.tensor(DYADIC_PROBS).log()  # (4,), the most probable token at index 1
    for dtype in (torch.float32, torch.float64):  # bf16 rounds the logits: its probabilities are not dyadic
        logits = dyadic.to(dtype)
        for top_p, kept in [(0.5, "0.5 alone"), (0.75, "0.5 and 0.25")]:
            with edge(f"{dtype} probabilities 0.5, 0.25, 0.125, 0.125 with top_p = {top_p}: the mass above the next token "
                      f"equals top_p, so it is dropped and only {kept} stay"):
                _compare_top_p(fn, logits, top_p)
    for dtype in (torch.bfloat16, torch.float64):
        with edge(f"{dtype} logits"):
            logits = dyadic.to(dtype)
            expect_dtype(expect_tensor(fn, call(fn, logits, 0.6), "the filtered logits"), dtype, f"top_p_filter of {dtype} logits")
            _compare_top_p(fn, logits, 0.6)  # keeps 0.5 and 0.25, far from any boundary
    with edge("a batch of rows whose boundaries are exact"):
        _compare_top_p(fn, torch.stack([dyadic, dyadic.flip(0), dyadic.roll(1)]), 0.5)
    with edge("top_p smaller than the largest probability: only the top token stays"):
        _compare_top_p(fn, dyadic, 0.001)
    with edge("a vocabulary of one token"):
        _compare_top_p(fn, torch.tensor([[0.3], [-1.0]]), 0.5)
    with edge("float64 random logits"):
        logits = torch.randn(2, 12, generator=g, dtype=torch.float64) * 2
        _compare_top_p(fn, logits, _safe_top_p(logits, 0.6))
    what = "3 scales, top_p from 0.001 to 1, mass exactly at top_p, V = 1, bf16, float64, after top-k"
    passed(fn, f"all {cases + 11} random and edge cases ({what}) are right")


# --------------------------------------------------------------------------- sample_next
def _ids(fn, got, shape: tuple, V: int, text: str) -> torch.Tensor:
    got = expect_tensor(fn, got, f"token ids of shape {shape}")
    if tuple(got.shape) != shape:
        hint = ""
        if tuple(got.shape) == (*shape, 1):
            hint = ": torch.multinomial returns (B, 1); squeeze the last dimension"
        elif tuple(got.shape[:-1]) == shape and got.shape[-1] == V:
            hint = ": that is one value per vocabulary entry; return one token id per row"
        fail(f"{text} should return {shape} token ids (one per row of logits), got shape {tuple(got.shape)}{hint}.")
    if got.is_floating_point() or got.is_complex() or got.dtype == torch.bool:
        fail(f"{text} should return integer token ids (torch.long), got dtype {got.dtype}.")
    if got.numel() and (int(got.min()) < 0 or int(got.max()) >= V):
        fail(f"{text} returned ids from {int(got.min())} to {int(got.max())}, outside the vocabulary [0, {V}).")
    return got


def _draw(fn, logits, T, k, p, seed: int | None, global_seed: int = 0):
    """The student's sample_next with a fresh generator, torch's global generator set to `global_seed`."""
    state = torch.get_rng_state()
    torch.manual_seed(global_seed)
    try:
        generator = None if seed is None else seeded(seed)
        return call(fn, logits, temperature=T, top_k=k, top_p=p, generator=generator)
    finally:
        torch.set_rng_state(state)


def _settings(T, k, p) -> str:
    return f"temperature={T}, top_k={k}, top_p={p}"


def _check_greedy(fn, logits: torch.Tensor, k=None, p=None) -> None:
    text = f"sample_next(logits of shape {tuple(logits.shape)}, {_settings(0, k, p)})"
    try:
        got = _draw(fn, logits, 0, k, p, seed=0)
    except CheckFailed as err:
        if "not implemented yet" in str(err):
            raise
        fail(f"{err}. Temperature 0 means greedy decoding: return logits.argmax(-1), without dividing by 0.")
    got = _ids(fn, got, tuple(logits.shape[:-1]), logits.shape[-1], text)
    want = logits.argmax(-1)
    if not torch.equal(got.long(), want):
        i = int((got.long() != want).nonzero()[0, 0])
        fail(
            f"{text} should be greedy, the index of the largest logit of each row {_fmt(want)}, got {_fmt(got)} "
            f"(row {i}): temperature 0 means argmax, without dividing by 0 and without sampling."
        )


def _check_reproducible(fn, logits: torch.Tensor, T, k, p) -> None:
    text = f"sample_next(logits of shape {tuple(logits.shape)}, {_settings(T, k, p)}, generator=...)"
    shape, V = tuple(logits.shape[:-1]), logits.shape[-1]
    a = _ids(fn, _draw(fn, logits, T, k, p, seed=7, global_seed=1), shape, V, text)
    b = _ids(fn, _draw(fn, logits, T, k, p, seed=7, global_seed=2), shape, V, text)
    if not torch.equal(a, b):
        fail(
            f"{text}: two generators seeded alike gave different tokens when torch's global seed changed, so the "
            "draw does not come from `generator`: pass it on, torch.multinomial(probs, 1, generator=generator)."
        )
    c = _ids(fn, _draw(fn, logits, T, k, p, seed=8, global_seed=1), shape, V, text)
    if torch.equal(a, c):
        fail(
            f"{text}: generators with different seeds gave exactly the same {a.numel()} tokens, so nothing is random "
            "(argmax instead of a draw?): sample with torch.multinomial(probs, 1, generator=generator)."
        )


def _filtered(logits, T, k, p, order=("temperature", "top_k", "top_p")) -> torch.Tensor:
    """Probabilities after the three steps in `order` (the reference functions, rearranged for hints)."""
    x = logits.double()
    for step in order:
        if step == "temperature" and T not in (None, 0):
            x = sampling.apply_temperature(x, T)
        elif step == "top_k" and k is not None:
            x = sampling.top_k_filter(x, k)
        elif step == "top_p" and p is not None:
            x = sampling.top_p_filter(x, p)
    return torch.softmax(x, -1)


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P(X >= statistic), X ~ chi-square with (categories - 1) degrees of freedom; 0 if a count falls outside."""
    if bool((counts[probs == 0] > 0).any()):
        return 0.0
    support = probs > 0
    if int(support.sum()) < 2:
        return 1.0
    expected = probs[support] * counts.sum()
    statistic = ((counts[support] - expected) ** 2 / expected).sum()
    dof = torch.tensor((int(support.sum()) - 1) / 2, dtype=torch.float64)
    return torch.special.gammaincc(dof, statistic.double() / 2).item()


def _distribution_hint(counts: torch.Tensor, logits: torch.Tensor, T, k, p) -> str:
    variants = [
        ("the temperature was not applied", _filtered(logits, None, k, p)),
        ("the logits were multiplied by the temperature", _filtered(logits * T * T, T, k, p) if T else None),
        ("top-k was not applied", _filtered(logits, T, None, p)),
        ("top-p was not applied", _filtered(logits, T, k, None)),
        ("top-p came before top-k", _filtered(logits, T, k, p, ("temperature", "top_p", "top_k"))),
        ("the temperature came after the filters", _filtered(logits, T, k, p, ("top_k", "top_p", "temperature"))),
    ]
    fits = [why for why, probs in variants if probs is not None and chi_square_p_value(counts, probs) > SIGNIFICANCE]
    if fits:
        return (
            f" They fit the distribution in which {' or in which '.join(fits)}: the order is temperature "
            "(logits / T), then top-k, then top-p, then softmax and one draw."
        )
    if int((counts > 0).sum()) == 1:
        return " Only one token was ever drawn: sample from the probabilities (torch.multinomial), not argmax."
    return ""


def _check_distribution(fn, base: torch.Tensor, T, k, p, seed: int) -> None:
    """N_DRAWS rows: each row of `base` (R, V) repeated; the frequencies of each must fit its distribution."""
    R, V = base.shape
    logits = base.repeat(N_DRAWS // R, 1)  # (N, V), rows cycle through base
    text = f"sample_next(logits of shape {tuple(logits.shape)}, {_settings(T, k, p)})"
    ids = _ids(fn, _draw(fn, logits, T, k, p, seed=seed), (logits.shape[0],), V, text).long()
    if torch.equal(ids, sampling.sample_next(logits, T, k, p, seeded(seed))):
        return  # the reference's draws exactly
    for r in range(R):
        row = base[r]
        probs = _filtered(row, T, k, p)
        counts = torch.bincount(ids[r::R], minlength=V).double()
        where = f" (rows {r}, {r + R}, ...: probabilities {_fmt(torch.softmax(row.double(), -1))})" if R > 1 else ""
        shown = f"expected frequencies {_fmt(probs)}, got {_fmt(counts / counts.sum())}"
        outside = ((probs == 0) & (counts > 0)).nonzero().flatten().tolist()
        if outside:
            j = outside[0]
            fail(
                f"{text}{where}: token {j} was drawn {int(counts[j])} times out of {int(counts.sum())}, but after "
                f"temperature -> top-k -> top-p it has probability 0 ({shown})."
                + _distribution_hint(counts, row, T, k, p)
            )
        p_value = chi_square_p_value(counts, probs)
        if p_value < SIGNIFICANCE:
            fail(
                f"{text}{where}: the frequencies of {int(counts.sum())} draws do not fit the filtered distribution "
                f"(chi-square p = {p_value:.2g} < {SIGNIFICANCE:g}): {shown}.{_distribution_hint(counts, row, T, k, p)}"
            )


def _check_sampling_errors(fn, logits: torch.Tensor) -> None:
    for kwargs, what in [
        (dict(temperature=-1.0), "a negative temperature"),
        (dict(top_k=0), "top_k = 0 (None turns top-k off)"),
        (dict(top_p=0.0), "top_p = 0"),
        (dict(top_p=1.5), "top_p = 1.5"),
    ]:
        _expect_error(fn, (logits,), kwargs, what, "invalid settings must be refused, with a message naming them")


def check_sample_next(fn, hidden: bool = False) -> None:
    """sample_next: greedy at temperature 0, else temperature -> top-k -> top-p -> softmax -> multinomial.

    Edges the exercise defines, all in the hidden test: temperature 0 is greedy, with or without
    filters, and the settings are still checked first (temperature 0 with top_k = 0 raises ValueError);
    a batch of one row; top_k = V and top_p = 1 (filters that keep everything); the filter order
    (temperature, then top-k, then top-p); the generator makes draws reproducible; the result is
    torch.long of shape (B,).
    """
    forbid_reference(fn, sampling.sample_next, generation.generate)
    with one_thread():
        _check_sample_next(fn, hidden)


def _check_sample_next(fn, hidden: bool) -> None:
    if not hidden:
        logits = torch.randn(4, 10, generator=seeded(40)) * 2
        _check_greedy(fn, logits)
        _check_greedy(fn, logits, k=3, p=0.5)
        _check_reproducible(fn, logits.repeat(64, 1), 1.0, None, None)
        base = torch.log(torch.tensor([[0.30, 0.25, 0.20, 0.15, 0.10]]))
        for T, k, p in [(1.0, None, None), (0.5, None, None), (1.0, 3, None), (1.0, None, 0.6), (0.7, 4, 0.6)]:
            _check_distribution(fn, base, T, k, p, seed=41)
        _check_sampling_errors(fn, logits)
        passed(
            fn,
            "greedy decoding, seeded draws, and 20 000 draws each for 5 settings fit the filtered distributions; "
            "invalid settings raise ValueError",
        )
        return
    g = seeded(42)
    _check_greedy(fn, torch.randn(7, 50, generator=g) * 3, k=5, p=0.9)
    _check_greedy(fn, torch.randn(1, 3, generator=g))
    _check_reproducible(fn, torch.randn(200, 30, generator=g), 0.8, 10, 0.9)
    base = torch.log(torch.tensor([[0.02, 0.30, 0.05, 0.25, 0.10, 0.18, 0.07, 0.03]]))
    settings = [(2.0, None, None), (0.5, 5, None), (1.5, None, 0.9), (1.0, 8, 1.0), (0.8, 4, 0.7)]
    for T, k, p in settings:
        _check_distribution(fn, base, T, k, p, seed=43)
    order = torch.log(torch.tensor([[0.30, 0.25, 0.20, 0.15, 0.10]]))
    _check_distribution(fn, order, 1.0, 3, 0.7, seed=44)  # top-k first keeps 2 tokens, top-p first 3
    _check_distribution(fn, order, 0.1, None, 0.7, seed=45)  # the temperature first leaves one token
    two_rows = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.1, 0.05, 0.25, 0.6]]))
    _check_distribution(fn, two_rows, 1.0, 3, 0.8, seed=46)  # each row its own distribution
    _check_sampling_errors(fn, torch.randn(3, 6, generator=g))
    with edge("temperature 0 still checks the other settings first"):
        logits = torch.randn(2, 6, generator=g)
        why = "step 1 checks every setting before greedy decoding returns"
        _expect_error(fn, (logits,), dict(temperature=0.0, top_k=0), "temperature 0 with top_k = 0", why)
        _expect_error(fn, (logits,), dict(temperature=0.0, top_p=1.5), "temperature 0 with top_p = 1.5", why)
    with edge("a batch of one row, greedy"):
        _check_greedy(fn, torch.randn(1, 9, generator=g), k=9, p=1.0)
    passed(fn, f"greedy, seeds, and {len(settings) + 3} sampling settings (order, batches) fit; errors raised")


# --------------------------------------------------------------------------- perplexity
class _PositionModel(nn.Module):
    """A stand-in language model: at window position j, token 0 gets logit slope * j, the others 0.

    With ids that are all 0, the probability of the next token depends only on how far into
    its window the prediction is made, so the perplexity depends on the windows exactly.
    """

    def __init__(self, vocab_size: int, context_length: int, slope: float = 1.0):
        super().__init__()
        self.config = types.SimpleNamespace(vocab_size=vocab_size, context_length=context_length)
        self.slope = nn.Parameter(torch.tensor(slope), requires_grad=False)

    def forward(self, idx: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if idx.shape[-1] > self.config.context_length:
            raise ValueError(f"sequence length {idx.shape[-1]} exceeds context_length {self.config.context_length}")
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size, device=idx.device)  # (B, T, V)
        logits[:, :, 0] = self.slope * torch.arange(T, device=idx.device)
        return logits


class _Recorder(nn.Module):
    """Wraps a model and records each window it is shown, as (start, end) positions in `ids`."""

    def __init__(self, inner: nn.Module, ids: torch.Tensor):
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.first_position = {}
        for i, t in enumerate(ids.tolist()):
            self.first_position.setdefault(t, i)
        self.distinct = len(self.first_position) == len(ids)
        self.ids = ids
        self.windows: list[tuple[int, int] | int] = []

    def forward(self, idx: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for row in idx.reshape(-1, idx.shape[-1]) if idx.dim() >= 1 else []:
            start = self.first_position.get(int(row[0])) if self.distinct and len(row) else None
            ok = start is not None and torch.equal(self.ids[start : start + len(row)].cpu(), row.cpu())
            self.windows.append((start, start + len(row)) if ok else len(row))  # a length if not a slice of ids
        return self.inner(idx, *args, **kwargs)


def _windows_text(windows: list) -> str:
    """Windows as ids[start:end] slices, or by their lengths when they cannot be located in ids."""
    more = f", ... ({len(windows)} in all)" if len(windows) > 6 else ""
    if all(isinstance(w, tuple) for w in windows):
        return "the slices " + ", ".join(f"ids[{a}:{b}]" for a, b in windows[:6]) + more
    lengths = [w[1] - w[0] if isinstance(w, tuple) else w for w in windows]
    return f"{len(windows)} windows of " + ", ".join(map(str, lengths[:6])) + more + " tokens"


def _scaled_transformer(seed: int, **changes) -> Transformer:
    """A small random transformer with weights 10x GPT-2's: its predictions depend on the context."""
    sizes = dict(vocab_size=160, context_length=16, d_model=32, n_layers=2, n_heads=2)
    config = TransformerConfig(**{**sizes, **changes})
    model = Transformer(config, generator=seeded(seed)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(10.0)
    return model


def _ppl_variants(model, ids, L, stride) -> list[tuple[str, float]]:
    """Values that common mistakes produce, computed with the reference on rearranged inputs."""
    nlls = generation.token_nlls(model, ids, L, stride)
    out = [
        ("the mean negative log-likelihood: return its exp", nlls.mean().item()),
        ("2 ** (mean NLL): the NLL is a natural log, so take exp", 2 ** nlls.mean().item()),
    ]
    every, per_window = [], []
    N = len(ids)
    for begin in range(0, N - 1, stride):
        end = min(begin + L, N - 1)
        window = generation.token_nlls(model, ids[begin : end + 1], end - begin, end - begin)  # all its predictions
        every.append(window)
        if end == N - 1:
            break
    scored, start = [], 0
    for i, window in enumerate(every):  # the new predictions of each window, as the reference scores them
        begin = i * stride
        scored.append(window[start - begin :])
        start = begin + len(window)
    per_window = [math.exp(w.mean().item()) for w in scored if len(w)]
    every_why = (
        "exp of the mean over every prediction of every window: overlapping predictions were counted again; "
        "each window scores only the tokens no earlier window scored"
    )
    out.append((every_why, math.exp(torch.cat(every).mean().item())))
    windows_why = "the mean of the windows' perplexities: average the NLL over all tokens first, then take exp"
    out.append((windows_why, sum(per_window) / len(per_window)))
    return out


def _compare_perplexity(fn, model: nn.Module, ids: torch.Tensor, L, stride, label: str = "") -> None:
    want = generation.perplexity(model, ids, L, stride)
    text = f"perplexity(model, ids of {len(ids)} tokens, context_length={L}, stride={stride}){label}"
    recorder = _Recorder(model, ids)
    got = call(fn, recorder, ids.clone(), L, stride, copy_args=False)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        fail(f"{text} should return a float, got {type(got).__name__}: {short(got)}.")
    if math.isfinite(got) and math.isclose(got, want, rel_tol=1e-4):
        return
    reference = _Recorder(model, ids)
    generation.perplexity(reference, ids, L, stride)
    expected, seen = reference.windows, recorder.windows
    if sorted(map(str, seen)) != sorted(map(str, expected)):
        fail(
            f"{text} should be {want:.4f}, got {got:.4f}. The model should be shown {_windows_text(expected)}, "
            f"but it was shown {_windows_text(seen)}. A window starts every `stride` "
            "tokens and holds at most context_length inputs, ids[begin : min(begin + context_length, N - 1)]; each "
            "input predicts the token after it, so the last window ends one token before the end."
        )
    if not math.isfinite(got):
        fail(f"{text} should be {want:.4f}, got {got}: average the negative log-likelihoods (not sum) before exp.")
    L = L or model.config.context_length
    for why, value in _ppl_variants(model, ids, L, stride or L):
        if math.isclose(got, value, rel_tol=1e-4):
            fail(f"{text} should be {want:.4f}, got {got:.4f}, which is {why}.")
    fail(
        f"{text} should be {want:.4f}, got {got:.4f}; the windows are right, so check which predictions are scored: "
        "all of the first window's, then only the ones no earlier window scored, every token 1 .. N-1 once."
    )


def check_perplexity(fn, hidden: bool = False) -> None:
    """perplexity(model, ids, context_length, stride) = exp(mean NLL), every token scored once, sliding windows.

    Edges the exercise defines, all in the hidden test: N = 2 (one scored token); N - 1 <= context_length
    (one window); N - 1 == context_length exactly; stride 1, a stride that does not divide N - 1 (a short
    last window), stride == context_length (disjoint windows); the defaults (context_length from the
    model, stride = context_length), also when only context_length is given; repeated tokens.
    """
    forbid_reference(fn, generation.perplexity, generation.token_nlls)
    with one_thread():
        _check_perplexity(fn, hidden)


def _check_perplexity(fn, hidden: bool) -> None:
    if not hidden:
        # 1. A model whose logits are all 0 predicts uniformly: the perplexity is V = 7, whatever the windows.
        uniform = _PositionModel(vocab_size=7, context_length=8, slope=0.0)
        ids = torch.randint(0, 7, (20,), generator=seeded(50))
        _compare_perplexity(fn, uniform, ids, 8, 4, " (uniform model, V = 7)")
        # 2. The worked example: 9 zeros, windows of 4 moved by 2, token 0's logit = position in window.
        position = _PositionModel(vocab_size=4, context_length=4)
        _compare_perplexity(fn, position, torch.zeros(9, dtype=torch.long), 4, 2, " (the worked example)")
        # 3.-4. A small random transformer, overlapping and then disjoint windows.
        model = _scaled_transformer(51, context_length=8)
        ids = torch.randperm(160, generator=seeded(52))[:30]
        _compare_perplexity(fn, model, ids, 8, 4)
        _compare_perplexity(fn, model, ids[:25], 8, 8)
        passed(fn, "the uniform model, the worked example and 2 small transformer cases are right")
        return
    cases = 0
    for seed, changes in [(60, {}), (61, dict(norm="rmsnorm", activation="swiglu", position="rope", bias=False))]:
        model = _scaled_transformer(seed, **changes)
        g = seeded(seed + 100)
        shapes = [(100, 16, 1), (100, 16, 5), (101, 16, 8), (97, 16, 16), (40, 8, 3), (17, 16, 4), (9, 16, 16), (2, 8, 1)]
        for N, L, stride in shapes:
            _compare_perplexity(fn, model, torch.randperm(160, generator=g)[:N], L, stride)
            cases += 1
    model = _scaled_transformer(62)
    _compare_perplexity(fn, model, torch.randperm(160, generator=seeded(63))[:50], None, None, " (the defaults)")
    position = _PositionModel(vocab_size=5, context_length=6, slope=0.7)
    _compare_perplexity(fn, position, torch.zeros(30, dtype=torch.long), 6, 4, " (a model that counts positions)")
    repeated = torch.randint(0, 20, (60,), generator=seeded(64))  # repeated tokens: windows shown by their length
    _compare_perplexity(fn, _scaled_transformer(65), repeated, 12, 5)
    with edge("context_length given, stride left at its default (= context_length)"):
        _compare_perplexity(fn, _scaled_transformer(66), torch.randperm(160, generator=seeded(67))[:40], 6, None)
    with edge("N - 1 == context_length + 1: a second window for the last token"):
        _compare_perplexity(fn, _scaled_transformer(66), torch.randperm(160, generator=seeded(68))[:10], 8, 8)
    cases += 2
    passed(fn, f"all {cases + 3} cases (GPT- and Llama-style models, strides 1 .. L, 2 .. 101 tokens, defaults) match")
