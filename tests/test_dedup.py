"""Tests of llm_course.dedup: exact duplicates, MinHash against brute force and datasketch, LSH banding."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from llm_course.dedup import (
    PRIME,
    candidate_probability,
    choose_bands,
    estimate_jaccard,
    exact_duplicates,
    jaccard,
    lsh_candidate_pairs,
    minhash_params,
    minhash_signature,
    minhash_signatures,
    near_duplicates,
    normalize,
    shingle_hashes,
    shingles,
)


def set_pair(jaccard_value: float, union: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of distinct values below p whose Jaccard similarity is exactly round(J * union) / union."""
    values = rng.choice(PRIME, union, replace=False)
    shared = round(jaccard_value * union)
    rest = values[shared:]
    half = len(rest) // 2
    return np.concatenate([values[:shared], rest[:half]]), np.concatenate([values[:shared], rest[half:]])


# --------------------------------------------------------------------------- exact duplicates, shingles
def test_exact_duplicates_ignore_case_and_whitespace_only():
    docs = ["Hello  World\n", "hello world", "Hello, World", "HELLO\tWORLD", "other"]
    assert exact_duplicates(docs) == [None, 0, None, 0, None]
    assert normalize("  A\u00a0B  ") == "a b"  # NFKC turns the no-break space into a space


def test_shingles_are_word_windows():
    assert shingles("a b c d", 2) == {"a b", "b c", "c d"}
    assert shingles("A b", 5) == {"a b"}  # shorter than k: the whole text
    assert shingles("   ", 3) == set()
    assert len(shingle_hashes("a b c d", 2)) == 3


def test_jaccard_worked_example():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 1.0
    assert jaccard(np.array([1, 2]), np.array([3])) == 0.0


# --------------------------------------------------------------------------- MinHash
def test_signature_matches_python_integers_brute_force():
    rng = np.random.default_rng(0)
    a, b = minhash_params(16, seed=3)
    for n in (1, 2, 7, 50):
        x = rng.integers(0, PRIME, n)
        want = [min((int(ai) * int(xi) + int(bi)) % PRIME for xi in x) for ai, bi in zip(a, b)]
        got = minhash_signature(x, a, b)
        assert got.dtype == np.int64 and got.tolist() == want
    # the largest values: a x + b close to 2^62 is still exact in int64
    top = np.array([PRIME - 1]), np.array([PRIME - 1]), np.array([PRIME - 1])
    assert minhash_signature(*top).tolist() == [((PRIME - 1) ** 2 + PRIME - 1) % PRIME]


def test_signature_depends_on_the_set_only():
    a, b = minhash_params(32, seed=1)
    x = np.array([5, 9, 1000, 77])
    assert np.array_equal(minhash_signature(x, a, b), minhash_signature(np.concatenate([x[::-1], x]), a, b))
    assert not np.array_equal(minhash_params(8, 0)[0], minhash_params(8, 1)[0])


@pytest.mark.parametrize("J", [0.1, 0.3, 0.5, 0.8, 0.95])
def test_estimate_is_unbiased_with_the_binomial_spread(J):
    """Over many seeds, the estimate's mean is J and its standard deviation sqrt(J (1 - J) / k)."""
    rng = np.random.default_rng(int(J * 100))
    A, B = set_pair(J, 200, rng)
    exact = jaccard(A, B)
    k, seeds = 64, 150
    estimates = np.array([estimate_jaccard(minhash_signature(A, *minhash_params(k, s)),
                                           minhash_signature(B, *minhash_params(k, s))) for s in range(seeds)])
    sd = math.sqrt(exact * (1 - exact) / k)
    assert abs(estimates.mean() - exact) < 4 * sd / math.sqrt(seeds)
    assert 0.7 * sd < estimates.std() < 1.3 * sd
    assert np.all(np.abs(estimates - exact) < 5 * sd)


def test_identical_and_disjoint_sets():
    a, b = minhash_params(128, seed=0)
    x = np.arange(100)
    assert estimate_jaccard(minhash_signature(x, a, b), minhash_signature(x, a, b)) == 1.0
    assert estimate_jaccard(minhash_signature(x, a, b), minhash_signature(x + 10_000, a, b)) < 0.05


# --------------------------------------------------------------------------- LSH
def test_candidate_pairs_match_brute_force_banding():
    rng = np.random.default_rng(5)
    sig = rng.integers(0, 3, (30, 12))  # few values: many bands agree by chance
    for bands, rows in [(12, 1), (6, 2), (4, 3), (3, 4), (1, 12)]:
        want = sorted((i, j) for i, j in itertools.combinations(range(30), 2)
                      if any(np.array_equal(sig[i, t * rows:(t + 1) * rows], sig[j, t * rows:(t + 1) * rows])
                             for t in range(bands)))  # fmt: skip
        assert lsh_candidate_pairs(sig, bands, rows) == want


