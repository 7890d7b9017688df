"""Checks for the chapter 04 exercises (attention).

The student writes, with the signatures of :mod:`llm_course.attention`:

- ``causal_mask(T) -> (T, T) bool``  (True where query i may attend to key j, i.e. j <= i)
- ``scaled_dot_product_attention(q, k, v, mask=None) -> (B, H, Tq, Dv)``
  (softmax(q k^T / sqrt(d_k)) v; a boolean mask, True = may attend, broadcasts to (B, H, Tq, Tk))
- ``multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads) -> (B, T, C)``
  (causal self-attention, weights in ``nn.Linear`` layout, grouped-query when w_k has fewer rows)

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test
cell) or seeded random cases and edge cases compared with the reference
(``hidden=True``, the hidden test cell). When an output differs, the check looks for
the usual causes: it reads the student's attention matrix back by passing the
identity as v (the output is then the weights themselves), and compares the output
with the reference run on inputs that reproduce a known mistake (no scaling, heads
split in the wrong order, ...).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from llm_course import attention
from llm_course.grading import (
    CheckFailed,
    call,
    expect_tensor,
    fail,
    first_difference,
    forbid_reference,
    passed,
    seeded,
    short,
)
from llm_course.grading.edges import edge, expect_dtype

# float32 throughout: a few matmuls and a softmax differ from the reference by rounding only.
TOL = dict(atol=1e-5, rtol=1e-4)


def _fmt(t: torch.Tensor) -> str:
    return short([round(x, 4) for x in t.flatten().tolist()], 80)


# --------------------------------------------------------------------------- causal mask
def _compare_causal_mask(fn, T: int) -> None:
    want = attention.causal_mask(T)
    got = expect_tensor(fn, call(fn, T), f"a ({T}, {T}) boolean mask")
    if tuple(got.shape) != (T, T):
        fail(f"causal_mask({T}) should have shape ({T}, {T}) (queries x keys), got {tuple(got.shape)}.")
    if got.dtype != torch.bool:
        hint = "build it with dtype=torch.bool"
        if got.is_floating_point() and bool(torch.isin(got, torch.tensor([0.0, 1.0])).all()):
            hint = (
                "a float mask is *added* to the scores, so 0s and 1s would block nothing; "
                "return torch.ones(T, T, dtype=torch.bool).tril() or convert with .bool()"
            )
        elif got.is_floating_point() and bool(torch.isneginf(got).any()):
            hint = "that is the additive form (0 / -inf); this exercise asks for the boolean one: True = may attend"
        fail(f"causal_mask({T}) should be a boolean tensor, got dtype {got.dtype}: {hint}.")
    if torch.equal(got, want):
        return
    if T > 1 and torch.equal(got, ~want):
        fail(
            f"causal_mask({T}) is the exact opposite of the expected mask: True must mean 'this query may "
            "attend to this key' (the convention of torch.nn.functional.scaled_dot_product_attention), "
            "so the lower triangle and the diagonal are True. (nn.MultiheadAttention uses the opposite one.)"
        )
    leaks = (got & ~want).nonzero().tolist()
    if leaks:
        i, j = max(leaks, key=lambda ij: ij[1] - ij[0])
        hint = ""
        if torch.equal(got, want.T):
            hint = " (this is the upper triangle: use tril, not triu)"
        elif torch.equal(got, torch.ones(T, T, dtype=torch.bool).tril(1)):
            hint = " (one diagonal too many: tril with diagonal=0, not 1)"
        fail(
            f"causal_mask({T}) lets position {i} see position {j}, a later token: a token may attend only "
            f"to itself and to earlier tokens (key j <= query i){hint}."
        )
    i, j = (want & ~got).nonzero()[0].tolist()
    if i == j:
        fail(
            f"in causal_mask({T}) position {i} cannot see itself: the diagonal must be True "
            "(tril with diagonal=0; a token attends to itself too)."
        )
    fail(f"in causal_mask({T}) position {i} cannot see the earlier position {j}: every key j <= i must be True.")


def check_causal_mask(fn, hidden: bool = False) -> None:
    """causal_mask(T): a (T, T) boolean tensor, True on and below the diagonal.

    Edges the exercise defines, all in the hidden test: the diagonal itself (j == i may attend);
    T = 1 (a single True) and T = 2; the dtype is torch.bool, never 0/1 ints or floats.
    """
    forbid_reference(fn, attention.causal_mask)
    cases = [4, 3, 2, 1] if not hidden else [5, 8, 17, 64, 257]
    for T in cases:
        _compare_causal_mask(fn, T)
    if hidden:
        for T in (1, 2):
            with edge(f"T = {T}"):
                _compare_causal_mask(fn, T)
        cases += [1, 2]
    if not hidden:
        passed(fn, "the masks for T = 1, 2, 3, 4 are right (True on and below the diagonal)")
    else:
        passed(fn, f"the masks for T = {', '.join(map(str, cases))} match the reference")


# --------------------------------------------------------------------------- attention
def _full_mask(mask: torch.Tensor | None, shape) -> torch.Tensor | None:
    return None if mask is None else torch.broadcast_to(mask, shape)


def _student_weights(fn, q, k, mask) -> torch.Tensor | None:
    """The student's attention matrix: with v = identity (Tk x Tk) the output is the weights."""
    B, H, Tq, _ = q.shape
    Tk = k.shape[-2]
    eye = torch.eye(Tk).expand(B, H, Tk, Tk).contiguous()  # (B, H, Tk, Tk)
    try:
        w = call(fn, q, k, eye, mask)
    except CheckFailed:
        return None
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (B, H, Tq, Tk):
        return None
    return w.detach().float()


