"""Checks for the chapter 02 exercises (byte-level BPE).

The student writes, with the signatures of :mod:`llm_course.bpe`:

- ``get_pair_counts(ids) -> {(a, b): count}``
- ``merge(ids, pair, new_id) -> ids``
- ``train(text, vocab_size) -> merges``  (GPT-2 chunks, smallest pair wins ties)
- ``encode(text, merges) -> ids``
- ``decode(ids, merges) -> str``

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test
cell) or seeded random cases and edge cases compared with the reference
(``hidden=True``, the hidden test cell).
"""

from __future__ import annotations

import random
from functools import lru_cache

from llm_course import bpe
from llm_course.data import default_corpus
from llm_course.grading import call, fail, forbid_reference, passed, short
from llm_course.grading.edges import edge
from llm_course.tokenizer import Tokenizer

# The worked example from the BPE literature (Gage 1994; Wikipedia's "Byte pair encoding").
WORKED_TEXT = "aaabdaaabac"
WORKED_MERGES = {(97, 97): 256, (97, 98): 257, (256, 257): 258}  # aa -> Z, ab -> Y, ZY -> X
WORKED_IDS = [258, 100, 258, 97, 99]  # "XdXac"

UNSEEN_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # squares\n\n\n",
    "naïve café, déjà vu — 100% 😀🎉 ok",
    "大语言模型 とトークン 토큰화",
    "   leading and    inner   spaces\t\ttabs\n\n\nnewlines   ",
    "3.14159 2718281828 1,000,000 0xFF 1e-9",
    "I'm sure they'll say it's fine, we've seen 'quotes' before",
]


def _check_ids_list(fn, result, what: str) -> list[int]:
    if not isinstance(result, list):
        fail(f"{fn.__name__} should return a list of ints ({what}), got {type(result).__name__}: {short(result)}")
    bad = [x for x in result if not isinstance(x, int) or isinstance(x, bool)]
    if bad:
        fail(f"{fn.__name__} should return a list of ints ({what}), but it contains {short(bad[0])} ({type(bad[0]).__name__})")
    return result


@lru_cache(maxsize=1)
def _corpus_tokenizer() -> Tokenizer:
    """A small tokenizer trained on the start of the default corpus (the hidden tests' merges)."""
    return Tokenizer.train(default_corpus()[:60_000], vocab_size=600)


def _shuffled(merges: dict, seed: int) -> dict:
    """The same merges in a random dict order: nothing may depend on insertion order."""
    items = list(merges.items())
    random.Random(seed).shuffle(items)
    return dict(items)


def _random_corpus_slices(seed: int, n: int, length: int) -> list[str]:
    text = default_corpus()
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(text) - length) for _ in range(n)]
    return [text[s : s + length] for s in starts]


# --------------------------------------------------------------------------- pair counts
def _pair_count_diff(ids, got: dict, want: dict) -> str:
    if got and all((b, a) in want for (a, b) in got) and got != want and any(a != b for a, b in got):
        return "the pairs look reversed: count (ids[i], ids[i + 1]), left id first"
    missing = [p for p in want if p not in got]
    extra = [p for p in got if p not in want]
    wrong = [p for p in want if p in got and got[p] != want[p]]
    parts = []
    if missing:
        parts.append(f"missing pair {missing[0]} (count {want[missing[0]]})")
    if extra:
        parts.append(f"pair {extra[0]} is not adjacent anywhere in ids but was counted {got[extra[0]]} times")
    if wrong:
        p = wrong[0]
        parts.append(f"pair {p} should be counted {want[p]} times, got {got[p]}")
        if len(set(ids)) < len(ids) and all(got.get(q) == 1 for q in got):
            parts.append("(each pair must be counted every time it occurs, not once)")
    if len(ids) >= 2 and (ids[-2], ids[-1]) in missing:
        parts.append("(the last pair is missing: check your loop's range)")
    return "; ".join(parts)


