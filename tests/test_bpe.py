"""The BPE algorithm: worked examples, the incremental trainer against the naive one."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_course import bpe
from llm_course.data import default_corpus


def test_pair_counts_count_overlapping_pairs():
    assert bpe.get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert bpe.get_pair_counts([5, 5, 5]) == {(5, 5): 2}
    assert bpe.get_pair_counts([]) == {} and bpe.get_pair_counts([4]) == {}


def test_pair_counts_accumulate_into_given_dict():
    counts = bpe.get_pair_counts([1, 2])
    assert bpe.get_pair_counts([1, 2, 1], counts) is counts
    assert counts == {(1, 2): 2, (2, 1): 1}


def test_merge_is_left_to_right_and_non_overlapping():
    assert bpe.merge([1, 2, 3, 1, 2], (1, 2), 99) == [99, 3, 99]
    assert bpe.merge([5, 5, 5], (5, 5), 9) == [9, 5]
    assert bpe.merge([5, 5, 5, 5], (5, 5), 9) == [9, 9]
    assert bpe.merge([1, 2], (2, 1), 7) == [1, 2]


def test_worked_example_from_the_literature():
    # "aaabdaaabac": aa -> Z, then ab -> Y (it ties with Za and wins as the smaller pair), then ZY -> X.
    merges = bpe.train_bpe("aaabdaaabac", 259)
    assert merges == {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    assert bpe.encode("aaabdaaabac", merges) == [258, 100, 258, 97, 99]
    assert bpe.decode([258, 100, 258, 97, 99], merges) == "aaabdaaabac"


def test_ties_go_to_the_smallest_pair():
    # Chunks "ab", ",", "cd", ...: "ab" and "cd" each occur twice and (97, 98) < (99, 100),
    # whichever comes first in the text.
    assert list(bpe.train_bpe("ab,cd,ab,cd", 257)) == [(97, 98)]
    assert list(bpe.train_bpe("cd,ab,cd,ab", 257)) == [(97, 98)]
    # With spaces the chunks are "ab", " cd", ...: (32, 99) is tied too, and smallest.
    assert list(bpe.train_bpe("ab cd ab cd", 257)) == [(32, 99)]


def test_merges_never_cross_chunks():
    merges = bpe.train_bpe("a b a b a b", 300)
    # chunks are "a", " b", " a", ...: the only pairs are (32, 97) and (32, 98)
    assert set(merges) == {(32, 97), (32, 98)}


def test_training_stops_when_nothing_is_left_to_merge():
    assert len(bpe.train_bpe("ab ab", 1000)) == 2  # "ab", then " ab" = (32, 256)
    assert bpe.train_bpe("", 300) == {}


@pytest.mark.parametrize("bad", [255, 0, -5])
def test_vocab_size_below_256_is_rejected(bad):
    with pytest.raises(ValueError, match="at least 256"):
        bpe.train_bpe("text", bad)


def test_vocab_size_must_be_an_int():
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        bpe.train_bpe("text", 300.0)


def test_incremental_trainer_equals_naive_on_the_corpus():
    text = default_corpus()[:60_000]
    assert bpe.train_bpe(text, 700) == bpe.train_bpe_naive(text, 700)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="aab c\n!1é", max_size=80), st.integers(256, 300))
def test_incremental_trainer_equals_naive_on_random_text(text, vocab_size):
    assert bpe.train_bpe(text, vocab_size) == bpe.train_bpe_naive(text, vocab_size)


def test_every_token_has_distinct_bytes():
    vocab = bpe.build_vocab(bpe.train_bpe(default_corpus(), 5000))
    assert len(set(vocab.values())) == len(vocab) == 5000


def test_build_vocab_rejects_merges_of_unknown_tokens():
    with pytest.raises(ValueError, match="uses a token that no earlier merge created"):
        bpe.build_vocab({(300, 97): 256})


def test_decode_rejects_unknown_ids_and_replaces_invalid_utf8():
    assert bpe.decode([0xFF, 104, 105], {}) == "\ufffdhi"
    with pytest.raises(ValueError, match="token id 999 is not in the vocabulary"):
        bpe.decode([104, 999], {})


def test_pair_ranks_include_every_split_of_a_token():
    merges = {(98, 99): 256, (97, 256): 257, (97, 98): 258}  # bc, a+bc = abc, ab
    ranks = bpe.pair_ranks(bpe.build_vocab(merges))
    assert ranks[(258, 99)] == 257  # ab + c also forms "abc"
    assert ranks[(97, 256)] == 257


# ----------------------------------------------------------------------------- special tokens in training
EOT = "<|endoftext|>"


def documents(n: int) -> list[str]:
    """The first `n` entries of the corpus, as ASCII (see test_training_equals_hugging_face_per_document)."""
    return [doc.encode("ascii", "ignore").decode() for doc in default_corpus().split("\n\n")[:n]]


def learned_tokens(merges) -> list[bytes]:
    vocab = bpe.build_vocab(merges)
    return [vocab[i] for i in sorted(merges.values())]


def test_split_on_special_worked_examples():
    assert bpe.split_on_special("a.<|endoftext|>b", [EOT]) == ["a.", "b"]
    assert bpe.split_on_special(EOT + EOT, [EOT]) == ["", "", ""]
    assert bpe.split_on_special("no specials", []) == ["no specials"]
    # The longest special token is tried first: "<|a|>b" is not cut as "<|a|>" + "b".
    assert bpe.split_on_special("x<|a|>by<|a|>z", ["<|a|>", "<|a|>b"]) == ["x", "y", "z"]
    assert bpe.split_on_special("1+2", ["+"]) == ["1", "2"]  # regex characters are escaped


def test_split_on_special_errors():
    with pytest.raises(TypeError, match="list of strings"):
        bpe.split_on_special("text", EOT)
    with pytest.raises(ValueError, match="non-empty strings"):
        bpe.split_on_special("text", [""])


def test_no_merge_crosses_the_document_separator():
    docs = documents(300)
    text = EOT.join(docs)
    inside = "\x00".join(docs).encode()  # every learned token must occur inside one document
    tokens = learned_tokens(bpe.train_bpe(text, 600, special_tokens=[EOT]))
    assert [t for t in tokens if t not in inside] == []
    assert not [t for t in tokens if b"<|" in t or b"|>" in t]
    # Without the split the same corpus learns tokens across the separator: the checks above can fail.
    unsplit = learned_tokens(bpe.train_bpe(text, 600))
    assert {b"<|", b"|>", b".<|"} <= {t for t in unsplit if t not in inside}


def test_training_equals_hugging_face_per_document():
    """Oracle: Hugging Face `tokenizers` trained on the documents as separate sequences learns the same
    merges, in the same order, as ours on the documents joined by <|endoftext|>.

    The tokenizers are made comparable: the same GPT-2 split, and ASCII text without the byte-to-unicode
    remapping, so Hugging Face's alphabet ids sort like byte values and ties go to the same pair."""
    tokenizers = pytest.importorskip("tokenizers")
    docs = documents(800)
    n_merges = 300
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex(bpe.GPT2_SPLIT_PATTERN), behavior="isolated"
    )
    alphabet = set("".join(docs))
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=len(alphabet) + 1 + n_merges, special_tokens=[EOT], show_progress=False, min_frequency=0
    )
    hf.train_from_iterator(docs, trainer)
    hf_tokens = [(a + b).encode() for a, b in json.loads(hf.to_str())["model"]["merges"]]
    ours = learned_tokens(bpe.train_bpe(EOT.join(docs), 256 + n_merges, special_tokens=[EOT]))
    assert len(hf_tokens) == n_merges
    assert ours == hf_tokens


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="ab <|>\n.", max_size=30), max_size=5), st.integers(256, 290))
def test_incremental_trainer_equals_naive_with_special_tokens(docs, vocab_size):
    text = "<|x|>".join(docs)
    merges = bpe.train_bpe(text, vocab_size, special_tokens=["<|x|>"])
    assert merges == bpe.train_bpe_naive(text, vocab_size, special_tokens=["<|x|>"])
    # Cutting at the special token is the same as training on the documents' chunks counted together.
    assert merges == bpe.train_bpe("\x00".join(docs), vocab_size, special_tokens=["\x00"])
