"""The Tokenizer class: tiktoken as the oracle, round trips, special tokens, save/load."""

import json

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_course import bpe
from llm_course.data import default_corpus, stdlib_source_corpus
from llm_course.tokenizer import Tokenizer

EOT = "<|endoftext|>"
UNSEEN = [
    "",
    " ",
    "Hello, world!",
    "naïve café déjà vu — ½ ∑ ∫",
    "大语言模型的分词器 とトークン 토큰화 токенизация",
    "😀🎉👍🏽👨‍👩‍👧 flags 🇫🇷🇯🇵",
    "    four spaces\n\n\n\ttabs\t\t and  double  spaces   \n   ",
    "\n\n\n\n",
    "3.14159 2718281828459045 1,000,000 0xFF 1e-9 -42 ２０２４",
    "I'm sure they'll say it's fine; we've seen 'quotes' and \"double\" ones",
    "\x00\x01 control \x7f chars \u200b zero width",
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(default_corpus(), 5000, special_tokens=[EOT, "<|user|>"])


@pytest.fixture(scope="module")
def oracle(tok):
    return tok.to_tiktoken()


def test_ids_equal_tiktoken_on_the_corpus(tok, oracle):
    text = default_corpus()
    assert tok.encode(text) == oracle.encode_ordinary(text)


def test_ids_equal_tiktoken_on_unseen_python_source(tok, oracle):
    text = stdlib_source_corpus(max_bytes=3_000_000)
    assert len(text) > 2_000_000
    assert tok.encode(text) == oracle.encode_ordinary(text)


@pytest.mark.parametrize("text", UNSEEN)
def test_ids_equal_tiktoken_on_hard_cases(tok, oracle, text):
    assert tok.encode(text) == oracle.encode_ordinary(text)
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_round_trip_and_tiktoken_agree_on_arbitrary_unicode(tok, oracle, text):
    ids = tok.encode(text, disallowed_special=())
    assert tok.decode(ids) == text
    assert ids == oracle.encode(text, disallowed_special=())


def test_cache_does_not_change_results(tok):
    text = default_corpus()[:20_000]
    fresh = Tokenizer(tok.merges)
    first = fresh.encode(text)
    assert fresh._cache  # the cache was used
    assert fresh.encode(text) == first == tok.encode(text)
    tiny_cache = Tokenizer(tok.merges, cache_size=3)
    assert tiny_cache.encode(text) == first and len(tiny_cache._cache) <= 3


def test_special_tokens_follow_tiktoken(tok, oracle):
    text = f"one{EOT}two <|user|> three"
    assert tok.special_tokens == {EOT: 5000, "<|user|>": 5001}
    assert tok.encode(text, allowed_special="all") == oracle.encode(text, allowed_special="all")
    assert tok.encode(text, allowed_special={EOT}, disallowed_special=()) == oracle.encode(
        text, allowed_special={EOT}, disallowed_special=()
    )
    assert tok.encode(text, disallowed_special=()) == oracle.encode(text, disallowed_special=())
    with pytest.raises(ValueError, match="special token '<\\|user\\|>', which is not allowed"):
        tok.encode(text, allowed_special={EOT})
    with pytest.raises(ValueError):
        oracle.encode(text, allowed_special={EOT})
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


def test_special_token_errors():
    tok = Tokenizer.train("some text", 260, special_tokens=[EOT])
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="already taken"):
        tok.add_special_tokens({"<|x|>": 5})
    with pytest.raises(ValueError, match="empty string"):
        tok.add_special_tokens({"": 999})


def test_decode_never_crashes_on_invalid_utf8(tok):
    euro = list("€".encode())
    assert tok.decode(euro[:2]) == "\ufffd"
    assert tok.decode([0xFF, 0xFE]) == "\ufffd\ufffd"
    with pytest.raises(ValueError, match="token id 123456 is not in the vocabulary"):
        tok.decode([1, 123456])


def test_encode_rejects_non_strings(tok):
    with pytest.raises(TypeError, match="encode expects a str, got bytes"):
        tok.encode(b"bytes")


def test_save_and_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "tok.json")
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["format"] == "llm_course-bpe" and len(payload["merges"]) == 4744
    assert payload["tokens"]["256"] == tok.token_str(256)  # readable
    again = Tokenizer.load(path)
    assert again.merges == tok.merges and again.special_tokens == tok.special_tokens
    text = default_corpus()[-5000:] + EOT
    assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        Tokenizer.load(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an llm_course-bpe file"):
        Tokenizer.load(other)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"format": "llm_course-bpe", "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        Tokenizer.load(future)


def test_mergeable_ranks_are_ids(tok):
    ranks = tok.mergeable_ranks()
    assert ranks == bpe.mergeable_ranks(tok.merges)
    assert all(tok.vocab[i] == token for token, i in ranks.items())


def test_chunks_equal_tiktoken_gpt2_pattern():
    # tiktoken's r50k_base (GPT-2) pattern is a faster form of ours; both must cut text identically.
    # (The pattern is a constant in tiktoken's source: no vocabulary file is downloaded.)
    import regex
    from tiktoken_ext.openai_public import r50k_pat_str

    for text in [default_corpus(), stdlib_source_corpus(max_bytes=500_000), *UNSEEN]:
        assert bpe.pretokenize(text) == regex.findall(r50k_pat_str, text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=100))