def _compare_pair_counts(fn, ids) -> None:
    want = bpe.get_pair_counts(ids)
    got = call(fn, ids)
    if not isinstance(got, dict):
        fail(f"get_pair_counts should return a dict {{(a, b): count}}, got {type(got).__name__}: {short(got)}")
    got = dict(got)
    if got != want:
        fail(f"get_pair_counts({short(ids)}) is wrong: {_pair_count_diff(ids, got, want)}.")


def check_get_pair_counts(fn, hidden: bool = False) -> None:
    """get_pair_counts(ids) counts each adjacent pair, overlapping occurrences included.

    Edges the exercise defines, all in the hidden test: the empty list and a single id (no pairs);
    overlapping runs (``[5, 5, 5]`` holds ``(5, 5)`` twice); the last pair; multi-digit and large ids
    (``[1, 12]`` and ``[11, 2]`` are different pairs, ids above 255).
    """
    forbid_reference(fn, bpe.get_pair_counts)
    if not hidden:
        cases = [[1, 2, 3, 1, 2], [], [7], [5, 5, 5], [104, 101, 108, 108, 111]]
        for ids in cases:
            _compare_pair_counts(fn, ids)
        passed(fn, f"all {len(cases)} hand-worked examples are right")
        return
    rng = random.Random(2)
    cases = [[rng.randrange(6) for _ in range(rng.randrange(0, 40))] for _ in range(40)]
    cases += [[300, 1000, 300, 1000, 300], list(range(500)), [9] * 50]
    for ids in cases:
        _compare_pair_counts(fn, ids)
    edges = {
        "empty list": [],
        "a single id": [42],
        "overlapping run of one id": [5, 5, 5, 5],
        "multi-digit ids that read alike as text": [1, 12, 11, 2, 1, 12],
        "large ids": [256, 1000, 70000, 256, 1000],
    }
    for name, ids in edges.items():
        with edge(name):
            _compare_pair_counts(fn, ids)
    cases += list(edges.values())
    passed(fn, f"all {len(cases)} random and edge cases match the reference")


# --------------------------------------------------------------------------- merge
def _compare_merge(fn, ids, pair, new_id) -> None:
    want = bpe.merge(ids, pair, new_id)
    original = list(ids)
    got = call(fn, ids, pair, new_id)
    _check_ids_list(fn, got, "the merged ids")
    if got == want:
        return
    hint = ""
    if any(x not in ids and x != new_id for x in got):
        hint = (f" (ids appeared that were neither in the input nor {new_id}: compare whole ids as ints, "
                "never their digits as text; ids can have several digits)")
    elif len(got) == len(ids):
        hint = " (nothing was merged: compare ids[i] and ids[i + 1] with the pair)"
    elif got.count(new_id) == 1 and want.count(new_id) > 1:
        hint = " (only the first occurrence was merged: replace every occurrence)"
    elif got.count(new_id) > want.count(new_id):
        hint = " (occurrences must not overlap: after merging at i, continue at i + 2)"
    elif len(got) < len(want):
        hint = " (some ids were dropped: an id that is not part of the pair must be kept, the last one too)"
    fail(f"merge({short(original)}, {pair}, {new_id}) should give {short(want)}, got {short(got)}{hint}.")


