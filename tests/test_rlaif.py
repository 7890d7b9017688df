"""AI feedback (llm_course.rlaif): judges on planted pairs, both orders, agreement against a plain loop, relabelling."""

import math
import random

import pytest
import torch

from llm_course import rlaif
from llm_course.preferences import Preference
from llm_course.sft import add_chat_tokens
from llm_course.tokenizer import Tokenizer
from tests.alignment_setup import tiny_model

TERMS = rlaif.index_terms(["lists", "attribute-access", "class", "strings"])


def pair(chosen, rejected, cs=1.0, rs=0.0, instruction="Write about: list"):
    return Preference(instruction, chosen, rejected, cs, rs)


def test_index_terms_and_the_principles_by_hand():
    assert TERMS == {"lists", "list", "attribute", "access", "class", "strings", "string"}  # "class" keeps its "s"
    assert rlaif.distinct_terms("A list of lists, a list of strings.", TERMS) == 3  # list, lists, strings
    assert rlaif.repeated_words("The value value value of the the item") == 2  # "the" is too short to count
    assert rlaif.repeated_words("value", min_len=4) == 0


def test_constitution_judge_on_planted_cases():
    judge = rlaif.ConstitutionJudge(rlaif.constitution(TERMS))
    first = ["A list of class attribute strings.", "It is.", "list list list", "A class."]
    second = ["It is.", "A list of class attribute strings.", "A list.", "A list."]
    # totals: 4 - 0, 0, 1 - 2 repeats = -1, 1 vs 1
    want = torch.sigmoid(torch.tensor([4.0, -4.0, -1 - 1.0, 0.0]))
    torch.testing.assert_close(judge(["x"] * 4, first, second), want)
    hot = rlaif.ConstitutionJudge(rlaif.constitution(TERMS), temperature=0.5)
    assert hot(["x"], ["A list."], ["It is."]).item() == pytest.approx(1 / (1 + math.exp(-2)))
    weighted = rlaif.ConstitutionJudge([rlaif.Principle("short", lambda r: -len(r.split()), weight=3.0)])
    assert weighted.total("one two three") == -9.0


def test_a_content_judge_has_the_same_verdict_in_both_orders():
    judge = rlaif.ConstitutionJudge(rlaif.constitution(TERMS))
    pairs = [pair("A list of strings.", "It is."), pair("It is.", "A class of lists."), pair("A list.", "A class.")]
    p_first, p_second = rlaif.judge_both_orders(judge, pairs)
    torch.testing.assert_close(p_first, p_second)
    a = rlaif.agreement(p_first, p_second)
    # right, wrong, tie: the tie is left out of the accuracy and of the first-position share
    assert (a.accuracy, a.decided, a.order_disagreement, a.first_position) == (0.5, pytest.approx(2 / 3), 0.0, 0.5)
    assert (a.accuracy_first, a.accuracy_second) == (pytest.approx(1.5 / 3), pytest.approx(1.5 / 3))


def test_a_judge_that_always_picks_the_first_position():
    pairs = [pair(f"good {i}", f"bad {i}") for i in range(5)]
    seen = []

    def first_judge(instructions, first, second):
        seen.append(list(first))
        return torch.full((len(first),), 0.8)

    p_first, p_second = rlaif.judge_both_orders(first_judge, pairs)
    assert seen == [[p.chosen for p in pairs], [p.rejected for p in pairs]]  # chosen first, then second
    torch.testing.assert_close(p_first, torch.full((5,), 0.8))
    torch.testing.assert_close(p_second, torch.full((5,), 0.2))
    torch.testing.assert_close(rlaif.combine_orders(p_first, p_second), torch.full((5,), 0.5))
    a = rlaif.agreement(p_first, p_second)
    assert a.accuracy_first == 1.0 and a.accuracy_second == 0.0  # one order alone looks perfect, the other hopeless
    assert a.order_disagreement == 1.0 and a.first_position == 1.0
    assert a.decided == 0.0 and math.isnan(a.accuracy)  # both orders together: it cannot tell


@pytest.mark.parametrize("bias", [0.5, 3.0])
def test_averaging_both_orders_cancels_a_position_bias(bias):
    # A judge that knows the right answer (its logit is the score difference) plus a pull toward the first slot.
    g = torch.Generator().manual_seed(0)
    gaps = (torch.rand(200, generator=g) * 4 - 2).tolist()
    pairs = [pair(str(d), "0") for d in gaps]  # the "chosen" here is better only where d > 0

    def biased(instructions, first, second):
        d = torch.tensor([float(a) - float(b) for a, b in zip(first, second)])
        return torch.sigmoid(d + bias)

    p_first, p_second = rlaif.judge_both_orders(biased, pairs)
    p = rlaif.combine_orders(p_first, p_second)
    assert torch.equal(p > 0.5, torch.tensor(gaps) > 0)  # the combined verdict is the unbiased one
    a = rlaif.agreement(p_first, p_second)
    assert a.first_position > 0.5 and a.order_disagreement > 0  # each order alone is pulled to the first slot
    want_disagree = sum(abs(d) < bias for d in gaps) / len(gaps)  # orders split exactly where |d| < bias
    assert a.order_disagreement == pytest.approx(want_disagree)