def _explain_attention(fn, q, k, v, mask, got, want) -> str:
    B, H, Tq, D = q.shape
    Tk = k.shape[-2]
    w = _student_weights(fn, q, k, mask)
    if w is None:
        b, h, i = _first_bad_row(got, want)
        return (
            f"the output differs from the reference at [{b}, {h}, {i}]: "
            f"expected {_fmt(want[b, h, i])}, got {_fmt(got[b, h, i])}"
        )
    ref_w = attention.attention_weights(q, k, mask=mask)
    allowed = _full_mask(mask, (B, H, Tq, Tk))
    if allowed is not None:
        leaked = w.nan_to_num(0.0).masked_fill(allowed, 0.0)
        if leaked.max().item() > 1e-6:
            idx = leaked.argmax().item()
            b, h, i, j = idx // (H * Tq * Tk), idx // (Tq * Tk) % H, idx // Tk % Tq, idx % Tk
            msg = (
                f"the mask is not respected: query {i} gives weight {w[b, h, i, j].item():.3f} to key {j}, which "
                f"the mask forbids (position {i} can see position {j})"
            )
            allowed_weight = w.nan_to_num(0.0).masked_select(allowed).abs().max().item()
            if allowed_weight < 1e-6 or torch.equal(leaked > 1e-6, ~allowed):
                return msg + (
                    "; True in the mask means 'may attend': fill the scores where the mask is False, "
                    "masked_fill(~mask, -inf)"
                )
            return msg + "; set the scores of forbidden keys to -inf before the softmax"
    if not torch.isfinite(w).all():
        return (
            "the attention weights contain NaN or inf (a row whose scores are all -inf gives 0/0 in the softmax; "
            "are masked scores set to -inf where the mask is False, and before the softmax?)"
        )
    rows = w.sum(-1)
    if not torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
        idx = (rows - 1).abs().argmax().item()
        b, h, i = idx // (H * Tq), idx // Tq % H, idx % Tq
        msg = f"rows of the attention matrix do not sum to 1 (query {i} of head {h}: {rows[b, h, i].item():.4f})"
        cols = w.sum(-2)
        if torch.allclose(cols, torch.ones_like(cols), atol=1e-4):
            return msg + ": its columns do, so the softmax ran over the queries; take it over the keys, dim=-1"
        if allowed is not None and w.masked_select(~allowed).abs().max().item() < 1e-7:
            return msg + (
                ": the masked weights are zero but the others were not renormalised; set masked scores "
                "to -inf *before* the softmax (scores.masked_fill(~mask, float('-inf')))"
            )
        return msg + ": softmax over the last dim (the keys) makes each query's weights sum to 1"
    if torch.allclose(w, ref_w, **TOL):
        return "the attention weights are right, but the output is not weights @ v: (B, H, Tq, Tk) @ (B, H, Tk, Dv)"
    for scale, why in [
        (1.0, "without the scaling: divide the scores by sqrt(d_k), d_k = q.shape[-1]"),
        (1.0 / D, "divided by d_k instead of sqrt(d_k)"),
        (1.0 / math.sqrt(Tk), "divided by sqrt(Tk), the number of keys, instead of sqrt(d_k) = sqrt(q.shape[-1])"),
        (1.0 / math.sqrt(Tq), "divided by sqrt(Tq), the number of queries, instead of sqrt(d_k) = sqrt(q.shape[-1])"),
        (math.sqrt(D), "multiplied by sqrt(d_k) instead of dividing by it"),
    ]:
        if abs(scale - 1 / math.sqrt(D)) < 1e-9:
            continue
        if torch.allclose(w, attention.attention_weights(q, k, mask=mask, scale=scale), **TOL):
            return f"your attention weights are softmax(q k^T) {why}"
    b, h, i = _first_bad_row(w, ref_w)
    return (
        f"the attention weights of query {i} (batch {b}, head {h}) should be {_fmt(ref_w[b, h, i])}, "
        f"got {_fmt(w[b, h, i])}"
    )