def check_merge(fn, hidden: bool = False) -> None:
    """merge(ids, pair, new_id) replaces non-overlapping occurrences, left to right.

    Edges the exercise defines, all in the hidden test: overlapping runs (``[7, 7, 7]`` merges the
    first two only); the pair at the start and at the very end; no occurrence; the empty list and a
    single id; multi-digit and large ids (pair ``(1, 2)`` must not match ``[11, 2]`` or ``[1, 21]``,
    pair ``(256, 1000)`` works like any other); and the input list is left unchanged.
    """
    forbid_reference(fn, bpe.merge)
    if not hidden:
        cases = [
            ([1, 2, 3, 1, 2], (1, 2), 99),
            ([5, 5, 5], (5, 5), 9),
            ([1, 2], (2, 1), 7),
            ([], (1, 2), 3),
            ([4, 1, 2], (1, 2), 8),
        ]
        for args in cases:
            _compare_merge(fn, *args)
        ids = [1, 2, 1, 2]
        result = call(fn, ids, (1, 2), 9, copy_args=False)
        if ids != [1, 2, 1, 2]:
            fail(f"merge modified the list it was given (it became {ids}); build and return a new list")
        _check_ids_list(fn, result, "the merged ids")
        passed(fn, f"all {len(cases) + 1} hand-worked examples are right")
        return
    rng = random.Random(3)
    cases = []
    for _ in range(60):
        ids = [rng.randrange(4) for _ in range(rng.randrange(0, 30))]
        pair = (rng.randrange(4), rng.randrange(4))
        cases.append((ids, pair, 256 + rng.randrange(100)))
    cases += [([7] * 4, (7, 7), 300), ([7] * 5, (7, 7), 300), ([1, 7, 7], (7, 7), 300), ([7, 7, 1], (7, 7), 300)]
    for args in cases:
        _compare_merge(fn, *args)
    edges = {
        "empty list": ([], (1, 2), 300),
        "a single id": ([1], (1, 2), 300),
        "multi-digit ids whose digits contain the pair": ([11, 2, 1, 21, 12, 1, 2], (1, 2), 300),
        "multi-digit ids, pair of multi-digit ids": ([1, 12, 11, 2, 11, 2], (11, 2), 300),
        "large ids": ([256, 1000, 256, 1000, 1000, 256, 2560, 1000], (256, 1000), 70000),
        "new id smaller than the merged ids": ([300, 301, 5, 300, 301], (300, 301), 7),
    }
    for name, args in edges.items():
        with edge(name):
            _compare_merge(fn, *args)
            ids = list(args[0])
            call(fn, ids, args[1], args[2], copy_args=False)
            if ids != args[0]:
                fail(f"merge modified the list it was given (it became {short(ids)}); build and return a new list")
    cases += list(edges.values())
    passed(fn, f"all {len(cases)} random and edge cases match the reference")


# --------------------------------------------------------------------------- train
def _explain_train_difference(text: str, vocab_size: int, got: dict, want: dict) -> str:
    want_order = sorted(want, key=want.get)
    got_order = sorted(got, key=lambda p: got[p])
    if sorted(got.values()) != list(range(256, 256 + len(got))):
        ids = sorted(got.values())
        return f"new ids must be 256, 257, ... in order (one per merge); got ids starting {ids[:3]}"
    if len(got) != len(want):
        return f"expected {len(want)} merges (vocab_size - 256), got {len(got)}"
    for k, (w, g) in enumerate(zip(want_order, got_order)):
        if w == g:
            continue
        # Recompute the counts the reference saw at this step.
        words = [list(c.encode("utf-8")) for c in bpe.pretokenize(text)]
        for p in want_order[:k]:
            words = [bpe.merge(word, p, want[p]) for word in words]
        counts: dict = {}
        for word in words:
            bpe.get_pair_counts(word, counts)
        vocab = bpe.build_vocab(want)
        shown = lambda p: f"{p} = {vocab.get(p[0], b'?') + vocab.get(p[1], b'?')!r}"  # noqa: E731
        msg = (
            f"merge {k + 1} (new id {256 + k}) should be pair {shown(w)}, counted {counts.get(w, 0)} times; "
            f"you merged {g}"
        )
        if g in counts and counts[g] == counts[w]:
            msg += f", which is just as frequent: ties must go to the smallest pair, and {min(g, w)} < {max(g, w)}"
        elif g not in counts:
            crossing = k == 0 and g in bpe.get_pair_counts(text.encode("utf-8"))
            if crossing:
                msg += ", which only occurs across chunk boundaries: split the text with pretokenize first"
            else:
                msg += ", which does not occur in the text at that point"
        else:
            msg += f", counted only {counts[g]} times"
        return msg
    return "the merges differ"


def _compare_train(fn, text: str, vocab_size: int) -> None:
    want = bpe.train_bpe(text, vocab_size)
    got = call(fn, text, vocab_size)
    if not isinstance(got, dict):
        fail(f"train should return a dict {{(a, b): new_id}}, got {type(got).__name__}: {short(got)}")
    got = {tuple(k): v for k, v in got.items()}
    if got != want:
        fail(f"train({short(text, 50)}, {vocab_size}) is wrong: {_explain_train_difference(text, vocab_size, got, want)}.")


