"""Byte-level byte-pair encoding (BPE): the algorithm, as pure functions.

Implements the tokenizer of GPT-2 (Radford et al., 2019, after Sennrich et al., 2016,
"Neural Machine Translation of Rare Words with Subword Units"):

- text is first cut at the *special tokens* given to training (``<|endoftext|>``
  between documents), which are never part of a chunk, then split into *chunks* by
  the GPT-2 regular expression (words with their leading space, runs of digits,
  punctuation, whitespace); merges never cross a chunk boundary, so nothing is
  learned across a document separator;
- each chunk starts as its UTF-8 bytes, token ids 0..255;
- training repeatedly replaces the most frequent adjacent pair of ids with a new id
  (256, 257, ...); the list of merges, in order, *is* the tokenizer.

Conventions used everywhere in the course:

- ``merges`` is a dict ``{(left_id, right_id): new_id}``; a merge's *rank* is its new
  id, so earlier merges have lower ranks.
- **Ties.** When several pairs are equally frequent, training merges the smallest
  pair, comparing ``(left_id, right_id)`` as tuples. This makes training deterministic
  and independent of dict order.
- **Every token has distinct bytes.** Two merges never produce the same bytes: the
  tokens inside a token's span never reach outside it, so the span is merged the
  same way wherever it occurs and ends as the same pair. (The tests check it on the
  corpus.) This is what lets the merges be exported as tiktoken-style
  ``{token_bytes: rank}`` tables (see :func:`mergeable_ranks`).
- **Encoding** merges, inside each chunk, the adjacent pair whose concatenated bytes
  have the lowest rank, leftmost first, until no adjacent pair forms a token. This is
  tiktoken's rule, so an exported tokenizer encodes exactly like this one.

Left out: dropout-BPE, the byte-to-unicode remapping GPT-2 uses to store its merges
as text (we store ids), and normalisation (NFC/NFKC).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable

import regex

#: GPT-2's pre-tokenization pattern (from OpenAI's encoder.py, as in tiktoken's r50k_base).
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

Pair = tuple[int, int]


def pretokenize(text: str, pattern: str = GPT2_SPLIT_PATTERN) -> list[str]:
    """Split text into the chunks that merges may not cross."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return regex.findall(pattern, text)


def split_on_special(text: str, special_tokens: Iterable[str] = ()) -> list[str]:
    """The pieces of `text` between occurrences of the special tokens (which are dropped).

    ``split_on_special("a.<|endoftext|>b", ["<|endoftext|>"]) == ["a.", "b"]``. The longest
    special token is tried first, so one that contains another is not cut short.
    """
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens must be a list of strings, got the string {special_tokens!r}")
    specials = list(special_tokens)
    if any(not isinstance(s, str) or not s for s in specials):
        raise ValueError(f"special tokens must be non-empty strings, got {specials!r}")
    specials = sorted(set(specials), key=len, reverse=True)
    if not specials:
        return [text]
    return regex.split("|".join(regex.escape(s) for s in specials), text)


def get_pair_counts(ids: Iterable[int], counts: dict[Pair, int] | None = None) -> dict[Pair, int]:
    """Count each adjacent pair in `ids`: ``[1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}``.

    If `counts` is given it is updated in place (and returned), which is how
    counts over many chunks are accumulated.
    """
    counts = {} if counts is None else counts
    ids = list(ids)
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, scanning left to right.

    Occurrences do not overlap: ``merge([5, 5, 5], (5, 5), 9) == [9, 5]``.
    """
    out: list[int] = []
    i = 0
    n = len(ids)
    a, b = pair
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def build_vocab(merges: dict[Pair, int]) -> dict[int, bytes]:
    """The bytes of every token: ids 0..255 are single bytes, each merge concatenates two tokens."""
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
        if a not in vocab or b not in vocab:
            raise ValueError(f"merge ({a}, {b}) -> {new_id} uses a token that no earlier merge created")
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab


def _check_vocab_size(vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (one token per byte), got {vocab_size}")


def _chunk_counts(text: str, pattern: str, special_tokens: Iterable[str] = ()) -> Counter[bytes]:
    """How often each distinct chunk occurs: training works on distinct chunks, weighted.

    The text is cut at the special tokens first: pre-tokenizing across them would glue
    ``.<|`` or ``|>`` into chunks and learn merges that straddle document boundaries.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    counts: Counter[bytes] = Counter()
    for piece in split_on_special(text, special_tokens):
        counts.update(chunk.encode("utf-8") for chunk in pretokenize(piece, pattern))
    return counts