def test_s_curve_matches_a_simulation():
    """Pairs of sets with Jaccard s become candidates with probability 1 - (1 - s^r)^b."""
    rng = np.random.default_rng(7)
    bands, rows, trials = 10, 5, 300
    for s in (0.3, 0.5, 0.6, 0.8):
        A, B = set_pair(s, 60, rng)
        exact = jaccard(A, B)
        hits = 0
        for seed in range(trials):
            a, b = minhash_params(bands * rows, seed)
            hits += bool(lsh_candidate_pairs(np.stack([minhash_signature(A, a, b), minhash_signature(B, a, b)]), bands, rows))
        p = float(candidate_probability(exact, bands, rows))
        assert abs(hits / trials - p) < 4 * math.sqrt(p * (1 - p) / trials) + 0.01, (s, hits / trials, p)


def test_choose_bands_puts_the_steep_part_near_the_threshold():
    b, r = choose_bands(128, 0.8)
    assert b * r == 128 and abs((1 / b) ** (1 / r) - 0.8) < 0.1
    assert candidate_probability(0.95, b, r) > 0.99 and candidate_probability(0.4, b, r) < 0.01


def planted_documents(seed: int = 0) -> tuple[list[str], set[tuple[int, int]]]:
    """Unrelated random documents, and for some of them a copy with 1% of the words changed (Jaccard about 0.9)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)]
    docs = [" ".join(rng.choice(words) for _ in range(300)) for _ in range(30)]
    planted = set()
    for i in range(0, 30, 3):
        tokens = docs[i].split()
        for n in rng.sample(range(len(tokens)), 3):
            tokens[n] = rng.choice(words)
        planted.add((i, len(docs)))
        docs.append(" ".join(tokens))
    return docs, planted


def test_near_duplicates_find_the_planted_pairs():
    docs, planted = planted_documents()
    sig = minhash_signatures([shingle_hashes(d) for d in docs], 128, seed=0)
    pairs, cluster = near_duplicates(sig, 0.7, 16, 8)
    assert {(i, j) for i, j, _ in pairs} == planted
    assert all(cluster[j] == i for i, j in planted)
    assert sum(c == n for n, c in enumerate(cluster)) == 30


def test_agrees_with_datasketch():
    """datasketch (an independent MinHash and LSH): the same planted pairs at threshold 0.7, and
    estimates that agree with ours within the spread both should have around the exact Jaccard."""
    datasketch = pytest.importorskip("datasketch")
    docs, planted = planted_documents(1)
    k = 128
    theirs = []
    lsh = datasketch.MinHashLSH(threshold=0.7, num_perm=k)
    for n, doc in enumerate(docs):
        m = datasketch.MinHash(num_perm=k, seed=1)
        m.update_batch([s.encode() for s in shingles(doc)])
        lsh.insert(n, m)
        theirs.append(m)
    their_pairs = {(min(n, c), max(n, c)) for n, m in enumerate(theirs) for c in lsh.query(m) if c != n}
    hashes = [shingle_hashes(d) for d in docs]
    sig = minhash_signatures(hashes, k, seed=0)
    pairs, _ = near_duplicates(sig, 0.7, *choose_bands(k, 0.7))
    assert {(i, j) for i, j, _ in pairs} == their_pairs == planted
    for i, j in planted | {(0, 1), (2, 5)}:
        exact = jaccard(hashes[i], hashes[j])
        sd = math.sqrt(max(exact * (1 - exact), 0.01) / k)
        ours, other = estimate_jaccard(sig[i], sig[j]), theirs[i].jaccard(theirs[j])
        assert abs(ours - exact) < 4 * sd and abs(other - exact) < 4 * sd and abs(ours - other) < 5 * sd


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: minhash_signature(np.array([], dtype=np.int64), *minhash_params(4)), ValueError, "empty document"),
        (lambda: minhash_signature(np.array([PRIME]), *minhash_params(4)), ValueError, r"\[0, p"),
        (lambda: minhash_signature(np.array([-1]), *minhash_params(4)), ValueError, r"\[0, p"),
        (lambda: minhash_signature(np.array([1.5]), *minhash_params(4)), TypeError, "integers"),
        (lambda: minhash_signature(np.array([1]), np.array([1, 2]), np.array([1])), ValueError, "same length"),
        (lambda: minhash_params(0), ValueError, "at least 1"),
        (lambda: minhash_signatures([np.array([1]), np.array([], dtype=np.int64)], 4), ValueError, r"documents \[1\]"),
        (lambda: estimate_jaccard(np.zeros(3), np.zeros(4)), ValueError, "same length"),
        (lambda: lsh_candidate_pairs(np.zeros((3, 10)), 3, 3), ValueError, "must equal the signature length 10"),
        (lambda: lsh_candidate_pairs(np.zeros(10), 2, 5), ValueError, "2-D"),
        (lambda: shingles("a b", 0), ValueError, "at least 1"),
        (lambda: normalize(b"bytes"), TypeError, "must be a str"),
        (lambda: choose_bands(128, 1.0), ValueError, "threshold"),
    ],
)
def test_bad_input_says_what_is_wrong(call, error, message):
    with pytest.raises(error, match=message):
        call()
