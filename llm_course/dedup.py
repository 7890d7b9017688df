"""Removing duplicates from a pretraining corpus: exact hashes, MinHash and LSH (chapter 06, data).

Implements
- `normalize` and `exact_duplicates`: documents equal after normalisation (Unicode NFKC, lower
  case, whitespace collapsed) share a SHA-256 digest; every copy but the first is a duplicate;
- `shingles` and `shingle_hashes`: a document as the set of its k-word windows, each hashed to
  an integer below the prime p = 2^31 - 1;
- `jaccard`: the exact Jaccard similarity |A n B| / |A u B| of two shingle sets (the brute force);
- MinHash (Broder, 1997): k hash functions h_i(x) = (a_i x + b_i) mod p drawn by `minhash_params`;
  `minhash_signature` keeps min_x h_i(x) for each i. Two sets share the minimum of h_i with
  probability equal to their Jaccard similarity, so `estimate_jaccard`, the share of agreeing
  entries, estimates it with standard deviation sqrt(J (1 - J) / k);
- LSH by banding (Indyk and Motwani, 1998; Leskovec, Rajaraman and Ullman, *Mining of Massive
  Datasets*, ch. 3): the signature cut into b bands of r rows; two documents are candidates when
  any band agrees entirely (`lsh_candidate_pairs`), which happens with probability
  1 - (1 - s^r)^b (`candidate_probability`, the S-curve), and `near_duplicates` keeps the
  candidate pairs whose estimated similarity passes a threshold and groups them (union-find).

The arithmetic is exact: x < p and a, b < p, so a x + b < 2^62 fits in int64 (datasketch uses
p = 2^61 - 1 and lets the product wrap around 2^64). Left out: suffix-array exact substring
deduplication (Lee et al., 2022), and anything distributed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

PRIME = (1 << 31) - 1  # p: a Mersenne prime; shingle hashes and the a_i, b_i are below it
_WORD = re.compile(r"\S+")


# ---------------------------------------------------------------------------------------
# Exact duplicates
# ---------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """The text compared for exact duplicates: NFKC, lower case, runs of whitespace made one space."""
    if not isinstance(text, str):
        raise TypeError(f"a document must be a str, got {type(text).__name__}")
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_duplicates(docs: Sequence[str]) -> list[int | None]:
    """For each document, the index of the first earlier document with the same normalised text
    (its SHA-256), or None if it is the first of its kind."""
    first: dict[bytes, int] = {}
    out: list[int | None] = []
    for i, doc in enumerate(docs):
        digest = hashlib.sha256(normalize(doc).encode("utf-8")).digest()
        out.append(first.get(digest))
        first.setdefault(digest, i)
    return out


# ---------------------------------------------------------------------------------------
# Shingles and the exact Jaccard similarity
# ---------------------------------------------------------------------------------------


def shingles(text: str, k: int = 5) -> set[str]:
    """The set of k-word windows of the normalised text (a shorter text: its whole word sequence)."""
    if k < 1:
        raise ValueError(f"shingle size k must be at least 1, got {k}")
    words = _WORD.findall(normalize(text))
    if not words:
        return set()
    if len(words) <= k:
        return {" ".join(words)}
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def hash_shingle(shingle: str) -> int:
    """A shingle as an integer in [0, p): the first 8 bytes of its BLAKE2b digest, reduced mod p."""
    return int.from_bytes(hashlib.blake2b(shingle.encode("utf-8"), digest_size=8).digest(), "little") % PRIME


def shingle_hashes(text: str, k: int = 5) -> np.ndarray:
    """(n,) int64: the sorted distinct hashes of the text's k-word shingles."""
    return np.unique(np.fromiter((hash_shingle(s) for s in shingles(text, k)), dtype=np.int64))


def _as_set(values) -> set:
    return set(values.tolist()) if isinstance(values, np.ndarray) else set(values)


def jaccard(a: set | np.ndarray, b: set | np.ndarray) -> float:
    """|A n B| / |A u B| of two sets (or arrays of distinct values); 1.0 for two empty sets."""
    a, b = _as_set(a), _as_set(b)
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


# ---------------------------------------------------------------------------------------
# MinHash
# ---------------------------------------------------------------------------------------