def train_bpe(
    text: str, vocab_size: int, pattern: str = GPT2_SPLIT_PATTERN, special_tokens: Iterable[str] = ()
) -> dict[Pair, int]:
    """Learn ``vocab_size - 256`` merges from `text` (fewer if the text runs out of pairs).

    `special_tokens` (e.g. ``["<|endoftext|>"]``) are cut out of the text before
    pre-tokenization (:func:`split_on_special`): no merge is learned across them or
    from their characters.

    Incremental: pair counts are computed once; after each merge only the chunks
    that contain the merged pair are updated, and a heap finds the next most
    frequent pair (stale heap entries are skipped when popped). The result is
    identical to :func:`train_bpe_naive`, which recounts everything after every merge.
    """
    _check_vocab_size(vocab_size)
    chunk_counts = _chunk_counts(text, pattern, special_tokens)
    words = [list(chunk) for chunk in chunk_counts]  # each distinct chunk as a list of ids
    freqs = list(chunk_counts.values())

    counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}  # pair -> indices of the words that (may) contain it
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(w)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)

    merges: dict[Pair, int] = {}
    next_id = 256
    while next_id < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg_count:
            continue  # stale entry: the count changed after it was pushed
        merges[pair] = next_id

        changed: set[Pair] = set()
        for w in where.pop(pair, ()):
            word, freq = words[w], freqs[w]
            if len(word) < 2:
                continue
            for p in zip(word, word[1:]):
                counts[p] -= freq
                changed.add(p)
            word = merge(word, pair, next_id)
            words[w] = word
            for p in zip(word, word[1:]):
                counts[p] = counts.get(p, 0) + freq
                where.setdefault(p, set()).add(w)
                changed.add(p)
        for p in changed:
            c = counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                counts.pop(p, None)
        next_id += 1
    return merges


def train_bpe_naive(
    text: str, vocab_size: int, pattern: str = GPT2_SPLIT_PATTERN, special_tokens: Iterable[str] = ()
) -> dict[Pair, int]:
    """The textbook trainer: recount every pair after every merge. Same result, far slower.

    Kept as the baseline of the benchmark and as an oracle for :func:`train_bpe`.
    """
    _check_vocab_size(vocab_size)
    chunk_counts = _chunk_counts(text, pattern, special_tokens)
    words = [list(chunk) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    merges: dict[Pair, int] = {}
    next_id = 256
    while next_id < vocab_size:
        counts: dict[Pair, int] = {}
        for word, freq in zip(words, freqs):
            for pair in zip(word, word[1:]):
                counts[pair] = counts.get(pair, 0) + freq
        if not counts:
            break  # every chunk is a single token: nothing left to merge
        best = min(counts, key=lambda p: (-counts[p], p))
        merges[best] = next_id
        words = [merge(word, best, next_id) for word in words]
        next_id += 1
    return merges


def mergeable_ranks(merges: dict[Pair, int]) -> dict[bytes, int]:
    """The merges as tiktoken's ``{token_bytes: rank}`` table (rank = token id)."""
    return {token: i for i, token in build_vocab(merges).items()}


def pair_ranks(vocab: dict[int, bytes]) -> dict[Pair, int]:
    """Every pair of tokens whose bytes concatenate to a token, mapped to that token's id.

    This includes the pairs that were merged in training and also, e.g., ``(a, bc)``
    when ``abc`` was made from ``(ab, c)``: encoding looks up ranks by the bytes
    a pair would form, as tiktoken does.
    """
    by_bytes = {token: i for i, token in vocab.items()}
    ranks: dict[Pair, int] = {}
    for i, token in vocab.items():
        for cut in range(1, len(token)):
            left, right = by_bytes.get(token[:cut]), by_bytes.get(token[cut:])
            if left is not None and right is not None:
                ranks[(left, right)] = i
    return ranks


def encode_chunk(ids: list[int], ranks: dict[Pair, int]) -> list[int]:
    """Encode one chunk: merge the lowest-ranked adjacent pair (leftmost on ties) until none is left.

    `ranks` is :func:`pair_ranks` of the vocabulary (or, for a tokenizer without
    duplicate-prone merges, the merges dict itself).
    """
    ids = list(ids)
    while len(ids) >= 2:
        best_rank, best_i = None, -1
        for i in range(len(ids) - 1):
            rank = ranks.get((ids[i], ids[i + 1]))
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        ids[best_i : best_i + 2] = [best_rank]
    return ids


def encode(text: str, merges: dict[Pair, int], pattern: str = GPT2_SPLIT_PATTERN) -> list[int]:
    """Encode `text` with `merges` (no special tokens, no cache): the rule the exercises implement."""
    ranks = pair_ranks(build_vocab(merges))
    ids: list[int] = []
    for chunk in pretokenize(text, pattern):
        ids.extend(encode_chunk(list(chunk.encode("utf-8")), ranks))
    return ids


def decode(ids: Iterable[int], merges: dict[Pair, int]) -> str:
    """Decode ids to text; byte sequences that are not valid UTF-8 become U+FFFD."""
    vocab = build_vocab(merges)
    try:
        data = b"".join(vocab[i] for i in ids)
    except KeyError as err:
        raise ValueError(f"token id {err.args[0]} is not in the vocabulary (ids 0..{len(vocab) - 1})") from None
    return data.decode("utf-8", errors="replace")
