"""The preference data (llm_course.preferences): the ground truth by hand, seeded pairs, collation."""

import pytest
import torch

from llm_course import preferences as P
from llm_course.sft import END
from tests.alignment_setup import chat_tokenizer, tiny_model


def test_ground_truth_score_by_hand():
    assert P.ground_truth_score("A list of string objects.") == 3
    assert P.ground_truth_score("object object object") == 1 - 2 * 2  # two repeats, penalty 2 each
    assert P.ground_truth_score("Object, object; LIST") == 2 - 2  # case-insensitive words
    assert P.ground_truth_score("nothing here") == 0
    assert P.ground_truth_score("value value", repeat_penalty=0.5) == 0.5


def test_corpus_sentences_and_topics():
    text = "The list is mutable.  Use x = [1] here. A tuple is not.\nShort. The list holds an object and a tuple."
    assert P.corpus_sentences(text, min_words=3, max_words=10) == [
        "The list is mutable.", "A tuple is not.", "The list holds an object and a tuple."]  # fmt: skip
    ex = P.topic_examples(["The list holds a tuple."], ["list", "tuple", "dict"])
    assert [(e.instruction, e.response) for e in ex] == [
        ("Write about: list", "The list holds a tuple."), ("Write about: tuple", "The list holds a tuple.")]  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer("Write about: list. A list of string objects. The object is a value. ")


def test_collate_responses_masks_the_response_and_pads_right(tok):
    tokens, mask, lengths = P.collate_responses(["Write about: list"] * 2, ["a list", "a list of string objects"], tok)
    for b, response in enumerate(["a list", "a list of string objects"]):
        ids, n_prompt = P.encode_response("Write about: list", response, tok)
        assert lengths[b] == len(ids) and tokens[b, : len(ids)].tolist() == ids
        assert mask[b].tolist() == [False] * n_prompt + [True] * (len(ids) - n_prompt) + [False] * (tokens.shape[1] - len(ids))
        assert ids[-1] == tok.special_tokens[END]


def test_decode_responses_stops_at_the_end_token(tok):
    end = tok.special_tokens[END]
    ids = tok.encode(" a list") + [end] + tok.encode(" junk")
    assert P.decode_responses(torch.tensor([ids]), tok) == ["a list"]


def test_make_preferences_is_seeded_and_ordered(tok):
    model = tiny_model(tok.n_vocab)
    instructions = ["Write about: list"] * 12
    a = P.make_preferences(model, tok, instructions, seed=3, max_new_tokens=8)
    assert len(a) > 0 and a == P.make_preferences(model, tok, instructions, seed=3, max_new_tokens=8)
    for p in a:
        assert p.chosen_score > p.rejected_score
        assert p.chosen_score == P.ground_truth_score(p.chosen) and p.rejected_score == P.ground_truth_score(p.rejected)
    train, held = P.split_pairs(a * 5, held_out=0.2, seed=0)
    assert len(held) == len(a * 5) // 5 and len(train) + len(held) == len(a * 5)
    with pytest.raises(ValueError, match="at least one"):
        P.make_preferences(model, tok, [])
    with pytest.raises(ValueError, match="same number of tokens"):
        P.prompt_ids(["Write about: list", "Write about: a list of string objects"], tok)