def minhash_params(num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (num_perm,) int64: a_i in [1, p), b_i in [0, p), drawn from a seeded generator."""
    if num_perm < 1:
        raise ValueError(f"num_perm (the signature length k) must be at least 1, got {num_perm}")
    rng = np.random.default_rng(seed)
    return rng.integers(1, PRIME, num_perm, dtype=np.int64), rng.integers(0, PRIME, num_perm, dtype=np.int64)


def minhash_signature(shingle_hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(k,) int64: signature[i] = min over the shingles x of (a[i] * x + b[i]) mod p.

    shingle_hashes: (n,) integers in [0, p), n >= 1; a, b: (k,) integers in [0, p).
    """
    x = np.asarray(shingle_hashes)
    a, b = np.asarray(a), np.asarray(b)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"shingle_hashes must be a non-empty 1-D array, got shape {x.shape}: "
                         "an empty document has no MinHash signature")  # fmt: skip
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    for name, v in (("shingle_hashes", x), ("a", a), ("b", b)):
        if not np.issubdtype(v.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got {v.dtype}")
        if v.min() < 0 or v.max() >= PRIME:
            raise ValueError(f"{name} must lie in [0, p = 2^31 - 1), got values in [{v.min()}, {v.max()}]")
    x, a, b = x.astype(np.int64), a.astype(np.int64), b.astype(np.int64)
    hashed = (a[:, None] * x[None, :] + b[:, None]) % PRIME  # (k, n): < 2^62, exact in int64
    return hashed.min(axis=1)  # (k,)


def minhash_signatures(hash_sets: Sequence[np.ndarray], num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """(N, k) int64: the signature of every document's shingle hashes, with one seeded (a, b)."""
    a, b = minhash_params(num_perm, seed)
    empty = [i for i, h in enumerate(hash_sets) if len(h) == 0]
    if empty:
        raise ValueError(f"documents {empty[:5]} have no shingles (empty text): drop them before MinHash")
    return np.stack([minhash_signature(h, a, b) for h in hash_sets]) if len(hash_sets) else np.zeros((0, num_perm), np.int64)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The share of positions where two signatures agree: an unbiased estimate of the Jaccard similarity."""
    sig_a, sig_b = np.asarray(sig_a), np.asarray(sig_b)
    if sig_a.shape != sig_b.shape or sig_a.ndim != 1:
        raise ValueError(f"signatures must be 1-D and of the same length, got {sig_a.shape} and {sig_b.shape}")
    return float(np.mean(sig_a == sig_b))


# ---------------------------------------------------------------------------------------
# Locality-sensitive hashing by banding
# ---------------------------------------------------------------------------------------


def candidate_probability(s, bands: int, rows: int):
    """1 - (1 - s^r)^b: the chance that two documents of Jaccard similarity s share a band."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def lsh_candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> list[tuple[int, int]]:
    """Sorted pairs (i, j), i < j, of documents whose signatures agree on every row of at least one band.

    signatures: (N, k) with k = bands * rows; band t is columns t * rows .. (t + 1) * rows - 1.
    """
    sig = np.asarray(signatures)
    if sig.ndim != 2:
        raise ValueError(f"signatures must be a 2-D array (documents, k), got shape {sig.shape}")
    if bands < 1 or rows < 1 or bands * rows != sig.shape[1]:
        raise ValueError(f"bands x rows must equal the signature length {sig.shape[1]}, got {bands} x {rows}")
    pairs: set[tuple[int, int]] = set()
    for t in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, row in enumerate(sig[:, t * rows : (t + 1) * rows]):
            buckets[row.tobytes()].append(i)
        for members in buckets.values():
            pairs.update((i, j) for n, i in enumerate(members) for j in members[n + 1 :])
    return sorted(pairs)


def choose_bands(num_perm: int, threshold: float) -> tuple[int, int]:
    """(b, r) with b r = num_perm whose S-curve's steepest point, about (1/b)^(1/r), is nearest the threshold."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    options = [(num_perm // r, r) for r in range(1, num_perm + 1) if num_perm % r == 0]
    return min(options, key=lambda br: abs((1 / br[0]) ** (1 / br[1]) - threshold))


def near_duplicates(
    signatures: np.ndarray, threshold: float, bands: int, rows: int
) -> tuple[list[tuple[int, int, float]], list[int]]:
    """(pairs, cluster): the LSH candidate pairs whose estimated Jaccard is >= threshold, with the
    estimate, and for each document the smallest index of its group (union-find over the pairs);
    deduplication keeps the documents with cluster[i] == i."""
    pairs = [(i, j, estimate_jaccard(signatures[i], signatures[j])) for i, j in lsh_candidate_pairs(signatures, bands, rows)]
    pairs = [p for p in pairs if p[2] >= threshold]
    parent = list(range(len(signatures)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        ri, rj = root(i), root(j)
        parent[max(ri, rj)] = min(ri, rj)
    return pairs, [root(i) for i in range(len(signatures))]