def _first_bad_row(got: torch.Tensor, want: torch.Tensor) -> tuple[int, int, int]:
    bad = ~torch.isclose(got, want, **TOL).all(-1)  # (B, H, Tq)
    return tuple(bad.nonzero()[0].tolist()) if bad.any() else (0, 0, 0)


def _compare_attention(fn, q, k, v, mask=None, label: str = "", large: bool = False) -> None:
    want = attention.scaled_dot_product_attention(q, k, v, mask=mask)
    got = expect_tensor(fn, call(fn, q, k, v, mask), "the attention output")
    B, H, Tq, _ = q.shape
    shape = (B, H, Tq, v.shape[-1])
    where = f"on {label}" if label else f"with q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if tuple(got.shape) != shape:
        hint = ""
        if tuple(got.shape) == (B, H, Tq, k.shape[-2]):
            hint = " (that is the shape of the attention matrix: multiply it by v)"
        elif sorted(got.shape) == sorted(shape):
            hint = " (the dimensions are in the wrong order)"
        fail(
            f"scaled_dot_product_attention {where}: the output shape should be {shape} = (B, H, Tq, Dv), "
            f"got {tuple(got.shape)}{hint}."
        )
    got = got.detach()
    if not torch.isfinite(got).all():
        if large:
            fail(
                f"scaled_dot_product_attention {where} returned NaN or inf: these scores are around 200, and "
                "exp(200) overflows float32 (its limit is about exp(88)). Subtract each row's maximum before exp, "
                "or use torch.softmax, which does."
            )
        why = _explain_attention(fn, q, k, v, mask, got, want)
        fail(f"scaled_dot_product_attention {where} returned NaN or inf: {why}.")
    if got.dtype != want.dtype:
        fail(f"scaled_dot_product_attention {where} should return {want.dtype} like its inputs, got {got.dtype}.")
    if not torch.allclose(got, want, **TOL):
        fail(f"scaled_dot_product_attention {where} is wrong: {_explain_attention(fn, q, k, v, mask, got, want)}.")