def check_train(fn, hidden: bool = False) -> None:
    """train(text, vocab_size) learns vocab_size - 256 merges on GPT-2 chunks, smallest pair on ties.

    Edges the exercise defines, all in the hidden test: ties at the first merge between pairs in
    any order of appearance (the smallest tuple wins, not the first seen); ties between pairs with
    multi-digit ids (tuples compare as numbers: ``(98, 256) < (256, 98)``); ``vocab_size = 256``
    (no merges); stopping early when every chunk is one token (a one-letter text, an empty text);
    merges never crossing chunk boundaries.
    """
    forbid_reference(fn, bpe.train_bpe, bpe.train_bpe_naive, Tokenizer.train)
    if not hidden:
        cases = [(WORKED_TEXT, 259), ("hug hugs pug pun bun", 262), ("ab ab", 256)]
        for text, vocab_size in cases:
            _compare_train(fn, text, vocab_size)
        passed(fn, f"all {len(cases)} hand-worked examples are right (including the literature's aaabdaaabac)")
        return
    slices = _random_corpus_slices(seed=4, n=3, length=1500)
    cases = [(s, 256 + 40) for s in slices] + [("aaaa aaaa bbbb", 270), ("x", 300), ("", 260)]
    for text, vocab_size in cases:
        _compare_train(fn, text, vocab_size)
    edges = {
        "a tie where the smallest pair is not the first seen": ("baab", 257),
        "a tie between pairs of multi-digit ids": ("aabaa", 258),
        "vocab_size 256: no merges": ("hello hello", 256),
        "stop early: every chunk is one token": ("ab ab", 400),
    }
    for name, (text, vocab_size) in edges.items():
        with edge(name):
            _compare_train(fn, text, vocab_size)
    cases += list(edges.values())
    passed(fn, f"all {len(cases)} random and edge cases match the reference")


# --------------------------------------------------------------------------- encode
def _compare_encode(fn, text: str, merges: dict) -> None:
    want = bpe.encode(text, merges)
    got = _check_ids_list(fn, call(fn, text, merges), "the token ids")
    if got == want:
        return
    vocab = bpe.build_vocab(merges)
    i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    hint = ""
    if bytes(x for x in got if x < 256) and all(x < 256 for x in got) and any(x >= 256 for x in want):
        hint = " (no merge was applied: merge the lowest-ranked pair repeatedly)"
    elif any(x >= 256 and x not in vocab for x in got):
        hint = " (ids outside the vocabulary appeared)"
    elif len(got) > len(want):
        hint = " (too few merges applied: keep merging until no adjacent pair is in merges)"
    elif len(got) < len(want):
        hint = " (too many merges: merges must not cross chunk boundaries, and lower ranks go first)"
    fail(
        f"encode({short(text, 50)}) differs from the reference at token {i}: "
        f"expected {short(want[i:i + 6])}, got {short(got[i:i + 6])}{hint}."
    )


def check_encode(fn, hidden: bool = False) -> None:
    """encode(text, merges): UTF-8 bytes, GPT-2 chunks, lowest-ranked merge first.

    Edges the exercise defines, all in the hidden test: the empty text and one-byte chunks; merges
    given in any dict order (the lowest new id goes first, whatever the order); a merge whose pair
    only appears after an earlier merge (repeat until nothing applies); multi-byte UTF-8 characters;
    chunk boundaries.
    """
    forbid_reference(fn, bpe.encode, bpe.encode_chunk, Tokenizer.encode, Tokenizer.encode_ordinary)
    if not hidden:
        got = _check_ids_list(fn, call(fn, WORKED_TEXT, WORKED_MERGES), "the token ids")
        if got != WORKED_IDS:
            fail(f"encode({WORKED_TEXT!r}) with the worked example's merges should be {WORKED_IDS} (XdXac), got {got}.")
        for text in ["", "é", "aa aa", "hello"]:
            _compare_encode(fn, text, WORKED_MERGES)
        passed(fn, "the worked example and 4 small cases are right")
        return
    merges = _shuffled(_corpus_tokenizer().merges, seed=8)
    texts = _random_corpus_slices(seed=5, n=8, length=300) + UNSEEN_TEXTS
    for text in texts:
        _compare_encode(fn, text, merges)
    reversed_worked = dict(reversed(list(WORKED_MERGES.items())))
    edges = {
        "empty text": ("", merges),
        "one-byte chunks": ("a b c", merges),
        "merges listed from the highest id down": (WORKED_TEXT + " " + WORKED_TEXT, reversed_worked),
        "a lower-ranked pair that only appears after a merge": ("aaaab", {(97, 98): 256, (97, 97): 257, (257, 256): 258}),
    }
    for name, (text, edge_merges) in edges.items():
        with edge(name):
            _compare_encode(fn, text, edge_merges)
    texts += [text for text, _ in edges.values()]
    passed(fn, f"all {len(texts)} texts (corpus, code, emoji, CJK, spaces, numbers) match the reference")


