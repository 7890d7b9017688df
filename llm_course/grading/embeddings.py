"""Checks for the chapter 03 exercises (embeddings and positions).

The student writes, with the signatures of :mod:`llm_course.embeddings` and :mod:`llm_course.rope`:

- ``one_hot_embedding(idx, weight) -> (..., C)``: the lookup as ``one_hot(idx) @ weight``
- ``sinusoidal_encoding(seq_len, d_model, base=10000.0) -> (seq_len, d_model)``
- ``sinusoidal_shift_matrix(offset, d_model, base=10000.0) -> (d_model, d_model)``
- ``apply_rope(x, cos, sin, positions=None) -> (B, H, T, D)``  (half layout, ``rope_cache`` tables)

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test
cell) or seeded random cases and edge cases compared with the reference
(``hidden=True``, the hidden test cell). Tolerances follow the dtype: the
sinusoids are float32, whose angles ``pos * w`` lose precision as positions grow,
so the allowed error grows with the largest position or offset.
"""

from __future__ import annotations

import math

import torch

from llm_course import embeddings, rope
from llm_course.grading import CheckFailed, call, expect_tensor, fail, forbid_reference, passed, short
from llm_course.grading.edges import edge


# --------------------------------------------------------------------------- helpers


def _expect_shape(fn, got: torch.Tensor, want: torch.Tensor, call_text: str, hint: str = "") -> None:
    if tuple(got.shape) != tuple(want.shape):
        extra = ""
        if got.dim() == 2 and tuple(got.shape) == tuple(want.shape)[::-1]:
            extra = " (it looks transposed)"
        fail(f"{call_text} should have shape {tuple(want.shape)}, got {tuple(got.shape)}{extra}{hint}.")


def _expect_dtype(got: torch.Tensor, want: torch.dtype, call_text: str, hint: str) -> None:
    if got.dtype != want:
        fail(f"{call_text} should have dtype {want}, got {got.dtype}: {hint}.")


def _worst(got: torch.Tensor, want: torch.Tensor) -> tuple[tuple[int, ...], float]:
    """Index and size of the largest difference (NaN counts as the largest)."""
    diff = (got.double() - want.double()).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    flat = int(diff.flatten().argmax())
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)), float(diff.flatten()[flat])