def _random_case(g: torch.Generator, B, H, Tq, Tk, D, Dv, mask_kind: str):
    q = torch.randn(B, H, Tq, D, generator=g)
    k = torch.randn(B, H, Tk, D, generator=g)
    v = torch.randn(B, H, Tk, Dv, generator=g)
    shapes = {"keys": (B, 1, 1, Tk), "full": (B, 1, Tq, Tk), "2d": (Tq, Tk), "heads": (B, H, Tq, Tk)}
    if mask_kind == "none":
        mask = None
    elif mask_kind == "causal":
        mask = attention.causal_mask(Tq, Tk)
    else:
        mask = torch.rand(shapes[mask_kind], generator=g) > 0.4
        mask[..., 0] = True  # every query may attend to at least one key
    return q, k, v, mask


def check_scaled_dot_product_attention(fn, hidden: bool = False) -> None:
    """scaled_dot_product_attention(q, k, v, mask=None) = softmax(q k^T / sqrt(d_k), masked) v.

    Edges the exercise defines, all in the hidden test: d_k is q.shape[-1] (D = 1, Tq != Tk, one query);
    masks of every shape that broadcasts, down to one of shape (Tk,); a mask that leaves one key per
    query (weights exactly one-hot); scores large enough to overflow a naive exp; bfloat16 and float64
    inputs: the result has the inputs' dtype, and float64 keeps float64 precision.
    """
    forbid_reference(fn, attention.scaled_dot_product_attention, attention.attention_weights)
    try:
        forbid_reference(fn, F.scaled_dot_product_attention)
    except CheckFailed:
        fail(
            f"{fn.__name__} calls torch.nn.functional.scaled_dot_product_attention; the exercise is to write it "
            "yourself from a matrix product and a softmax (this earns no points)."
        )
    if not hidden:
        # 1. One query equally similar to two keys: the output is the mean of their values, [1, 2].
        q = torch.tensor([[[[1.0, 0.0]]]])
        k = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
        v = torch.tensor([[[[2.0, 0.0], [0.0, 4.0]]]])
        _compare_attention(fn, q, k, v, label="the worked example (expected [1, 2])")
        # 2. d_k = 4: scaled scores are [ln 3, 0], weights [3/4, 1/4], output [3, 1]; unscaled gives [3.6, 0.4].
        q = torch.full((1, 1, 1, 4), math.log(3) / 2)
        k = torch.tensor([[[[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]]])
        v = torch.tensor([[[[4.0, 0.0], [0.0, 4.0]]]])
        _compare_attention(fn, q, k, v, label="the scaling example (expected [3, 1])")
        # 3. Equal scores under a causal mask: position i averages the values 0..i: [3, 4.5, 6].
        q, k = torch.zeros(1, 1, 3, 2), torch.ones(1, 1, 3, 2)
        v = torch.tensor([[[[3.0], [6.0], [9.0]]]])
        _compare_attention(fn, q, k, v, attention.causal_mask(3), label="the causal example (expected [3, 4.5, 6])")
        # 4.-5. Small random cases: a padding mask over keys, and more keys than queries.
        g = seeded(10)
        _compare_attention(fn, *_random_case(g, 2, 2, 4, 4, 8, 8, "keys"))
        _compare_attention(fn, *_random_case(g, 1, 3, 2, 5, 4, 6, "none"))
        passed(fn, "the 3 hand-worked examples and 2 small random cases are right")
        return
    g = seeded(11)
    kinds = ["none", "causal", "keys", "full", "2d", "heads"]
    n = 0
    for i in range(18):
        B, H = 1 + i % 3, 1 + (i * 7) % 4
        Tq = int(torch.randint(1, 13, (1,), generator=g))
        Tk = Tq if i % 2 == 0 else Tq + int(torch.randint(0, 9, (1,), generator=g))
        D = [1, 3, 8, 16, 64][i % 5]
        Dv = [D, 5, 2][i % 3]
        _compare_attention(fn, *_random_case(g, B, H, Tq, Tk, D, Dv, kinds[i % len(kinds)]))
        n += 1
    # Edge cases: one token; a long sequence; scores so large that a naive exp overflows.
    _compare_attention(fn, *_random_case(g, 1, 1, 1, 1, 8, 8, "causal"), label="a single token")
    _compare_attention(fn, *_random_case(g, 1, 2, 100, 100, 32, 16, "causal"), label="100 tokens with a causal mask")
    q, k, v, mask = _random_case(g, 2, 2, 6, 6, 16, 4, "none")
    q[..., 0], k[..., 0] = 10.0, 80.0  # adds 10 * 80 / sqrt(16) = 200 to every score: the softmax is unchanged
    _compare_attention(fn, q, k, v, mask, label="scores around 200", large=True)
    with edge("a mask of shape (Tk,)"):
        q, k, v, _ = _random_case(g, 2, 2, 3, 5, 4, 4, "none")
        _compare_attention(fn, q, k, v, torch.tensor([True, False, True, True, False]), label="a mask of shape (Tk,)")
    with edge("one allowed key per query"):
        q, k, v, _ = _random_case(g, 1, 2, 4, 4, 8, 3, "none")
        _compare_attention(fn, q, k, v, torch.eye(4, dtype=torch.bool), label="a diagonal mask (output = v)")
    with edge("one query, one dimension"):
        _compare_attention(fn, *_random_case(g, 2, 1, 1, 7, 1, 3, "keys"), label="Tq = 1, D = 1")
    for dtype in (torch.bfloat16, torch.float64):
        with edge(f"{dtype} inputs"):
            _compare_attention_dtype(fn, g, dtype)
    passed(fn, f"all {n + 8} random and edge cases (masks of 6 shapes, Tq != Tk, huge scores, bf16, float64) match the reference")


def _compare_attention_dtype(fn, g: torch.Generator, dtype: torch.dtype) -> None:
    """Attention in `dtype`: the result keeps it; values match a float64 oracle to that dtype's precision."""
    q, k, v, mask = _random_case(g, 2, 2, 6, 6, 16, 8, "causal")
    q, k, v = (t.to(dtype) for t in (q, k, v))
    want = attention.scaled_dot_product_attention(q.double(), k.double(), v.double(), mask=mask)  # float64 oracle
    got = expect_tensor(fn, call(fn, q, k, v, mask), "the attention output")
    _expect_oracle(got, want, dtype, f"scaled_dot_product_attention of {dtype} q, k, v", bf16_tol=3e-2)


def _expect_oracle(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str, bf16_tol: float) -> None:
    """`got` has `want`'s shape, keeps `dtype`, and matches the float64 oracle `want` to `dtype`'s precision."""
    if tuple(got.shape) != tuple(want.shape):
        fail(f"{what}: the output shape should be {tuple(want.shape)}, got {tuple(got.shape)}.")
    expect_dtype(got, dtype, f"the output of {what}")
    tol = dict(atol=bf16_tol, rtol=bf16_tol) if dtype == torch.bfloat16 else dict(atol=1e-10, rtol=1e-10)
    got = got.detach().double()
    if not torch.allclose(got, want, **tol):
        why = "" if dtype == torch.bfloat16 else " (is part of it computed in float32? float64 inputs deserve float64 arithmetic)"
        err = (got - want).abs().max().item()
        fail(f"{what} is wrong beyond {dtype}'s rounding (error {err:.2g}): {first_difference(got, want)}{why}.")


# --------------------------------------------------------------------------- multi-head attention
def _mha_weights(g: torch.Generator, C: int, H: int, H_kv: int):
    D = C // H
    s = 1 / math.sqrt(C)
    w_q = torch.randn(H * D, C, generator=g) * s
    w_k = torch.randn(H_kv * D, C, generator=g) * s
    w_v = torch.randn(H_kv * D, C, generator=g) * s
    w_o = torch.randn(C, H * D, generator=g) * s
    return w_q, w_k, w_v, w_o


def _explain_mha(fn, x, w_q, w_k, w_v, w_o, H, got) -> str:
    B, T, C = x.shape
    D = w_q.shape[0] // H
    H_kv = w_k.shape[0] // D
    ref = attention.multi_head_attention

    def probe(*args):  # the student's output on other arguments, or None if that call fails
        try:
            out = call(fn, *args)
        except CheckFailed:
            return None
        return out.detach() if isinstance(out, torch.Tensor) and out.shape == got.shape else None

    def same(*weights) -> bool:
        try:
            return torch.allclose(got, ref(x, *weights, H), **TOL)
        except Exception:  # noqa: BLE001 - a variant that does not apply to these shapes
            return False

    # 1. Mistakes that the reference reproduces when given rearranged weights.
    eye = torch.eye(C)
    if same(w_q, w_k, w_v, eye):
        return "the output equals the concatenated heads before the output projection: finish with @ w_o.T"
    if all(w.shape[0] == w.shape[1] for w in (w_q, w_k, w_v, w_o)) and same(w_q.T, w_k.T, w_v.T, w_o.T):
        return (
            "the weights are in nn.Linear's layout (out_features, in_features): project with x @ w.T, not x @ w"
        )
    if H > 1 and D > 1:
        # Heads taken as strided features, "(d h)": head h, dim d is feature d * H + h.
        def strided(w, heads, dim):
            idx = torch.arange(heads * D).view(D, heads).T.reshape(-1)  # head h's features, in order
            return w.index_select(dim, idx)

        if same(strided(w_q, H, 0), strided(w_k, H_kv, 0), strided(w_v, H_kv, 0), strided(w_o, H, 1)):
            return (
                "head h must take the features h*D ... h*D + D - 1 of q, k and v (split the last dim as "
                "'(h d)', heads first, and merge them back the same way); yours takes every H-th feature, '(d h)'"
            )
    if H_kv < H:
        r = H // H_kv
        # Tiled key/value heads: query head h uses kv head h % H_kv instead of h // r.
        order = [(hp % r) * H_kv + hp // r for hp in range(H)]
        q_blocks, o_blocks = w_q.chunk(H, dim=0), w_o.chunk(H, dim=1)
        w_q_p = torch.cat([q_blocks[h] for h in order], 0)
        w_o_p = torch.cat([o_blocks[h] for h in order], 1)
        if same(w_q_p, w_k, w_v, w_o_p):
            return (
                f"with {H} query heads and {H_kv} key/value heads, query head h must use key/value head "
                f"h // {r} (consecutive query heads share one: repeat_interleave or einops "
                "'b h t d -> b (h r) t d'); yours uses head h % H_kv (.repeat tiles the heads instead)"
            )
    if same(w_q * math.sqrt(D / C), w_k, w_v, w_o):
        return "the scores are divided by sqrt(d_model) instead of sqrt(d_head) = sqrt(C / n_heads)"
    if same(w_q * math.sqrt(D), w_k, w_v, w_o):
        return "the scores are not divided by sqrt(d_head)"
    # 2. Right with one head but not with several: the split into heads or the merge is wrong.
    if H > 1 and H_kv == H:
        one = probe(x, w_q, w_k, w_v, w_o, 1)
        if one is not None and torch.allclose(one, ref(x, w_q, w_k, w_v, w_o, 1), **TOL):
            return (
                f"it is right with n_heads=1 but not with n_heads={H}: the split into heads or the merge back is "
                "wrong. (B, T, H*D) -> (B, T, H, D) -> transpose to (B, H, T, D); a plain .view(B, H, T, D) mixes "
                "tokens with heads. einops: rearrange(q, 'b t (h d) -> b h t d', h=H)"
            )
    # 3. Causality: changing the last token must not change earlier outputs.
    if T > 1:
        x2 = x.clone()
        x2[:, -1] = torch.randn(B, C, generator=seeded(99))
        other = probe(x2, w_q, w_k, w_v, w_o, H)
        if other is not None:
            diff = (other - got)[:, :-1].abs().amax(dim=(0, 2))  # (T - 1,)
            if diff.max().item() > 1e-5:
                i = int(diff.argmax())
                return (
                    f"the output at position {i} changes when token {T - 1} changes, so position {i} can see "
                    f"position {T - 1}: the attention must be causal (is_causal=True, or a causal mask)"
                )
    want = ref(x, w_q, w_k, w_v, w_o, H)
    bad = ~torch.isclose(got, want, **TOL).all(-1)
    b, t = bad.nonzero()[0].tolist() if bad.any() else (0, 0)
    return f"at batch {b}, position {t} the output should start {_fmt(want[b, t, :6])}, got {_fmt(got[b, t, :6])}"


def _compare_mha(fn, x, w_q, w_k, w_v, w_o, H: int) -> None:
    want = attention.multi_head_attention(x, w_q, w_k, w_v, w_o, H)
    B, T, C = x.shape
    D = w_q.shape[0] // H
    H_kv = w_k.shape[0] // D
    try:
        got = expect_tensor(fn, call(fn, x, w_q, w_k, w_v, w_o, H), "the attention output")
    except CheckFailed as err:
        if H_kv == H:
            raise
        fail(
            f"{err} (This case is grouped-query attention: w_k and w_v have {H_kv * D} rows, so there are "
            f"{H_kv} key/value heads of size {D}, each shared by {H // H_kv} query heads.)"
        )
    what = f"x {tuple(x.shape)}, n_heads={H}" + (f", {H_kv} key/value heads" if H_kv != H else "")
    if tuple(got.shape) != (B, T, C):
        fail(f"multi_head_attention({what}) should return shape {(B, T, C)} = (B, T, C), got {tuple(got.shape)}.")
    got = got.detach()
    if not torch.isfinite(got).all():
        fail(f"multi_head_attention({what}) returned NaN or inf.")
    if not torch.allclose(got, want, **TOL):
        fail(f"multi_head_attention({what}) is wrong: {_explain_mha(fn, x, w_q, w_k, w_v, w_o, H, got)}.")


def check_multi_head_attention(fn, hidden: bool = False) -> None:
    """multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads): causal MHA/GQA equal to the library's.

    Edges the exercise defines, all in the hidden test: one token (T = 1); d_head = 1; grouped-query
    attention with several and with one key/value head (consecutive query heads share a kv head);
    bfloat16 and float64 inputs: the result has the inputs' dtype, and float64 keeps its precision.
    """
    forbid_reference(
        fn, attention.multi_head_attention, attention.MultiHeadAttention, attention.MultiHeadAttention.forward
    )
    g = seeded(20 if not hidden else 21)
    if not hidden:
        cases = [(1, 4, 8, 2, 2), (2, 5, 12, 3, 3), (2, 6, 8, 1, 1), (1, 6, 16, 4, 2)]
    else:
        cases = [(2, 7, 32, 4, 4), (3, 9, 24, 6, 6), (1, 12, 48, 8, 2), (2, 5, 32, 8, 1), (2, 10, 16, 4, 4)]
        cases += [(1, 1, 16, 4, 4), (2, 3, 8, 8, 8), (1, 16, 64, 4, 1), (3, 6, 24, 6, 3)]
    for B, T, C, H, H_kv in cases:
        x = torch.randn(B, T, C, generator=g)
        _compare_mha(fn, x, *_mha_weights(g, C, H, H_kv), H)
    if hidden:
        for dtype in (torch.bfloat16, torch.float64):
            with edge(f"{dtype} inputs, grouped-query attention"):
                _compare_mha_dtype(fn, g, dtype)
    if not hidden:
        passed(fn, "4 small cases match the reference (2 and 3 heads, a single head, grouped-query attention)")
    else:
        passed(fn, f"all {len(cases)} random and edge cases (one token, d_head = 1, GQA, MQA) match the reference")


def _compare_mha_dtype(fn, g: torch.Generator, dtype: torch.dtype) -> None:
    """MHA in `dtype`: the result keeps it; values match a float64 oracle to that dtype's precision."""
    x = torch.randn(2, 7, 32, generator=g).to(dtype)
    weights = [w.to(dtype) for w in _mha_weights(g, 32, 8, 2)]
    want = attention.multi_head_attention(x.double(), *[w.double() for w in weights], 8)  # float64 oracle
    got = expect_tensor(fn, call(fn, x, *weights, 8), "the attention output")
    _expect_oracle(got, want, dtype, f"multi_head_attention of {dtype} x and weights", bf16_tol=5e-2)