def test_agreement_equals_a_plain_loop():
    rng = random.Random(0)
    p1 = [rng.choice([0.1, 0.5, 0.7, 0.9, rng.random()]) for _ in range(300)]
    p2 = [rng.choice([0.2, 0.5, 0.6, rng.random()]) for _ in range(300)]
    got = rlaif.agreement(torch.tensor(p1), torch.tensor(p2))

    def side(x):
        return 1 if x > 0.5 else -1 if x < 0.5 else 0

    t1, t2 = torch.tensor(p1), torch.tensor(p2)  # the same float32 values the function sees
    combined = [side(x) for x in ((t1 + t2) / 2).tolist()]
    decided = [c for c in combined if c != 0]
    s1, s2 = [side(x) for x in t1.tolist()], [side(x) for x in t2.tolist()]
    assert got.accuracy == pytest.approx(sum(c == 1 for c in decided) / len(decided))
    assert got.decided == pytest.approx(len(decided) / 300)
    assert got.accuracy_first == pytest.approx(sum(1 if s == 1 else 0.5 if s == 0 else 0 for s in s1) / 300)
    assert got.accuracy_second == pytest.approx(sum(1 if s == 1 else 0.5 if s == 0 else 0 for s in s2) / 300)
    assert got.order_disagreement == pytest.approx(sum(a != b for a, b in zip(s1, s2)) / 300)
    n_decided = sum(s != 0 for s in s1) + sum(s != 0 for s in s2)
    assert got.first_position == pytest.approx((sum(s == 1 for s in s1) + sum(s == -1 for s in s2)) / n_decided)


def test_relabel_keeps_swaps_and_drops():
    pairs = [pair("a", "b", 3, 1), pair("c", "d", 2, 0), pair("e", "f", 1, 0)]
    got = rlaif.relabel(pairs, torch.tensor([0.9, 0.1, 0.5]))
    assert got == [pair("a", "b", 3, 1), pair("d", "c", 0, 2)]  # the scores travel with their responses


def test_win_rate_by_hand():
    assert rlaif.win_rate([3, 1, 2], [1, 1, 5]) == pytest.approx((1 + 0.5 + 0) / 3)
    assert rlaif.win_rate(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])) == 1.0


def test_bad_input_gets_a_clear_error():
    pairs = [pair("a", "b")]
    with pytest.raises(ValueError, match="at least one pair"):
        rlaif.judge_both_orders(lambda i, a, b: torch.ones(len(a)), [])
    with pytest.raises(ValueError, match=r"one probability per pair, shape \(1,\)"):
        rlaif.judge_both_orders(lambda i, a, b: torch.ones(2), pairs)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        rlaif.judge_both_orders(lambda i, a, b: torch.full((1,), 2.0), pairs)
    with pytest.raises(ValueError, match="one shape"):
        rlaif.agreement(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="at least one pair"):
        rlaif.agreement(torch.ones(0), torch.ones(0))
    with pytest.raises(ValueError, match="one probability per pair"):
        rlaif.relabel(pairs, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="one length"):
        rlaif.win_rate([1, 2], [1])
    with pytest.raises(ValueError, match="at least one principle"):
        rlaif.ConstitutionJudge([])
    with pytest.raises(ValueError, match="temperature"):
        rlaif.ConstitutionJudge(rlaif.constitution(TERMS), temperature=0)
    with pytest.raises(ValueError, match="one length"):
        rlaif.ConstitutionJudge(rlaif.constitution(TERMS))(["x"], ["a", "b"], ["c"])


@pytest.fixture(scope="module")
def ab_tok():
    tokenizer = Tokenizer.train("Which answer, A or B? A: a list. B: a string. Question: Write about: list. " * 20, 300,
                                special_tokens=["<|endoftext|>"])  # fmt: skip
    add_chat_tokens(tokenizer)
    return tokenizer


def test_lm_judge_reads_the_next_token_of_each_unpadded_prompt(ab_tok):
    model = tiny_model(ab_tok.n_vocab, context_length=128)
    judge = rlaif.LMJudge(model, ab_tok, batch_size=2)
    instructions = ["Write about: list"] * 3
    first, second = ["a list", "a string of a list", "b"], ["a string", "a", "a list of a string list"]
    got = judge(instructions, first, second)  # batches of 2, rows of different lengths, right-padded
    a_id, b_id = ab_tok.encode(" A")[0], ab_tok.encode(" B")[0]
    for k in range(3):
        ids = torch.tensor([ab_tok.encode(judge.prompt(instructions[k], first[k], second[k]), allowed_special="all")])
        with torch.no_grad():
            logits = model(ids)[0, -1]  # (V,): the prompt alone, no padding
        want = 1 / (1 + math.exp(-(logits[a_id] - logits[b_id]).item()))  # softmax over the two options
        assert got[k].item() == pytest.approx(want, abs=1e-5)
    assert not model.training


def test_lm_judge_errors(ab_tok):
    model = tiny_model(ab_tok.n_vocab, context_length=32)
    with pytest.raises(ValueError, match="context of 32"):
        rlaif.LMJudge(model, ab_tok)(["Write about: list"], ["a list " * 20], ["b"])
    bare = Tokenizer.train("xyz xyz", 260, special_tokens=["<|endoftext|>"])
    with pytest.raises(ValueError, match="one token each"):
        rlaif.LMJudge(tiny_model(bare.n_vocab), bare)