def _close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float = 0.0) -> bool:
    return got.shape == want.shape and torch.allclose(got.double(), want.double(), atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- one-hot lookup
def _compare_one_hot(fn, idx: torch.Tensor, weight: torch.Tensor) -> None:
    want = embeddings.embedding_lookup(idx, weight)
    text = f"one_hot_embedding(idx of shape {tuple(idx.shape)}, weight of shape {tuple(weight.shape)})"
    try:
        got = call(fn, idx, weight)
    except CheckFailed as err:
        message = str(err)
        largest = int(idx.max()) if idx.numel() else -1
        if "cannot be multiplied" in message and largest < weight.shape[0] - 1:
            message += (
                f" Hint: the largest id here is {largest} but the vocabulary has {weight.shape[0]} rows; "
                "F.one_hot(idx) guesses the number of classes from the largest id: pass num_classes=weight.shape[0]."
            )
        elif "smaller than num_classes" in message or "cannot be multiplied" in message:
            message += " Hint: the one-hot vectors need one entry per row of weight (V = weight.shape[0])."
        elif "dtype" in message or "scalar type" in message:
            message += (
                f" Hint: F.one_hot returns int64; convert it to weight's dtype ({weight.dtype}) before the product."
            )
        raise CheckFailed(message) from None
    got = expect_tensor(fn, got, "the embedding vectors")
    _expect_shape(fn, got, want, text, " (one vector of size C for each id: idx.shape + (C,))")
    _expect_dtype(
        got, weight.dtype, text, "convert the one-hot matrix to weight.dtype (not always to float32) before the product"
    )
    if not _close(got, want, atol=1e-6 if weight.dtype == torch.float64 else 1e-5):
        where, _ = _worst(got, want)
        token = int(idx[where[:-1]]) if idx.dim() else int(idx)
        fail(
            f"{text} is wrong at output index {where}: the vector for token id {token} should be row {token} "
            f"of weight, {short(want[where[:-1]].tolist())}, got {short(got[where[:-1]].tolist())}."
        )


def _check_one_hot_gradient(fn, idx: torch.Tensor, vocab: int, dim: int) -> None:
    weight = torch.randn(vocab, dim, generator=torch.Generator().manual_seed(5), requires_grad=True)
    out = expect_tensor(fn, call(fn, idx, weight, copy_args=False), "the embedding vectors")
    if not out.requires_grad:
        fail(
            "no gradient can reach weight through your result: keep the computation in torch "
            "(no .detach(), .numpy(), .tolist() or torch.tensor(...) on the way)."
        )
    out.sum().backward()
    counts = torch.bincount(idx.flatten(), minlength=vocab).float()
    want = counts[:, None].expand(vocab, dim)
    if weight.grad is None or not torch.allclose(weight.grad, want):
        fail(
            f"the gradient of sum(one_hot_embedding(idx, weight)) with respect to weight should be, in each row, "
            f"the number of times that id occurs in idx ({short(counts.tolist())}); got rows summing to "
            f"{short(None if weight.grad is None else weight.grad.sum(1).div(dim).tolist())}."
        )


def check_one_hot_embedding(fn, hidden: bool = False) -> None:
    """one_hot_embedding(idx, weight) == weight[idx], computed as one_hot(idx) @ weight.

    Edges the exercise defines, all in the hidden test: ids that do not include V - 1 (num_classes from
    weight, not from the ids); ids V - 1 and 0; a 0-d id, an empty sequence and 3-D ids; float64 and
    bfloat16 tables (the result has weight's dtype); the gradient reaches weight.
    """
    forbid_reference(fn, embeddings.one_hot_embedding, embeddings.embedding_lookup, embeddings.TokenEmbedding)
    if not hidden:
        weight = torch.arange(12.0).reshape(4, 3)  # row t is (3t, 3t + 1, 3t + 2)
        cases = [
            (torch.tensor([2, 0, 3]), weight),
            (torch.tensor([[1, 1], [3, 0]]), weight),  # a batch: (2, 2) ids -> (2, 2, 3)
            (torch.tensor([0, 1]), weight),  # the largest id is not V - 1
            (torch.tensor([3, 2]), weight.double()),  # the dtype follows weight
        ]
        for idx, w in cases:
            _compare_one_hot(fn, idx, w)
        passed(fn, f"all {len(cases)} hand-worked examples are right")
        return
    g = torch.Generator().manual_seed(3)
    cases = []
    for shape in [(7,), (3, 5), (2, 3, 4), (1,), ()]:
        vocab, dim = int(torch.randint(2, 60, (1,), generator=g)), int(torch.randint(1, 17, (1,), generator=g))
        idx = torch.randint(0, vocab, shape, generator=g)
        cases.append((idx, torch.randn(vocab, dim, generator=g)))
    cases.append((torch.tensor([5, 5, 5]), torch.randn(1000, 8, generator=g, dtype=torch.float64)))
    cases.append((torch.zeros(0, dtype=torch.long), torch.randn(5, 3, generator=g)))  # an empty sequence
    for idx, weight in cases:
        _compare_one_hot(fn, idx, weight)
    _check_one_hot_gradient(fn, torch.tensor([[1, 4, 1], [0, 4, 4]]), vocab=6, dim=3)
    with edge("ids 0 and V - 1"):
        _compare_one_hot(fn, torch.tensor([[0, 9], [9, 0]]), torch.randn(10, 4, generator=g))
    with edge("a bfloat16 table"):
        _compare_one_hot(fn, torch.tensor([[3, 1], [0, 3]]), torch.randn(7, 5, generator=g).to(torch.bfloat16))
    cases += [None, None]
    passed(fn, f"all {len(cases)} random and edge cases match the reference, and the gradient reaches weight")


# --------------------------------------------------------------------------- sinusoidal table
def _angle_tolerance(largest: float) -> float:
    """Allowed error of a float32 sinusoid whose angle is up to `largest` radians."""
    return 1e-5 + 1.5e-7 * abs(largest)


def _sinusoidal_variant(seq_len: int, d_model: int, base: float, kind: str) -> torch.Tensor:
    """Tables built with a known mistake, to name it in the message."""
    pos = torch.arange(seq_len, dtype=torch.float64)[:, None]
    pairs = torch.arange(0, d_model, 2, dtype=torch.float64)
    angle = pos * base ** (-pairs / d_model)  # (T, C/2)
    if kind == "swapped":
        return torch.stack((angle.cos(), angle.sin()), -1).flatten(-2)
    if kind == "halves":
        return torch.cat((angle.sin(), angle.cos()), -1)
    if kind == "column_index":  # w uses the column index j for both columns: base ** (-j / C)
        cols = torch.arange(d_model, dtype=torch.float64)
        a = pos * base ** (-cols / d_model)
        out = a.sin()
        out[:, 1::2] = a[:, 1::2].cos()
        return out
    if kind == "no_factor_two":  # w_i = base ** (-i / C) with i the pair index
        a = pos * base ** (-pairs / 2 / d_model)
        return torch.stack((a.sin(), a.cos()), -1).flatten(-2)
    if kind == "default_base":
        a = pos * 10000.0 ** (-pairs / d_model)
        return torch.stack((a.sin(), a.cos()), -1).flatten(-2)
    raise ValueError(kind)


SINUSOIDAL_HINTS = {
    "swapped": "sine and cosine are swapped: sin(pos * w_i) goes in the even column 2i, cos in the odd column 2i + 1",
    "halves": "all sines come first and all cosines after them; here they alternate: "
    "column 2i is sin(pos * w_i) and column 2i + 1 is cos(pos * w_i)",
    "column_index": "the cosine column 2i + 1 must use the same frequency as the sine column 2i: "
    "w_i = base ** (-2i / d_model) with i the index of the pair, not of the column",
    "no_factor_two": "the frequencies fall too slowly: w_i = base ** (-2i / d_model), "
    "with the factor 2 (i counts pairs of columns)",
    "default_base": "your table uses base 10000 whatever `base` says: use the argument",
}


def _compare_sinusoidal(fn, seq_len: int, d_model: int, base: float) -> None:
    want = embeddings.sinusoidal_encoding(seq_len, d_model, base)
    text = f"sinusoidal_encoding({seq_len}, {d_model}, base={base:g})"
    got = expect_tensor(fn, call(fn, seq_len, d_model, base), "the table PE")
    _expect_shape(fn, got, want, text, " (one row per position, one column per dimension)")
    _expect_dtype(got, torch.float32, text, "return float32, torch's default (convert with .float())")
    atol = _angle_tolerance(seq_len)
    if _close(got, want, atol):
        return
    hint = ""
    for kind, message in SINUSOIDAL_HINTS.items():
        if kind == "default_base" and base == 10000.0:
            continue
        if _close(got, _sinusoidal_variant(seq_len, d_model, base, kind), 10 * atol):
            hint = f" It looks like {message}."
            break
    (pos, col), _ = _worst(got, want)
    i = col // 2
    what = f"{'sin' if col % 2 == 0 else 'cos'}({pos} * w_{i}) = {want[pos, col].item():.6f}"
    fail(
        f"{text} is wrong at position {pos}, column {col}: expected {what} (w_{i} = base ** (-{2 * i}/{d_model})), "
        f"got {got[pos, col].item():.6f}.{hint}"
    )


def check_sinusoidal_encoding(fn, hidden: bool = False) -> None:
    """sinusoidal_encoding: PE[pos, 2i] = sin(pos w_i), PE[pos, 2i+1] = cos(pos w_i), w_i = base^(-2i/C).

    Edges the exercise defines, all in the hidden test: seq_len = 1 (position 0 only: sin 0, cos 0);
    d_model = 2 (one pair, w_0 = 1); long tables (positions in the thousands); other bases; float32.
    """
    forbid_reference(
        fn, embeddings.sinusoidal_encoding, embeddings.SinusoidalPositionalEncoding, embeddings.inverse_frequencies
    )
    if not hidden:
        got = expect_tensor(fn, call(fn, 3, 4, 10000.0), "the table PE")
        want = embeddings.sinusoidal_encoding(3, 4)
        _expect_shape(fn, got, want, "sinusoidal_encoding(3, 4)")
        if not _close(got[0], torch.tensor([0.0, 1.0, 0.0, 1.0]), 1e-6):
            fail(
                f"row 0 of sinusoidal_encoding(3, 4) should be [sin 0, cos 0, sin 0, cos 0] = [0, 1, 0, 1], "
                f"got {short(got[0].tolist())}."
            )
        # Row 1 of a C = 4 table: w_0 = 1, w_1 = 10000 ** (-2/4) = 0.01.
        row1 = torch.tensor([math.sin(1.0), math.cos(1.0), math.sin(0.01), math.cos(0.01)])
        if not _close(got[1], row1, 1e-6):
            hint = ""
            for kind, message in SINUSOIDAL_HINTS.items():
                if kind != "default_base" and _close(got, _sinusoidal_variant(3, 4, 10000.0, kind), 1e-5):
                    hint = f" It looks like {message}."
            fail(
                "row 1 of sinusoidal_encoding(3, 4) should be [sin 1, cos 1, sin 0.01, cos 0.01] = "
                f"{short([round(v, 6) for v in row1.tolist()])}, "
                f"got {short([round(v, 6) for v in got[1].tolist()])}.{hint}"
            )
        cases = [(3, 4, 10000.0), (10, 8, 10000.0), (50, 16, 10000.0), (20, 6, 100.0)]
        for args in cases:
            _compare_sinusoidal(fn, *args)
        passed(fn, f"the worked rows and all {len(cases)} hand-picked tables are right")
        return
    g = torch.Generator().manual_seed(4)
    cases = []
    for _ in range(6):
        seq_len = int(torch.randint(1, 300, (1,), generator=g))
        d_model = 2 * int(torch.randint(1, 65, (1,), generator=g))
        base = [10000.0, 100.0, 500000.0][int(torch.randint(0, 3, (1,), generator=g))]
        cases.append((seq_len, d_model, base))
    cases += [(1, 2, 10000.0), (1, 64, 10000.0), (4096, 8, 10000.0), (100, 2, 10.0)]
    for args in cases:
        _compare_sinusoidal(fn, *args)
    passed(fn, f"all {len(cases)} random and edge cases (long tables, C = 2, other bases) match the reference")


# --------------------------------------------------------------------------- shift matrix
def _shift_variant(offset: float, d_model: int, base: float, kind: str) -> torch.Tensor:
    pairs = torch.arange(0, d_model, 2, dtype=torch.float64)
    freqs = base ** (-pairs / d_model)
    if kind == "no_factor_two":
        freqs = base ** (-pairs / 2 / d_model)
    elif kind == "default_base":
        freqs = 10000.0 ** (-pairs / d_model)
    angle = freqs * (1.0 if kind == "forgot_offset" else offset)
    c, s = angle.cos(), angle.sin()
    if kind == "backwards":
        s = -s
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    half = d_model // 2
    for i in range(half):
        a, b = (i, i + half) if kind == "half_layout" else (2 * i, 2 * i + 1)
        m[a, a], m[a, b], m[b, a], m[b, b] = c[i], s[i], -s[i], c[i]
    return m


SHIFT_HINTS = {
    "backwards": "your matrix shifts the wrong way (it maps PE[pos] to PE[pos - k]): from "
    "sin(a + b) = sin a cos b + cos a sin b, the sine row of each block is [cos wk, sin wk] "
    "and the cosine row is [-sin wk, cos wk]",
    "half_layout": "the blocks pair column i with column i + d_model/2 (RoPE's half layout); in the sinusoidal "
    "table the sine and cosine of frequency w_i are the neighbouring columns 2i and 2i + 1",
    "forgot_offset": "every block rotates by w_i, whatever the offset: the angle is w_i * offset",
    "no_factor_two": "the frequencies fall too slowly: w_i = base ** (-2i / d_model), with the factor 2",
    "default_base": "your matrix uses base 10000 whatever `base` says: use the argument",
}


def _compare_shift(fn, offset: float, d_model: int, base: float) -> None:
    want = embeddings.sinusoidal_shift_matrix(offset, d_model, base)
    text = f"sinusoidal_shift_matrix({offset}, {d_model}, base={base:g})"
    got = expect_tensor(fn, call(fn, offset, d_model, base), "the matrix M_k")
    _expect_shape(fn, got, want, text, " (a square matrix, d_model x d_model)")
    _expect_dtype(got, torch.float32, text, "return float32, torch's default (convert with .float())")
    atol = _angle_tolerance(offset)
    if _close(got, want, atol):
        return
    hint = ""
    for kind, message in SHIFT_HINTS.items():
        if kind == "default_base" and base == 10000.0:
            continue
        if kind == "forgot_offset" and offset == 1:
            continue
        if _close(got, _shift_variant(offset, d_model, base, kind), 10 * atol):
            hint = f" It looks like {message}."
            break
    # Say it in terms of the property the matrix must have.
    prop = ""
    if float(offset).is_integer():
        k = int(offset)
        start = 3 + max(0, -k)  # so that start + k >= 0
        table = embeddings.sinusoidal_encoding(start + max(k, 0) + 1, d_model, base).double()
        error = (got.double() @ table[start] - table[start + k]).abs().max().item()
        prop = f" M @ PE[{start}] should equal PE[{start + k}], but they differ by up to {error:.3g}."
    (r, c), _ = _worst(got, want)
    if r // 2 != c // 2 and abs(got[r, c].item()) > atol:
        where = (
            f"entry ({r}, {c}) lies outside the 2x2 blocks on the diagonal and should be 0, got {got[r, c].item():.6f}"
        )
    else:
        where = f"entry ({r}, {c}) (block {r // 2}) should be {want[r, c].item():.6f}, got {got[r, c].item():.6f}"
    fail(f"{text} is wrong: {where}.{prop}{hint}")


def check_sinusoidal_shift_matrix(fn, hidden: bool = False) -> None:
    """sinusoidal_shift_matrix(k, C, base): the block-diagonal M_k with PE[pos + k] = M_k @ PE[pos].

    Edges the exercise defines, all in the hidden test: offset 0 (the identity); negative and fractional
    offsets (2.5 is not 2); large offsets; d_model = 2; other bases; float32; M_a M_b = M_(a+b).
    """
    forbid_reference(fn, embeddings.sinusoidal_shift_matrix)
    if not hidden:
        got = expect_tensor(fn, call(fn, 0, 4, 10000.0), "the matrix M_k")
        _expect_shape(fn, got, torch.eye(4), "sinusoidal_shift_matrix(0, 4)")
        if not _close(got, torch.eye(4), 1e-6):
            fail(
                "a shift by 0 positions must be the identity matrix; "
                f"sinusoidal_shift_matrix(0, 4) gave {short(got.tolist())}."
            )
        c, s = math.cos(1.0), math.sin(1.0)
        block = torch.tensor([[c, s], [-s, c]])
        got = expect_tensor(fn, call(fn, 1, 2, 10000.0), "the matrix M_k")
        _expect_shape(fn, got, block, "sinusoidal_shift_matrix(1, 2)")
        if not _close(got, block, 1e-6):
            hint = ""
            if _close(got, block.T, 1e-6):
                hint = " (you wrote the transpose, which shifts by -1: the minus sign belongs on the cosine row)"
            fail(
                "sinusoidal_shift_matrix(1, 2) is one block for w_0 = 1: [[cos 1, sin 1], [-sin 1, cos 1]] = "
                f"{short([[round(v, 4) for v in row] for row in block.tolist()])}, "
                f"got {short([[round(v, 4) for v in row] for row in got.tolist()])}{hint}."
            )
        cases = [(3, 8, 10000.0), (1, 16, 10000.0), (10, 6, 100.0)]
        for args in cases:
            _compare_shift(fn, *args)
        # The property itself, on a whole table.
        pe = embeddings.sinusoidal_encoding(40, 16).double()
        m = call(fn, 5, 16, 10000.0).double()
        error = (pe[:35] @ m.T - pe[5:]).abs().max().item()
        if error > 1e-4:
            fail(f"M_5 @ PE[pos] should equal PE[pos + 5] for every pos; the largest difference is {error:.3g}.")
        passed(fn, f"the identity, one block, {len(cases)} more matrices and M_5 PE[pos] = PE[pos + 5] are right")
        return
    g = torch.Generator().manual_seed(5)
    cases = []
    for _ in range(6):
        offset = int(torch.randint(-50, 1000, (1,), generator=g))
        d_model = 2 * int(torch.randint(1, 65, (1,), generator=g))
        base = [10000.0, 100.0, 500000.0][int(torch.randint(0, 3, (1,), generator=g))]
        cases.append((offset, d_model, base))
    cases += [(0, 64, 10000.0), (-7, 32, 10000.0), (2.5, 8, 10000.0), (1, 128, 100.0), (4096, 2, 10000.0)]
    for args in cases:
        _compare_shift(fn, *args)
    for name, args in {"a negative fractional offset": (-0.5, 4, 10000.0), "a fractional offset below 1": (0.25, 2, 10000.0)}.items():
        with edge(name):
            _compare_shift(fn, *args)
    cases += [None, None]
    # Shifts compose: M_a M_b = M_(a+b).
    m3, m4, m7 = (call(fn, k, 32, 10000.0).double() for k in (3, 4, 7))
    if not torch.allclose(m3 @ m4, m7, atol=1e-5):
        fail("shifting by 3 and then by 4 should be the same as shifting by 7: M_3 @ M_4 should equal M_7.")
    passed(fn, f"all {len(cases)} random and edge cases (negative and fractional offsets, other bases) are right")


# --------------------------------------------------------------------------- RoPE
def _rope_variant(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions, kind: str) -> torch.Tensor | None:
    if kind == "interleaved":
        return rope.apply_rope_interleaved(x, cos, sin, positions)
    if kind == "backwards":
        return rope.apply_rope(x, cos, -sin, positions)
    if kind == "ignores_positions" and positions is not None:
        return rope.apply_rope(x, cos, sin, None)
    if kind == "heads_as_batch" and positions is not None and positions.dim() == 2 and x.shape[0] == x.shape[1]:
        c, s = cos[positions].to(x.dtype), sin[positions].to(x.dtype)  # (B, T, D) broadcast against (B, H, T, D)
        return x * c + rope.rotate_half(x) * s
    return None


ROPE_HINTS = {
    "interleaved": "you rotated neighbouring pairs (x[2i], x[2i + 1]), the interleaved layout; this exercise uses "
    "the half layout of Hugging Face's Llama: value i pairs with value i + D/2, x * cos + rotate_half(x) * sin",
    "backwards": "every pair turns by minus the right angle: rotate_half(x) is (-x2, x1), with the minus sign "
    "on the second half",
    "ignores_positions": "the result is what positions 0, 1, ..., T-1 would give: use the rows cos[positions] "
    "and sin[positions] when positions are given",
    "heads_as_batch": "with positions of shape (B, T), cos[positions] is (B, T, D) and broadcasts against "
    "(B, H, T, D) by lining B up with H: add a head dimension, cos[positions].unsqueeze(1)",
}


def _compare_rope(fn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions=None, check_input=False) -> None:
    want = rope.apply_rope(x, cos, sin, positions)
    pos_text = "None" if positions is None else f"shape {tuple(positions.shape)}"
    text = (
        f"apply_rope(x of shape {tuple(x.shape)} ({x.dtype}), cos/sin of shape {tuple(cos.shape)}, "
        f"positions {pos_text})"
    )
    try:
        if check_input:
            original = x.clone()
            got = call(fn, x, cos, sin, positions, copy_args=False)
            if not torch.equal(x, original):
                fail(f"{text} modified x in place; return a new tensor (queries and keys are used again later).")
        else:
            got = call(fn, x, cos, sin, positions)
    except CheckFailed as err:
        message = str(err)
        if positions is not None and positions.dim() == 2 and "must match the size" in message:
            message += f" Hint: {ROPE_HINTS['heads_as_batch']}."
        raise CheckFailed(message) from None
    got = expect_tensor(fn, got, "the rotated x")
    _expect_shape(fn, got, want, text, " (the same shape as x)")
    _expect_dtype(got, x.dtype, text, "the result should have x's dtype; cast cos and sin to x.dtype before using them")
    atol, rtol = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5)}.get(x.dtype, (5e-2, 2e-2))
    if _close(got, want, atol, rtol):
        return
    hint = ""
    for kind, message in ROPE_HINTS.items():
        variant = _rope_variant(x, cos, sin, positions, kind)
        if variant is not None and _close(got, variant, 10 * atol, 10 * rtol):
            hint = f" It looks like {message}."
            break
    b, h, t, d = _worst(got, want)[0]
    p = t if positions is None else int(positions[t] if positions.dim() == 1 else positions[b, t])
    fail(
        f"{text} is wrong at x[{b}, {h}, {t}, {d}] (a token at position {p}): expected {want[b, h, t, d].item():.6f}, "
        f"got {got[b, h, t, d].item():.6f}.{hint}"
    )