def test_chunks_equal_tiktoken_gpt2_pattern_on_random_text(text):
    import regex
    from tiktoken_ext.openai_public import r50k_pat_str

    assert bpe.pretokenize(text) == regex.findall(r50k_pat_str, text)


# ----------------------------------------------------------------------------- training with special tokens
def test_training_cuts_the_corpus_at_special_tokens():
    docs = default_corpus().split("\n\n")[:300]
    tok = Tokenizer.train(EOT.join(docs), 600, special_tokens=[EOT])
    learned = [tok.vocab[i] for i in tok.merges.values()]
    assert not [t for t in learned if b"<|" in t or b"|>" in t]
    assert tok.encode(EOT.join(docs[:3]), allowed_special="all").count(tok.special_tokens[EOT]) == 2
    with pytest.raises(TypeError, match="list of strings"):
        Tokenizer.train("text", 300, special_tokens=EOT)


# ----------------------------------------------------------------------------- streaming encoder
CL100K_PATTERN = (  # tiktoken's cl100k_base split, to check the stream's cut rule on a second pattern
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
HARD_STREAM = "we'll  see\n\n  it's 12345 x<|endoftext|> y'\tz!!  \n a.<|endoftext|>\n\n" * 3


def pieces_at(text: str, cuts) -> list[str]:
    cuts = sorted(set(cuts))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("buffer_chars", [1, 7, 1 << 16])
def test_encode_iterable_equals_encode_whatever_the_pieces(tok, buffer_chars):
    text = default_corpus()[:20_000] + HARD_STREAM
    expected = tok.encode(text, allowed_special="all")
    lines = text.splitlines(keepends=True)
    single_chars = list(text[-2_000:])
    assert list(tok.encode_iterable(lines, allowed_special="all", buffer_chars=buffer_chars)) == expected
    assert list(tok.encode_iterable(single_chars, "all", buffer_chars=buffer_chars)) == tok.encode(
        text[-2_000:], allowed_special="all"
    )


@settings(max_examples=150, deadline=None)
@given(
    st.text(alphabet="ab1 '\n\t.!<|>sl", max_size=60),
    st.lists(st.integers(0, 60), max_size=8),
    st.sampled_from([bpe.GPT2_SPLIT_PATTERN, CL100K_PATTERN]),
)
def test_stream_cuts_never_change_the_chunks(text, cuts, pattern):
    """Whatever the pieces and the pattern (GPT-2's or cl100k's), the stream's ids equal encode's."""
    # Merges inside words and inside whitespace and punctuation runs ("\n\n", "  ", "!\n"), so a chunk cut
    # in two gets other ids.
    merges = {(97, 98): 256, (32, 97): 257, (39, 115): 258, (10, 10): 259, (32, 32): 260, (33, 10): 261, (32, 10): 262}
    tok = Tokenizer(merges, {"<|x|>": 263}, pattern=pattern)
    text = text.replace("|", "<|x|>")  # special tokens too, which the cuts must not split
    expected = tok.encode(text, allowed_special="all")
    got = list(tok.encode_iterable(pieces_at(text, [c for c in cuts if c <= len(text)]), "all", buffer_chars=1))
    assert got == expected
    assert list(tok.encode_iterable(list(text), "all", buffer_chars=1)) == expected  # every cut gets tried


def test_encode_iterable_reads_a_file(tok, tmp_path):
    path = tmp_path / "corpus.txt"
    text = default_corpus()[:30_000]
    path.write_text(text, encoding="utf-8")
    with open(path, encoding="utf-8") as f:
        assert list(tok.encode_iterable(f, buffer_chars=4096)) == tok.encode(text)


def test_encode_iterable_errors(tok):
    with pytest.raises(TypeError, match="iterable of strings"):
        list(tok.encode_iterable("one string"))
    with pytest.raises(TypeError, match="expects strings, got a bytes"):
        list(tok.encode_iterable([b"bytes"]))
    with pytest.raises(ValueError, match="buffer_chars"):
        list(tok.encode_iterable(["a"], buffer_chars=0))
    # A disallowed special token split between two pieces is still found.
    with pytest.raises(ValueError, match="not allowed"):
        list(tok.encode_iterable(["a <|endof", "text|> b"], buffer_chars=1))
    spaced = Tokenizer(special_tokens={"<| sp |>": 256})
    with pytest.raises(ValueError, match="contains whitespace"):
        list(spaced.encode_iterable(["a"]))


def test_encode_iterable_memory_is_bounded(tok):
    """tracemalloc's peak while streaming 4x more text stays the same; encode's grows with the text."""
    import itertools
    import tracemalloc

    lines = default_corpus()[:40_000].splitlines(keepends=True)

    def peak(run) -> int:
        fresh = Tokenizer(tok.merges, tok.special_tokens)  # an empty chunk cache for each run
        tracemalloc.start()
        try:
            run(fresh)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def stream(times):
        return lambda t: sum(1 for _ in t.encode_iterable(itertools.chain(*[lines] * times), buffer_chars=4096))

    def whole(times):
        return lambda t: len(t.encode("".join(lines) * times))

    stream_1, stream_4 = peak(stream(1)), peak(stream(4))
    whole_4 = peak(whole(4))
    assert stream_4 < 1.2 * stream_1
    assert stream_4 < whole_4 / 3
