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