def check_apply_rope(fn, hidden: bool = False) -> None:
    """apply_rope(x, cos, sin, positions): rotate pairs (x_j, x_{j+D/2}) by the angles of the cache rows.

    Edges the exercise defines, all in the hidden test: positions None (the first T rows), (T,) and
    (B, T) (a head dimension added, also with B == H and B == 1); D = 2; a cache longer than T;
    float64 x with a float64 cache and bfloat16 x with a float32 cache (the result has x's dtype);
    x left unchanged.
    """
    forbid_reference(
        fn, rope.apply_rope, rope.apply_rope_interleaved, rope.rotate_half, rope.RotaryEmbedding, rope._angles_for
    )
    if not hidden:
        # D = 2: the single pair (x0, x1) = (1, 0) at position m turns by m radians (w_0 = 1).
        cos, sin = rope.rope_cache(2, 8)
        x = torch.tensor([1.0, 0.0]).expand(1, 1, 4, 2).contiguous()
        got = expect_tensor(fn, call(fn, x, cos, sin), "the rotated x")
        want = torch.tensor([[math.cos(m), math.sin(m)] for m in range(4)]).reshape(1, 1, 4, 2)
        _expect_shape(fn, got, want, "apply_rope(x of shape (1, 1, 4, 2), cos, sin)")
        if not _close(got, want, 1e-6):
            backwards = _close(got, want * torch.tensor([1.0, -1.0]), 1e-6)
            hint = " (it turned the wrong way: rotate_half(x) is (-x2, x1))" if backwards else ""
            fail(
                "with D = 2, the vector (1, 0) at position m should become (cos m, sin m): for m = 0..3 "
                f"{short([[round(v, 4) for v in row] for row in want[0, 0].tolist()])}, "
                f"got {short([[round(v, 4) for v in row] for row in got[0, 0].tolist()])}{hint}."
            )
        # D = 4 tells the layouts apart: (1, 0, 0, 0) at position 1 pairs value 0 with value 2.
        cos, sin = rope.rope_cache(4, 8)
        x = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
        got = expect_tensor(fn, call(fn, x, cos, sin, torch.tensor([1])), "the rotated x")
        want = torch.tensor([math.cos(1.0), 0.0, math.sin(1.0), 0.0]).reshape(1, 1, 1, 4)
        _expect_shape(fn, got, want, "apply_rope(x of shape (1, 1, 1, 4), cos, sin, positions=[1])")
        if not _close(got, want, 1e-6):
            hint = ""
            if _close(got, torch.tensor([math.cos(1.0), math.sin(1.0), 0.0, 0.0]).reshape(1, 1, 1, 4), 1e-6):
                hint = f" It looks like {ROPE_HINTS['interleaved']}."
            elif _close(got, x, 1e-6):
                hint = (
                    " Nothing was rotated: positions=[1] puts the token at position 1, "
                    "so use cos[positions] and sin[positions]."
                )
            fail(
                "with D = 4, the vector (1, 0, 0, 0) at position 1 should become (cos 1, 0, sin 1, 0) = "
                f"{short([round(v, 4) for v in want.flatten().tolist()])}: value 0 pairs with value 0 + D/2 = 2; "
                f"got {short([round(v, 4) for v in got.flatten().tolist()])}.{hint}"
            )
        g = torch.Generator().manual_seed(0)
        cos, sin = rope.rope_cache(8, 16)
        x = torch.randn(2, 3, 5, 8, generator=g)
        _compare_rope(fn, x, cos, sin)
        _compare_rope(fn, x, cos, sin, torch.tensor([5, 9, 2, 15, 0]))
        _compare_rope(fn, x, cos, sin, torch.tensor([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]))  # (B, T)
        passed(fn, "the D = 2 and D = 4 worked examples and positions None, (T,) and (B, T) are right")
        return
    g = torch.Generator().manual_seed(6)
    n = 0
    shapes = [(1, 1, 1, 2, 10000.0), (2, 4, 17, 16, 10000.0), (3, 2, 9, 64, 500000.0), (1, 8, 33, 32, 100.0)]
    for B, H, T, D, base in shapes:
        cos, sin = rope.rope_cache(D, 64, base)
        x = torch.randn(B, H, T, D, generator=g)
        _compare_rope(fn, x, cos, sin)
        _compare_rope(fn, x, cos, sin, torch.randperm(64, generator=g)[:T])
        n += 2
    # One row of positions per sequence: (B, T), with B == H (where a missing head dimension broadcasts silently).
    cos, sin = rope.rope_cache(16, 128)
    for B, H in [(2, 2), (3, 2)]:
        x = torch.randn(B, H, 7, 16, generator=g)
        positions = torch.stack([torch.randperm(128, generator=g)[:7] for _ in range(B)])
        _compare_rope(fn, x, cos, sin, positions)
        n += 1
    # Other dtypes: float64 with a float64 cache, bfloat16 with a float32 cache (the output follows x).
    cos64, sin64 = rope.rope_cache(32, 4000, dtype=torch.float64)
    _compare_rope(fn, torch.randn(2, 2, 12, 32, generator=g, dtype=torch.float64), cos64, sin64, torch.arange(12) * 300)
    cos, sin = rope.rope_cache(32, 64)
    _compare_rope(fn, torch.randn(2, 2, 10, 32, generator=g).to(torch.bfloat16), cos, sin)
    _compare_rope(fn, torch.randn(1, 2, 6, 32, generator=g), cos, sin, check_input=True)
    with edge("(B, T) positions with B = 1"):
        _compare_rope(fn, torch.randn(1, 3, 5, 32, generator=g), cos, sin, torch.tensor([[9, 2, 40, 0, 63]]))
    n += 4
    passed(fn, f"all {n} random and edge cases (D = 2, (B, T) positions, float64, bfloat16) match the reference")
