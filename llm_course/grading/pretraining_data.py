"""Checks for the chapter 06 data exercises (deduplication with MinHash and LSH).

The student writes, with the signatures of :mod:`llm_course.dedup`:

- ``minhash_signature(shingle_hashes, a, b) -> (k,) int array``: for each i, the minimum over the
  shingles x of (a[i] * x + b[i]) mod PRIME, PRIME = 2^31 - 1, exactly (in int64); an empty set of
  shingles raises ValueError;
- ``lsh_candidate_pairs(signatures, bands, rows) -> sorted list of (i, j), i < j``: the documents
  whose signatures agree on every row of at least one band, band t being columns
  t * rows .. (t + 1) * rows - 1; bands * rows different from the signature length raises ValueError.

Each ``check_*`` runs hand-worked examples (``hidden=False``) or seeded random cases and edge cases
compared with the reference (``hidden=True``). When a result differs, the check compares it with
what the usual mistakes give (max instead of min, the modulo forgotten, float arithmetic, bands
taken as interleaved columns, every band required to agree, ...) and says which one it looks like.
"""

from __future__ import annotations

import itertools

import numpy as np

from llm_course import dedup
from llm_course.dedup import PRIME
from llm_course.grading import call, expect_value_error, fail, forbid_reference, passed, short
from llm_course.grading.edges import edge


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- minhash_signature
def _signature_variants(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[tuple[str, np.ndarray]]:
    x, a, b = x.astype(np.int64), a.astype(np.int64), b.astype(np.int64)
    exact = (a[:, None] * x[None, :] + b[:, None]) % PRIME  # (k, n)
    with np.errstate(all="ignore"):
        no_mod = a[:, None] * x[None, :] + b[:, None]
        as_float = np.fmod(a[:, None].astype(np.float64) * x[None, :] + b[:, None], PRIME)
        x32, a32, b32 = x.astype(np.int32), a.astype(np.int32), b.astype(np.int32)
        overflow = (a32[:, None] * x32[None, :] + b32[:, None]) % PRIME
    return [
        ("the maximum over the shingles, not the minimum", exact.max(axis=1)),
        ("the modulo PRIME was left out (take (a x + b) mod PRIME before the minimum)", no_mod.min(axis=1)),
        ("b was left out: h_i(x) = (a_i x + b_i) mod PRIME", ((a[:, None] * x[None, :]) % PRIME).min(axis=1)),
        ("the modulo was applied to a x only, before adding b; reduce the sum (a x + b) mod PRIME",
         ((a[:, None] * x[None, :]) % PRIME + b[:, None]).min(axis=1)),
        ("the products were computed in floating point, which loses the low bits of numbers near 2^62; "
         "compute in int64 (a x + b < 2^62 fits exactly)", as_float.min(axis=1)),
        ("the products overflowed a 32-bit integer type; convert the inputs to int64 first", overflow.min(axis=1)),
    ]


def _compare_signature(fn, x: np.ndarray, a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    want = dedup.minhash_signature(x, a, b)
    got = call(fn, x, a, b)
    args = f"minhash_signature(shingle_hashes={short(x.tolist(), 60)}, a={short(a.tolist(), 50)}, b={short(b.tolist(), 50)}){what}"
    if not isinstance(got, np.ndarray):
        fail(f"{args} should return a numpy array of k = {len(a)} integers, got {type(got).__name__}: {short(got)}")
    if got.shape != want.shape:
        hint = " (take the minimum over the shingles, axis of length n, keeping one value per hash function)" if got.ndim else ""
        fail(f"{args} should have shape {want.shape} (one value per hash function), got {got.shape}{hint}")
    if not np.issubdtype(got.dtype, np.integer):
        fail(f"{args} should hold integers (int64), got {got.dtype}: hashes are exact integers, not floats")
    if np.array_equal(got.astype(np.int64), want):
        return
    for hint, value in _signature_variants(x, a, b):
        if np.array_equal(got, value) and not np.array_equal(value, want):
            fail(f"{args} is wrong: it looks like {hint}.")
    i = int(np.flatnonzero(got != want)[0])
    fail(f"{args}: at hash function {i} expected {int(want[i])}, got {int(got[i])} "
         f"(the minimum over the shingles x of (a[{i}] x + b[{i}]) mod PRIME).")  # fmt: skip


def check_minhash_signature(fn, hidden: bool = False) -> None:
    """minhash_signature(shingle_hashes (n,), a (k,), b (k,)) -> (k,) ints: min_x (a_i x + b_i) mod PRIME.

    Edges, in the hidden test: one shingle; repeated shingles; one hash function; values near PRIME
    (products near 2^62); int32 inputs (compute in int64); no shingles raises ValueError.
    """
    forbid_reference(fn, dedup.minhash_signature, dedup.minhash_signatures)
    if not hidden:
        x, a, b = np.array([1, 2, 3]), np.array([1, 2]), np.array([0, 5])
        _compare_signature(fn, x, a, b, " (the worked example: [1, 7])")
        x, a, b = np.array([1, 2]), np.array([PRIME - 1]), np.array([0])
        _compare_signature(fn, x, a, b, " (the modulo matters: (PRIME - 1) * 2 mod PRIME = PRIME - 2)")
        rng = _rng(600)
        x, (a, b) = rng.integers(0, PRIME, 20), dedup.minhash_params(8, seed=1)
        _compare_signature(fn, x, a, b, " (20 random shingles, 8 hash functions)")
        passed(fn, "the worked example, a case where the modulo matters and a random case are right")
        return
    rng = _rng(601)
    cases = 0
    for n, k in [(1, 1), (5, 3), (50, 16), (300, 64), (17, 128)]:
        a, b = dedup.minhash_params(k, seed=int(rng.integers(1000)))
        _compare_signature(fn, rng.integers(0, PRIME, n), a, b)
        cases += 1
    with edge("repeated shingles"):
        a, b = dedup.minhash_params(6, seed=3)
        _compare_signature(fn, np.array([7, 7, 7, 123456, 7]), a, b)
    with edge("values near PRIME: products near 2^62"):
        big = np.array([PRIME - 1, PRIME - 2, PRIME - 3])
        _compare_signature(fn, big, np.array([PRIME - 1, PRIME - 5]), np.array([PRIME - 1, PRIME - 7]))
    with edge("int32 inputs: compute in int64"):
        a, b = dedup.minhash_params(5, seed=4)
        _compare_signature(fn, rng.integers(0, PRIME, 12).astype(np.int32), a.astype(np.int32), b.astype(np.int32))
    with edge("no shingles: raise ValueError"):
        a, b = dedup.minhash_params(4)
        expect_value_error(fn, (np.array([], dtype=np.int64), a, b),
                           "minhash_signature with no shingles should raise ValueError (an empty set has no minimum)")
    passed(fn, f"all {cases + 4} random and edge cases (1 .. 300 shingles, 1 .. 128 hash functions, values near PRIME) match")


# --------------------------------------------------------------------------- lsh_candidate_pairs
def _brute_pairs(sig: np.ndarray, bands: int, rows: int, band_columns, need: str = "any") -> list[tuple[int, int]]:
    out = []
    for i, j in itertools.combinations(range(len(sig)), 2):
        agree = [np.array_equal(sig[i, cols], sig[j, cols]) for cols in band_columns(bands, rows, sig.shape[1])]
        if (any if need == "any" else all)(agree):
            out.append((i, j))
    return out


def _bands(bands, rows, k):
    return [list(range(t * rows, (t + 1) * rows)) for t in range(bands)]


def _interleaved(bands, rows, k):
    return [list(range(t, bands * rows, bands)) for t in range(bands)]


def _swapped(bands, rows, k):
    return [list(range(t * bands, (t + 1) * bands)) for t in range(rows)]


def _single_rows(bands, rows, k):
    return [[c] for c in range(k)]


def _pair_variants(sig: np.ndarray, bands: int, rows: int) -> list[tuple[str, list]]:
    return [
        ("band t was taken as the columns t, t + bands, t + 2 bands, ...; a band is a block of consecutive columns, "
         "t * rows .. (t + 1) * rows - 1", _brute_pairs(sig, bands, rows, _interleaved)),
        ("bands and rows were swapped: there are `bands` bands of `rows` columns each", _brute_pairs(sig, bands, rows, _swapped)),
        ("a pair was required to agree on EVERY band; one band that agrees entirely is enough",
         _brute_pairs(sig, bands, rows, _bands, "all")),
        ("a pair was counted when any single row agreed; a band agrees only when all its rows do",
         _brute_pairs(sig, bands, rows, _single_rows)),
    ]


def _as_pairs(fn, got, args: str) -> list[tuple[int, int]]:
    if not isinstance(got, list):
        fail(f"{args} should return a list of pairs (i, j), got {type(got).__name__}: {short(got)}")
    pairs = []
    for p in got:
        if not isinstance(p, (tuple, list)) or len(p) != 2 or not all(isinstance(v, (int, np.integer)) for v in p):
            fail(f"{args}: every element should be a pair of document indices (i, j), got {short(p)}")
        pairs.append((int(p[0]), int(p[1])))
    return pairs


def _compare_pairs(fn, sig: np.ndarray, bands: int, rows: int, what: str = "") -> None:
    want = dedup.lsh_candidate_pairs(sig, bands, rows)
    args = f"lsh_candidate_pairs(signatures of shape {sig.shape}, bands={bands}, rows={rows}){what}"
    got = _as_pairs(fn, call(fn, sig, bands, rows), args)
    if got == want:
        return
    if any(i == j for i, j in got):
        fail(f"{args}: a document was paired with itself, e.g. {next(p for p in got if p[0] == p[1])}; list pairs i < j only")
    if any(i > j for i, j in got):
        fail(f"{args}: the pair {next(p for p in got if p[0] > p[1])} has i > j; write each pair once, as (i, j) with i < j")
    if len(set(got)) < len(got):
        fail(f"{args}: a pair appears more than once (it was found in several bands); list each pair once")
    if sorted(got) == want:
        fail(f"{args}: the right pairs, but not sorted; return them sorted")
    for hint, value in _pair_variants(sig, bands, rows):
        if sorted(set(got)) == value and value != want:
            fail(f"{args} is wrong: it looks like {hint}.")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    fail(f"{args}: {len(want)} pairs expected, got {len(got)}; missing {short(missing, 60)}, not candidates {short(extra, 60)}.")


def check_lsh_candidate_pairs(fn, hidden: bool = False) -> None:
    """lsh_candidate_pairs(signatures (N, k), bands, rows) -> sorted [(i, j), i < j] sharing a whole band.

    Edges, in the hidden test: one band (the whole signature); one row per band; a pair agreeing on
    several bands (listed once); three identical documents (three pairs); no candidates at all (an
    empty list); bands x rows different from k raises ValueError.
    """
    forbid_reference(fn, dedup.lsh_candidate_pairs, dedup.near_duplicates)
    if not hidden:
        sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [0, 0, 3, 4], [5, 6, 7, 8]])
        _compare_pairs(fn, sig, 2, 2, " (the worked example: [(0, 1), (0, 2)])")
        rng = _rng(610)
        _compare_pairs(fn, rng.integers(0, 2, (8, 6)), 3, 2, " (8 random signatures of 0s and 1s)")
        passed(fn, "the worked example and a random case are right")
        return
    rng = _rng(611)
    cases = 0
    for n, bands, rows, values in [(10, 4, 2, 2), (25, 6, 3, 2), (40, 5, 4, 2), (12, 8, 1, 4), (30, 2, 6, 2)]:
        _compare_pairs(fn, rng.integers(0, values, (n, bands * rows)), bands, rows)
        cases += 1
    with edge("one band: the whole signature must agree"):
        sig = rng.integers(0, 2, (12, 3))
        _compare_pairs(fn, sig, 1, 3)
    with edge("a pair agreeing on several bands is listed once; three identical documents make three pairs"):
        sig = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [1, 1, 2, 2], [9, 9, 9, 9]])
        _compare_pairs(fn, sig, 2, 2)
    with edge("no candidates at all: an empty list"):
        _compare_pairs(fn, np.arange(12).reshape(4, 3), 3, 1)
    with edge("bands x rows different from the signature length: raise ValueError"):
        expect_value_error(fn, (np.zeros((3, 10), dtype=np.int64), 3, 3),
                           "lsh_candidate_pairs with signatures of length 10 and bands=3, rows=3 should raise ValueError")
    passed(fn, f"all {cases + 4} random and edge cases (1 .. 8 bands, 1 .. 6 rows, repeated and missing pairs) match")