# --------------------------------------------------------------------------- decode
def _compare_decode(fn, ids: list[int], merges: dict) -> None:
    want = bpe.decode(ids, merges)
    got = call(fn, ids, merges)
    if not isinstance(got, str):
        fail(f"decode should return a str, got {type(got).__name__}: {short(got)}")
    if got == want:
        return
    hint = ""
    if got.replace(" ", "") == want.replace(" ", "") and got != want:
        hint = " (join the tokens' bytes directly, with no separator)"
    elif "\ufffd" in got and "\ufffd" not in want:
        hint = " (decode the joined bytes once: a character's bytes can be split across tokens)"
    elif "\ufffd" in want and "\ufffd" not in got:
        hint = " (invalid UTF-8 must become the replacement character U+FFFD: errors='replace')"
    fail(f"decode({short(ids, 60)}) should be {short(want, 60)}, got {short(got, 60)}{hint}.")


def check_decode(fn, hidden: bool = False) -> None:
    """decode(ids, merges): join the tokens' bytes, then UTF-8 with replacement characters.

    Edges the exercise defines, all in the hidden test: the empty list; a character whose bytes are
    split across tokens (decode once, not per token); bytes that are not valid UTF-8 at all (U+FFFD,
    never a crash); merges given in any dict order (build the vocabulary in order of the ids);
    ids of merges built from other merges.
    """
    forbid_reference(fn, bpe.decode, bpe.build_vocab, Tokenizer.decode, Tokenizer.decode_bytes)
    if not hidden:
        cases = [(WORKED_IDS, WORKED_MERGES), ([], WORKED_MERGES), ([195, 169], {}), ([0xFF, 104, 105], {})]
        for ids, merges in cases:
            _compare_decode(fn, ids, merges)
        passed(fn, f"all {len(cases)} hand-worked examples are right (including invalid UTF-8)")
        return
    tok = _corpus_tokenizer()
    rng = random.Random(6)
    cases = [tok.encode(t) for t in _random_corpus_slices(seed=7, n=5, length=300) + UNSEEN_TEXTS]
    cases += [[rng.randrange(len(tok.vocab)) for _ in range(rng.randrange(1, 40))] for _ in range(20)]
    cases += [list("é".encode())[:1], [0xF0, 0x9F, 0x98], [0xE2, 0x82, 0xAC]]
    merges = _shuffled(tok.merges, seed=9)
    for ids in cases:
        _compare_decode(fn, ids, merges)
    euro = list("€".encode())  # 3 bytes: e2 82 ac
    split_merges = {(euro[0], euro[1]): 256, (256, euro[2]): 257}
    edges = {
        "empty list": ([], merges),
        "a character split across tokens": ([256, euro[2], 104], split_merges),
        "invalid UTF-8 only": ([0xFF, 0xFE, 0x80], {}),
        "merges listed from the highest id down": ([257, 257], dict(reversed(list(split_merges.items())))),
    }
    for name, (ids, edge_merges) in edges.items():
        with edge(name):
            _compare_decode(fn, ids, edge_merges)
    cases += [ids for ids, _ in edges.values()]
    passed(fn, f"all {len(cases)} id sequences (real text and random, invalid UTF-8) match the reference")
