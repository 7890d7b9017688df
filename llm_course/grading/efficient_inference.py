"""Checks for the chapter 09 exercises (efficient inference).

The student writes, with the signatures of the reference:

- ``cached_attention(q, k_new, v_new, k_cache, v_cache, length) -> (B, H, T, D)``
  (:func:`llm_course.kv_cache.cached_attention`: write the new keys and values into the
  preallocated cache at ``length``, attend causally to everything stored; ``CacheFullError``
  or another ``ValueError`` when they do not fit)
- ``verify_draft(p, q, draft, u) -> (n_accepted, next_distribution)``
  (:func:`llm_course.speculative.verify_draft`, the accept / resample rule of speculative decoding)
- ``quantize_groupwise(w, bits, group_size) -> (q int8, scale)`` and
  ``dequantize_groupwise(q, scale) -> w_hat`` (:mod:`llm_course.quantization`)

Each ``check_*`` runs hand-worked examples (``hidden=False``) or seeded random cases and edge
cases compared with the reference (``hidden=True``). When an output differs, the check compares
it with the reference run on inputs that reproduce a known mistake (attending to the empty
slots of the cache, a top-left causal mask, the inverted ratio q/p, 128 levels instead of 127,
groups along the wrong axis, ...) and says which one it is.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from llm_course import kv_cache, quantization, speculative
from llm_course.attention import scaled_dot_product_attention
from llm_course.grading import CheckFailed, call, expect_tensor, fail, forbid_reference, passed, seeded, short
from llm_course.grading.edges import edge, expect_dtype

TOL = dict(atol=1e-5, rtol=1e-4)


def _fmt(t: torch.Tensor, limit: int = 80) -> str:
    return short([round(x, 4) for x in t.flatten().tolist()], limit)


# --------------------------------------------------------------------------- cached attention
def _kv_case(g, B, H, H_kv, T_max, D, length, n_new):
    """A cache holding `length` tokens (random past keys/values, garbage beyond), and n_new new tokens."""
    k_cache = torch.randn(B, H_kv, T_max, D, generator=g) * 3  # slots past `length` hold garbage
    v_cache = torch.randn(B, H_kv, T_max, D, generator=g) * 3
    q = torch.randn(B, H, n_new, D, generator=g)
    k_new, v_new = torch.randn(B, H_kv, n_new, D, generator=g), torch.randn(B, H_kv, n_new, D, generator=g)
    return q, k_new, v_new, k_cache, v_cache, length


def _explain_cached(q, k_new, v_new, k_cache, v_cache, length, got) -> str:
    end = length + k_new.shape[-2]
    k_all, v_all = k_cache.clone(), v_cache.clone()
    k_all[:, :, length:end], v_all[:, :, length:end] = k_new, v_new
    n_rep = q.shape[1] // k_new.shape[1]

    def same(out) -> bool:
        return out.shape == got.shape and torch.allclose(got, out, **TOL)

    if same(scaled_dot_product_attention(q, k_all, v_all, causal=True)) or same(scaled_dot_product_attention(q, k_all, v_all)):
        return (
            f"the queries attend to all {k_cache.shape[-2]} slots of the cache, including the empty ones after "
            f"position {end - 1}: attend only to k_cache[:, :, :length + T] (here :{end})"
        )
    if same(scaled_dot_product_attention(q, k_new, v_new, causal=True)):
        return "the queries attend only to the new keys: the past tokens' keys and values in the cache are ignored"
    if same(scaled_dot_product_attention(q, k_all[:, :, :end], v_all[:, :, :end])):
        return (
            "the new tokens see each other without a causal mask: new token i (at position length + i) must not "
            "see the new tokens after it (causal=True in the course's attention puts the queries last)"
        )
    if q.shape[-2] < end and n_rep == 1 and same(
        F.scaled_dot_product_attention(q, k_all[:, :, :end], v_all[:, :, :end], is_causal=True)
    ):
        return (
            "the causal mask is aligned top-left (PyTorch's is_causal does that): with fewer queries than keys, "
            "query i sits at position length + i and may see keys 0 .. length + i"
        )
    if length > 0:
        shifted_k, shifted_v = k_cache.clone(), v_cache.clone()
        shifted_k[:, :, length + 1 : end + 1], shifted_v[:, :, length + 1 : end + 1] = k_new, v_new
        if end + 1 <= k_cache.shape[-2] and same(
            scaled_dot_product_attention(q, shifted_k[:, :, : end + 1], shifted_v[:, :, : end + 1], causal=True)
        ):
            return "the new keys are written one slot too late: at positions length .. length + T - 1, not length + 1 .."
    want = kv_cache.cached_attention(q, k_new, v_new, k_cache.clone(), v_cache.clone(), length)
    bad = ~torch.isclose(got, want, **TOL).all(-1)
    b, h, i = bad.nonzero()[0].tolist() if bad.any() else (0, 0, 0)
    return f"at [{b}, {h}, {i}] the output should be {_fmt(want[b, h, i])}, got {_fmt(got[b, h, i])}"


def _compare_cached(fn, case, label: str = "") -> None:
    q, k_new, v_new, k_cache, v_cache, length = case
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want = kv_cache.cached_attention(q, k_new, v_new, want_k, want_v, length)
    got_k, got_v = k_cache.clone(), v_cache.clone()
    got = expect_tensor(fn, call(fn, q.clone(), k_new.clone(), v_new.clone(), got_k, got_v, length, copy_args=False), "the attention output")
    B, H, T, D = q.shape
    end = length + T
    where = label or f"q {tuple(q.shape)}, a cache of {k_cache.shape[-2]} slots holding {length} tokens"
    if tuple(got.shape) != (B, H, T, D):
        hint = ""
        if got.shape[-2] == end:
            hint = " (one output per cached token: only the new queries produce outputs)"
        fail(f"cached_attention with {where}: the output should have shape {(B, H, T, D)} = q's, got {tuple(got.shape)}{hint}.")
    if torch.equal(got_k, k_cache) and torch.equal(got_v, v_cache) and not torch.equal(k_cache[:, :, length:end], k_new):
        fail(
            f"cached_attention with {where} did not write the new keys into k_cache: the cache must be updated in "
            f"place, k_cache[:, :, length:length + T] = k_new (here slots {length} .. {end - 1}), so the next step sees them."
        )
    if not torch.equal(got_k[:, :, length:end], k_new) or not torch.equal(got_v[:, :, length:end], v_new):
        hint = ""
        if end < k_cache.shape[-2] and torch.equal(got_k[:, :, length + 1 : end + 1], k_new):
            hint = f" (they were written one slot too late, from slot {length + 1}: the first free slot is `length`)"
        elif length > 0 and torch.equal(got_k[:, :, :T], k_new) and not torch.equal(k_cache[:, :, :T], k_new):
            hint = " (they were written at the start of the cache, over the past tokens)"
        elif torch.equal(got_v[:, :, length:end], k_new):
            hint = " (the keys went into v_cache: keys into k_cache, values into v_cache)"
        fail(
            f"cached_attention with {where}: after the call k_cache[:, :, {length}:{end}] and v_cache[:, :, {length}:{end}] "
            f"should hold k_new and v_new{hint}."
        )
    if not torch.equal(got_k[:, :, :length], k_cache[:, :, :length]):
        fail(f"cached_attention with {where} changed the keys of the past tokens (slots 0 .. {length - 1}): leave them as they are.")
    got = got.detach()
    if not torch.isfinite(got).all():
        fail(f"cached_attention with {where} returned NaN or inf.")
    if not torch.allclose(got, want, **TOL):
        fail(f"cached_attention with {where} is wrong: {_explain_cached(q, k_new, v_new, k_cache, v_cache, length, got)}.")


def _check_full(fn, g) -> None:
    q, k_new, v_new, k_cache, v_cache, _ = _kv_case(g, 1, 2, 2, 6, 4, 0, 3)
    try:
        call(fn, q, k_new, v_new, k_cache, v_cache, 4)
    except CheckFailed as err:
        if isinstance(err.__cause__, ValueError):  # CacheFullError is a ValueError
            return
        if "IndexError" in str(err) or "RuntimeError" in str(err):
            fail(
                "cached_attention with 4 of 6 slots used and 3 new tokens crashed with an unclear error: check that "
                "length + T <= T_max first and raise a ValueError that says the cache is full. "
                f"({type(err.__cause__).__name__}: {str(err.__cause__)[:150]})"
            )
        raise
    fail(
        "cached_attention with 4 of 6 slots used and 3 new tokens did not raise an error: 3 tokens do not fit in the "
        "2 free slots. Raise a ValueError (e.g. kv_cache.CacheFullError) that says the cache is full."
    )


def check_cached_attention(fn, hidden: bool = False) -> None:
    """cached_attention(q, k_new, v_new, k_cache, v_cache, length): write in place, attend causally.

    Edges the exercise defines, all in the hidden test: length = 0 (the prefill) with one token and
    with several; a prefill that fills the cache exactly (length + T == T_max is allowed); the last free
    slot; one token too many (length + T == T_max + 1) and a decode step into a full cache (length ==
    T_max) raise ValueError; garbage in the slots after length + T; MHA, GQA and MQA.
    """
    forbid_reference(fn, kv_cache.cached_attention, kv_cache.LayerKVCache.update)
    g = seeded(90 if not hidden else 91)
    if not hidden:
        # 1. Worked example: one head, D = 1, a query of 0, so every score is 0. Two past tokens with
        #    values 1, 3 and one new token with value 5: the output is the mean of the values, 3.
        q = torch.zeros(1, 1, 1, 1)
        k_cache = torch.tensor([[[[0.5], [-1.0], [9.0], [9.0]]]])
        v_cache = torch.tensor([[[[1.0], [3.0], [100.0], [100.0]]]])  # slots 2 and 3 are empty (garbage)
        _compare_cached(fn, (q, torch.tensor([[[[2.0]]]]), torch.tensor([[[[5.0]]]]), k_cache, v_cache, 2),
                        label="the worked example (expected 3.0)")  # fmt: skip
        # 2. A prefill (empty cache, 3 tokens), then a step; 3. grouped-query attention.
        _compare_cached(fn, _kv_case(g, 1, 2, 2, 8, 4, 0, 3), label="a prefill of 3 tokens into an empty cache")
        _compare_cached(fn, _kv_case(g, 2, 2, 2, 8, 4, 3, 1))
        _compare_cached(fn, _kv_case(g, 1, 4, 2, 8, 4, 2, 2))
        _check_full(fn, g)
        passed(fn, "the worked example, a prefill, a decode step, GQA and a full cache are right")
        return
    n = 0
    for i in range(12):
        H_kv = [1, 2, 4][i % 3]
        H = H_kv * [1, 2][i % 2]
        T_max = int(torch.randint(6, 20, (1,), generator=g))
        length = int(torch.randint(0, T_max - 1, (1,), generator=g))
        n_new = int(torch.randint(1, T_max - length + 1, (1,), generator=g)) if i % 3 else 1
        _compare_cached(fn, _kv_case(g, 1 + i % 2, H, H_kv, T_max, [1, 4, 8][i % 3], length, n_new))
        n += 1
    _compare_cached(fn, _kv_case(g, 1, 2, 2, 5, 4, 0, 5), label="a prefill that fills the cache exactly")
    _compare_cached(fn, _kv_case(g, 1, 2, 1, 9, 8, 8, 1), label="the last free slot")
    _check_full(fn, g)
    with edge("one token into an empty cache"):
        _compare_cached(fn, _kv_case(g, 2, 4, 2, 7, 4, 0, 1), label="one token, length 0")
    with edge("a decode step into a full cache"):
        q, k_new, v_new, k_cache, v_cache, _ = _kv_case(g, 1, 2, 2, 5, 4, 0, 1)
        try:
            call(fn, q, k_new, v_new, k_cache, v_cache, 5)
        except CheckFailed as err:
            if not isinstance(err.__cause__, ValueError):
                fail(f"cached_attention with all 5 slots used and 1 new token should raise a ValueError that says the "
                     f"cache is full, got: {err}")  # fmt: skip
        else:
            fail("cached_attention with all 5 slots used and 1 new token did not raise an error: length + T > T_max "
                 "means the cache is full; raise a ValueError (e.g. kv_cache.CacheFullError)")  # fmt: skip
    n += 2
    passed(fn, f"all {n + 2} random and edge cases (MHA, GQA, MQA, prefill, a full cache) match the reference")


# --------------------------------------------------------------------------- speculative accept / reject
def _spec_case(g, gamma: int, V: int, sharp: float = 1.5):
    p = torch.softmax(torch.randn(gamma + 1, V, generator=g) * sharp, -1)
    q = torch.softmax(torch.randn(gamma, V, generator=g) * sharp, -1)
    draft = torch.multinomial(q, 1, generator=g).squeeze(-1)  # (gamma,)
    u = torch.rand(gamma, generator=g)
    return p, q, draft, u


def _reference_n(p, q, draft, u, rule) -> int:
    gamma = draft.shape[0]
    ok = rule(p[:gamma].gather(-1, draft[:, None]).squeeze(-1), q.gather(-1, draft[:, None]).squeeze(-1), u)
    return gamma if bool(ok.all()) else int((~ok).nonzero()[0, 0])


def _compare_verify(fn, p, q, draft, u, label: str = "") -> None:
    want_n, want_dist = speculative.verify_draft(p, q, draft, u)
    got = call(fn, p, q, draft, u)
    where = label or f"gamma={draft.shape[0]}, V={p.shape[-1]}, drafts {draft.tolist()}, u {_fmt(u, 60)}"
    if not isinstance(got, tuple) or len(got) != 2:
        fail(f"verify_draft should return a pair (n_accepted, next_distribution), got {short(got)}.")
    n, dist = got
    if isinstance(n, torch.Tensor) and n.numel() == 1:
        n = int(n)
    if not isinstance(n, int):
        fail(f"verify_draft: n_accepted should be an int, got {type(n).__name__}: {short(n)}.")
    ratio = (p[: draft.shape[0]].gather(-1, draft[:, None]).squeeze(-1) / q.gather(-1, draft[:, None]).squeeze(-1))
    if n != want_n:
        gamma = draft.shape[0]
        hint = ""
        if n == _reference_n(p, q, draft, u, lambda pp, qq, uu: uu < qq / pp):
            hint = " (you accept when u < q/p: the ratio is target over draft, p(x)/q(x))"
        elif n == _reference_n(p, q, draft, u, lambda pp, qq, uu: uu < pp):
            hint = " (you accept when u < p(x): the test is u < p(x) / q(x), the draft's probability matters)"
        elif n == int((u * q.gather(-1, draft[:, None]).squeeze(-1) < p[:gamma].gather(-1, draft[:, None]).squeeze(-1)).sum()):
            hint = " (you counted every accepted draft: the first rejection ends the round, later drafts are discarded)"
        elif n == gamma and want_n < gamma:
            hint = " (every draft was accepted: is the test u < p(x)/q(x) done at all?)"
        fail(
            f"verify_draft with {where}: {want_n} drafts should be accepted, you accepted {n} "
            f"(p/q of the drafts: {_fmt(ratio, 60)}){hint}."
        )
    dist = expect_tensor(fn, dist, "the distribution of the next token")
    V = p.shape[-1]
    if tuple(dist.shape) != (V,):
        fail(f"verify_draft with {where}: the next distribution should have shape ({V},), got {tuple(dist.shape)}.")
    dist = dist.detach().double()
    if torch.allclose(dist, want_dist.double(), atol=1e-6):
        return
    if want_n == draft.shape[0]:
        hint = ""
        if torch.allclose(dist, p[want_n - 1].double(), atol=1e-6):
            hint = ": you returned p at the last draft's position; the bonus token comes from the position after it, p[gamma]"
        fail(f"verify_draft with {where}: all drafts are accepted, so the next distribution is p[gamma] = {_fmt(want_dist)}, got {_fmt(dist)}{hint}.")
    i = want_n
    residual = (p[i] - q[i]).double()
    hint = ""
    if torch.allclose(dist, p[i].double(), atol=1e-6):
        hint = ": that is p itself; after a rejection sample from the residual max(0, p - q), normalized"
    elif torch.allclose(dist, residual.clamp(min=0), atol=1e-6):
        hint = ": the residual max(0, p - q) is not normalized; divide it by its sum"
    elif torch.allclose(dist, residual, atol=1e-6) or (dist < 0).any():
        hint = ": a distribution cannot be negative; take max(0, p - q) and normalize it"
    elif torch.allclose(dist, (q[i] - p[i]).double().clamp(min=0) / (q[i] - p[i]).double().clamp(min=0).sum(), atol=1e-6):
        hint = ": that is norm(max(0, q - p)); the residual is norm(max(0, p - q))"
    elif want_n > 0 and torch.allclose(dist, speculative.residual_distribution(p[i - 1], q[i - 1]).double(), atol=1e-6):
        hint = ": the residual of the position before; use the position of the first rejected draft"
    fail(
        f"verify_draft with {where}: draft {i} is rejected, so the next distribution should be the residual "
        f"{_fmt(want_dist)}, got {_fmt(dist)}{hint}."
    )


def check_verify_draft(fn, hidden: bool = False) -> None:
    """verify_draft(p, q, draft, u) -> (n_accepted, next_distribution).

    Edges the exercise defines, all in the hidden test: u exactly equal to p/q rejects (accept only
    when u < p/q); p(x) = 0 rejects even with u = 0; p/q >= 1 always accepts; all drafts accepted (the
    bonus p[gamma]); the first draft rejected (n = 0); gamma = 1; q == p; n a Python int.
    """
    forbid_reference(fn, speculative.verify_draft, speculative.speculative_step)
    if not hidden:
        p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
        q = torch.tensor([[0.25, 0.5, 0.25], [0.1, 0.8, 0.1]])
        draft = torch.tensor([0, 1])
        # Draft 0: p/q = 2, always accepted. Draft 1: p/q = 0.125, accepted iff u < 0.125.
        _compare_verify(fn, p, q, draft, torch.tensor([0.9, 0.5]),
                        label="the worked example with u = [0.9, 0.5] (expected 1 accepted, then [0, 0, 1])")  # fmt: skip
        _compare_verify(fn, p, q, draft, torch.tensor([0.9, 0.1]),
                        label="the worked example with u = [0.9, 0.1] (expected 2 accepted, then p[2])")  # fmt: skip
        # Draft 0 is rejected (p/q = 0.6 < u = 0.7): resample from norm(max(0, p0 - q0)) = [0, 1, 0].
        q2 = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
        p2 = torch.tensor([[0.3, 0.5, 0.2], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
        _compare_verify(fn, p2, q2, torch.tensor([0, 1]), torch.tensor([0.7, 0.0]),
                        label="a first draft rejected (expected 0 accepted, then [0, 1, 0])")  # fmt: skip
        _compare_verify(fn, *_spec_case(seeded(92), 4, 6))
        passed(fn, "the 3 worked examples and a random case are right")
        return
    g = seeded(93)
    n = 0
    for i in range(30):
        gamma, V = 1 + i % 5, [3, 8, 50][i % 3]
        _compare_verify(fn, *_spec_case(g, gamma, V, sharp=[0.5, 1.5, 3.0][i % 3]))
        n += 1
    p, q, draft, _ = _spec_case(g, 3, 10)
    _compare_verify(fn, p, q, draft, torch.zeros(3), label="u = 0 (every draft accepted)")
    _compare_verify(fn, p, p[:3].clone(), draft, torch.full((3,), 0.999), label="q == p (nothing can be rejected)")
    # Exact ratios: p/q = 0.5 for draft 1 (0.25 / 0.5) and 0 for a token the target never produces.
    p = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.25, 0.5, 0.25], [0.25, 0.5, 0.25], [0.5, 0.25, 0.25]])
    edges = {
        "u equal to p/q rejects": (torch.tensor([0, 1, 1]), torch.tensor([0.3, 0.5, 0.1])),
        "p(x) = 0 rejects even when u = 0": (torch.tensor([0, 0, 0]), torch.tensor([0.0, 0.0, 0.0])),
        "the first draft rejected": (torch.tensor([1, 0, 1]), torch.tensor([0.5, 0.0, 0.0])),
        "p/q >= 1 always accepts, then the bonus": (torch.tensor([0, 2, 1]), torch.tensor([0.999, 0.999, 0.999])),
    }
    for name, (draft, u) in edges.items():
        with edge(name):
            shown = f"{name}: p {p.tolist()}, q {q.tolist()}, drafts {draft.tolist()}, u {u.tolist()}"
            _compare_verify(fn, p, q, draft, u, label=shown)
    n += len(edges)
    passed(fn, f"all {n + 2} random and edge cases (gamma 1 to 5, V up to 50, q == p) match the reference")


# --------------------------------------------------------------------------- quantization
def _compare_quantize(fn, w, bits, group_size, label: str = "", exact_halves: bool = False) -> None:
    """`exact_halves`: w / scale is exactly k + 0.5 somewhere (a power-of-two scale), so torch.round's
    half-to-even answer is required there instead of either neighbour."""
    want_q, want_scale = quantization.quantize_groupwise(w, bits, group_size)
    got = call(fn, w, bits, group_size)
    where = label or f"w {tuple(w.shape)}, bits={bits}, group_size={group_size}"
    if not isinstance(got, tuple) or len(got) != 2:
        fail(f"quantize_groupwise should return a pair (q, scale), got {short(got)}.")
    q, scale = (expect_tensor(fn, t, name) for t, name in zip(got, ("q, the integers", "scale, one per group")))
    n_out, n_in = w.shape
    if tuple(q.shape) != (n_out, n_in):
        fail(f"quantize_groupwise({where}): q should have w's shape {(n_out, n_in)}, got {tuple(q.shape)}.")
    if tuple(scale.shape) != tuple(want_scale.shape):
        hint = " (one scale per group of each row: (out, in // group_size))"
        fail(f"quantize_groupwise({where}): scale should have shape {tuple(want_scale.shape)}, got {tuple(scale.shape)}{hint}.")
    if q.dtype != torch.int8:
        fail(f"quantize_groupwise({where}): q should be stored as torch.int8 (1 byte a value), got {q.dtype}; convert with .to(torch.int8) after rounding.")
    scale = scale.detach().float()
    if not torch.isfinite(scale).all():
        fail(f"quantize_groupwise({where}): scale contains NaN or inf: a group of zeros has max |w| = 0; give it scale 1 (its q is 0 anyway).")
    top = 2 ** (bits - 1) - 1
    if int(q.abs().max()) > top:
        fail(f"quantize_groupwise({where}): q has values up to {int(q.abs().max())}, outside [-{top}, {top}] for {bits} bits.")
    nonzero = want_scale != 1.0
    if not torch.allclose(scale[nonzero], want_scale[nonzero], rtol=1e-5, atol=0):
        hint = ""
        groups = w.float().reshape(n_out, n_in // group_size, group_size).abs().amax(-1)
        if torch.allclose(scale, groups / 2 ** (bits - 1), rtol=1e-5):
            hint = f": you divide max|w| by 2^(bits-1) = {2 ** (bits - 1)}; symmetric quantization uses Q = 2^(bits-1) - 1 = {top}"
        elif torch.allclose(scale, w.abs().amax(dim=1, keepdim=True).expand_as(scale) / top, rtol=1e-5):
            hint = ": that is max|w| of the whole row; each group of group_size consecutive inputs has its own scale"
        elif torch.allclose(scale, w.abs().max().expand_as(scale) / top, rtol=1e-5):
            hint = ": that is max|w| of the whole matrix; each group of each row has its own scale"
        elif torch.allclose(scale, w.float().reshape(n_out, group_size, n_in // group_size).abs().amax(1) / top, rtol=1e-5):
            hint = (
                ": your groups take every G-th input (reshape(out, g, G)); a group is group_size consecutive "
                "inputs of one row, w.reshape(out, in // group_size, group_size)"
            )
        r, c = (~torch.isclose(scale, want_scale, rtol=1e-5, atol=0) & nonzero).nonzero()[0].tolist()
        fail(f"quantize_groupwise({where}): the scale of row {r}, group {c} should be max|w| / {top} = {want_scale[r, c].item():.6g}, got {scale[r, c].item():.6g}{hint}.")
    # Rounding: allow the other neighbour only where w / scale is within a hair of a half-integer.
    x = w.float().reshape(n_out, n_in // group_size, group_size) / want_scale[..., None]
    ambiguous = ((x - x.floor()) - 0.5).abs().reshape(n_out, n_in) < 1e-4
    if exact_halves:
        ambiguous &= (x - x.floor()).reshape(n_out, n_in) != 0.5
    wrong = (q.long() != want_q.long()) & ~ambiguous
    if wrong.any():
        r, c = wrong.nonzero()[0].tolist()
        hint = ""
        if bool((q.long() == torch.trunc(x.reshape(n_out, n_in)).long()).all()):
            hint = ": that is w / scale truncated toward zero (.to(torch.int8) or .long() cut the fraction); round first, torch.round"
        elif bool((q.long() == torch.floor(x.reshape(n_out, n_in)).long()).all()):
            hint = ": that is w / scale rounded down (floor); round to the nearest integer, torch.round"
        elif bool((q.long() == torch.floor(x.reshape(n_out, n_in) + 0.5).long()).all()):
            hint = (": w / scale is exactly half-way there, and torch.round sends halves to the even neighbour "
                    "(2.5 -> 2, -3.5 -> -4); floor(x + 0.5) rounds them up instead")
        fail(
            f"quantize_groupwise({where}): q[{r}, {c}] should be round(w / scale) = {int(want_q[r, c])} "
            f"(w = {w[r, c].item():.5g}), got {int(q[r, c])}{hint}."
        )


def check_quantize_groupwise(fn, hidden: bool = False) -> None:
    """quantize_groupwise(w, bits, group_size) -> (q int8, scale (out, in // group_size)).

    Edges the exercise defines, all in the hidden test: a value exactly half-way between two steps
    (torch.round sends 2.5 to 2 and -3.5 to -4, never away from zero); a group of zeros (scale 1);
    group_size = in (one scale per row) and group_size = 1; the absmax from a negative weight; 2 to 8 bits;
    q stored as int8.
    """
    forbid_reference(fn, quantization.quantize_groupwise, quantization.quantize_int8)
    if not hidden:
        _compare_quantize(fn, torch.tensor([[0.7, -0.35, 7.0, 1.0]]), 4, 2,
                          label="the worked example [[0.7, -0.35, 7, 1]], 4 bits, groups of 2 (expected q [[7, -4, 7, 1]], scale [[0.1, 1]])")  # fmt: skip
        _compare_quantize(fn, torch.tensor([[0.5, -1.27, 0.0, 0.01], [2.0, 1.0, -0.3, 0.0]]), 8, 4,
                          label="the int8 example, one group per row (expected scales 0.01 and 2/127)")  # fmt: skip
        g = seeded(94)
        _compare_quantize(fn, torch.randn(4, 16, generator=g), 4, 8)
        passed(fn, "the 2 worked examples and a random int4 case are right")
        return
    g = seeded(95)
    cases = [(8, 32, 8, 32), (16, 64, 4, 16), (5, 96, 4, 32), (32, 128, 8, 128), (7, 24, 3, 8), (10, 40, 2, 4), (12, 256, 4, 64)]
    for n_out, n_in, bits, group_size in cases:
        w = torch.randn(n_out, n_in, generator=g) * torch.rand(n_out, 1, generator=g) * 2
        _compare_quantize(fn, w, bits, group_size)
    w = torch.randn(6, 32, generator=g)
    w[2, 8:16] = 0.0
    _compare_quantize(fn, w, 4, 8, label="a weight matrix with a group of zeros")
    w = torch.randn(6, 32, generator=g) * 0.01
    w[1, 3] = 25.0
    _compare_quantize(fn, w, 8, 32, label="a row with an outlier")
    edges = {
        # bits 4 (Q = 7), absmax 7 in each group: scale 1, so w / scale is w itself.
        "values half-way between two steps": (torch.tensor([[7.0, 2.5, -3.5, 0.5], [-7.0, -0.5, 1.5, -2.5]]), 4, 4),
        "groups of one weight": (torch.randn(3, 6, generator=g), 4, 1),
        "the absmax from a negative weight": (torch.tensor([[-6.0, 1.0, 2.0, 3.0], [0.5, -0.25, 0.1, -2.0]]), 3, 4),
    }
    for name, (w, bits, group_size) in edges.items():
        with edge(name):
            _compare_quantize(fn, w, bits, group_size, label=name, exact_halves=True)
    passed(fn, f"all {len(cases) + 2} random and edge cases (2 to 8 bits, a group of zeros, an outlier) match the reference")


def _compare_dequantize(fn, q, scale, label: str = "") -> None:
    want = quantization.dequantize_groupwise(q, scale)
    got = expect_tensor(fn, call(fn, q, scale), "the dequantized weights")
    n_out, n_in = q.shape
    G = scale.shape[1]
    where = label or f"q {tuple(q.shape)}, scale {tuple(scale.shape)} (groups of {n_in // G})"
    if tuple(got.shape) != (n_out, n_in):
        hint = " (reshape the groups back to (out, in))" if got.numel() == n_out * n_in else ""
        fail(f"dequantize_groupwise({where}) should return shape {(n_out, n_in)}, got {tuple(got.shape)}{hint}.")
    if not got.is_floating_point():
        fail(f"dequantize_groupwise({where}) should return floating-point weights, got {got.dtype}.")
    got = got.detach().float()
    if torch.allclose(got, want, **TOL):
        return
    hint = ""
    tiled = q.float() * scale.float().repeat(1, n_in // G)
    if torch.allclose(got, q.float() / scale.float().repeat_interleave(n_in // G, dim=1), **TOL):
        hint = ": you divide by the scale; quantizing divided, dequantizing multiplies, w_hat = q * scale"
    elif G > 1 and torch.allclose(got, tiled, **TOL):
        hint = (
            ": the scales are tiled (scale.repeat) so that column j uses group j % G; group j // g owns column j "
            "(repeat_interleave, or reshape q to (out, G, g) and multiply by scale[..., None])"
        )
    elif G > 1 and torch.allclose(got, q.float() * scale.float()[:, :1], **TOL):
        hint = ": every column uses the row's first scale; each group of g columns has its own"
    r, c = (~torch.isclose(got, want, **TOL)).nonzero()[0].tolist()
    fail(f"dequantize_groupwise({where}): element [{r}, {c}] should be q * scale = {want[r, c].item():.5g}, got {got[r, c].item():.5g}{hint}.")


def check_dequantize_groupwise(fn, hidden: bool = False) -> None:
    """dequantize_groupwise(q, scale) -> q * scale, group by group, shape (out, in).

    Edges the exercise defines, all in the hidden test: float16 scales give a float32 result; one
    group per row and groups of 1; column j belongs to group j // group_size (not tiled).
    """
    forbid_reference(fn, quantization.dequantize_groupwise)
    if not hidden:
        _compare_dequantize(fn, torch.tensor([[7, -4, 7, 1]], dtype=torch.int8), torch.tensor([[0.1, 1.0]]),
                            label="the worked example (expected [[0.7, -0.4, 7, 1]])")  # fmt: skip
        g = seeded(96)
        q, scale = quantization.quantize_groupwise(torch.randn(3, 12, generator=g), 4, 4)
        _compare_dequantize(fn, q, scale)
        passed(fn, "the worked example and a random case are right")
        return
    g = seeded(97)
    n = 0
    for n_out, n_in, bits, group_size in [(8, 32, 8, 32), (16, 64, 4, 16), (5, 96, 4, 32), (7, 24, 3, 8), (4, 128, 4, 64), (9, 8, 2, 2)]:
        q, scale = quantization.quantize_groupwise(torch.randn(n_out, n_in, generator=g) * 3, bits, group_size)
        _compare_dequantize(fn, q, scale)
        n += 1
    q, scale = quantization.quantize_groupwise(torch.randn(6, 16, generator=g), 4, 4)
    _compare_dequantize(fn, q, scale.half(), label="float16 scales")
    with edge("float16 scales give float32 weights"):
        got = expect_tensor(fn, call(fn, q, scale.half()), "the dequantized weights")
        expect_dtype(got, torch.float32, "dequantize_groupwise with float16 scales (the exercise asks for float32)")
    with edge("groups of one column"):
        q, scale = quantization.quantize_groupwise(torch.randn(3, 5, generator=g), 4, 1)
        _compare_dequantize(fn, q, scale, label="groups of one column")
    n += 1
    passed(fn, f"all {n + 1} random cases (2 to 8 bits, groups of 2 to 128, float16 scales) match the reference")
