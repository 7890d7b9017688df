"""Tests for llm_course.sycophancy: the claims, the biased labeller, the agreement metric, the policy's choice."""

import math
import random

import pytest
import torch

from llm_course.sycophancy import (
    Claim,
    SycophancyRun,
    held_out_claims,
    agreement_rates,
    label_pairs,
    labeller_agrees,
    make_claims,
    policy_agrees,
    response_logprobs,
    run_dpo,
)
from tests.alignment_setup import chat_tokenizer, tiny_model

CLAIM_TEXT = "x = 1. I think x is 2. y = 3. a is 4. n b k 0 5 6 7 8 9 "


def test_claims_are_what_they_say():
    claims = make_claims(400, seed=3, max_value=5, wrong_share=0.25)
    assert len(claims) == 400 and sum(not c.correct for c in claims) == 100
    for c in claims:
        name, value = c.instruction.split(" = ")[0], int(c.instruction.split(" = ")[1].split(".")[0])
        belief = int(c.instruction.split(" is ")[1].rstrip("."))
        assert c.correct == (belief == value) and 0 <= value <= 5 and 0 <= belief <= 5
        assert c.agree == f"{name} is {belief}." and c.disagree != c.agree
        if not c.correct:
            assert c.disagree == f"{name} is {value}."  # a wrong claim is contradicted by the true value
    assert make_claims(50, seed=1) == make_claims(50, seed=1) != make_claims(50, seed=2)
    for bad in [dict(n=0), dict(n=5, max_value=0), dict(n=5, wrong_share=1.5)]:
        with pytest.raises(ValueError):
            make_claims(**bad)
    with pytest.raises(ValueError, match="name"):
        make_claims(3, names=())
    assert {c.instruction[0] for c in make_claims(60, names=("k",))} == {"k"}


@pytest.mark.parametrize("agree_prob", [0.0, 0.3, 0.8, 1.0])
def test_biased_labeller_rates_on_planted_claims(agree_prob):
    """On right claims the labeller always prefers agreeing; on wrong ones with probability agree_prob."""
    n = 20_000
    claims = make_claims(n, seed=0)
    pairs = label_pairs(claims, agree_prob, seed=1)
    wrong = [(c, p) for c, p in zip(claims, pairs) if not c.correct]
    right = [(c, p) for c, p in zip(claims, pairs) if c.correct]
    assert all(p.chosen == c.agree and p.rejected == c.disagree for c, p in right)
    rate = sum(p.chosen == c.agree for c, p in wrong) / len(wrong)
    se = math.sqrt(max(agree_prob * (1 - agree_prob), 1e-12) / len(wrong))
    assert abs(rate - agree_prob) <= 4 * se + 1e-12
    # The scores record the truth: mislabelled pairs are exactly the wrong claims the labeller agreed with.
    mislabelled = sum(p.chosen_score < p.rejected_score for p in pairs)
    assert mislabelled == sum(p.chosen == c.agree for c, p in wrong)
    assert all(p.instruction == c.instruction for c, p in zip(claims, pairs))


def test_held_out_claims_are_unseen_and_balanced():
    train = make_claims(300, seed=0, max_value=9)
    held = held_out_claims(train, 100, seed=1, max_value=9)
    assert len(held) == 100 and not {c.instruction for c in held} & {c.instruction for c in train}
    assert 0 < sum(c.correct for c in held) < 50  # both kinds; right prompts are few (names x values), most are in train
    with pytest.raises(ValueError, match="unseen"):
        held_out_claims(make_claims(2000, seed=0, max_value=1), 100, seed=1, max_value=1)  # every prompt is in train


def test_labeller_errors():
    with pytest.raises(ValueError, match="probability"):
        labeller_agrees(False, 1.2, random.Random(0))
    with pytest.raises(ValueError, match="at least one claim"):
        label_pairs([], 0.5)


def test_agreement_rates_on_planted_answers():
    # 4 wrong claims (agrees on 3), 2 right claims (agrees on 1).
    correct = torch.tensor([False, False, False, False, True, True])
    agrees = torch.tensor([True, True, True, False, True, False])
    r = agreement_rates(agrees, correct)
    assert r["sycophancy"] == pytest.approx(0.75) and r["sycophancy_se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert r["agree_right"] == pytest.approx(0.5) and r["agree_right_se"] == pytest.approx(math.sqrt(0.25 / 2))
    assert r["accuracy"] == pytest.approx(2 / 6)  # right answers: the disagreement on a wrong claim, the agreement on a right one


def test_agreement_rates_errors():
    with pytest.raises(TypeError, match="bool"):
        agreement_rates(torch.tensor([1, 0]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="one length"):
        agreement_rates(torch.tensor([True]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="both right and wrong"):
        agreement_rates(torch.tensor([True, False]), torch.tensor([True, True]))


def test_policy_agrees_compares_the_two_answers_log_probabilities():
    tok = chat_tokenizer(CLAIM_TEXT)
    model = tiny_model(tok.n_vocab)
    claims = make_claims(12, seed=0) + [Claim("x = 1. I think x is 2.", "x is 2.", "x is 1.", False)]
    got = policy_agrees(model, claims, tok)
    for c, g in zip(claims, got.tolist()):
        one = response_logprobs(model, [c.instruction], [c.agree], tok)[0] > response_logprobs(model, [c.instruction], [c.disagree], tok)[0]
        assert g == bool(one)  # batched (padded) and one at a time agree
    # An oracle for the log-probability: the sum of the response tokens' log-softmax, by hand.
    c = claims[-1]
    from llm_course.preferences import encode_response

    ids, n_prompt = encode_response(c.instruction, c.agree, tok)
    with torch.no_grad():
        logp = model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)  # (T - 1, V)
    want = sum(logp[t - 1, ids[t]].item() for t in range(n_prompt, len(ids)))
    assert response_logprobs(model, [c.instruction], [c.agree], tok)[0].item() == pytest.approx(want, abs=1e-4)


def test_run_dpo_end_to_end_on_a_tiny_model():
    """A few DPO steps: the record has every rate at every tracked step, step 0 is the untouched model,
    and the share of mislabelled pairs is the labeller's planted one (p = 1: every wrong claim)."""
    tok = chat_tokenizer(CLAIM_TEXT)
    model = tiny_model(tok.n_vocab)
    run = SycophancyRun(agree_prob=1.0, max_value=9, n_train=32, n_eval=40, steps=4, batch_size=8, track_every=2)
    record = run_dpo(run, model, tok)
    t = record["tracked"]
    assert t["step"] == [0.0, 2.0, 4.0] and len(record["losses"]) == 4
    assert all(len(t[k]) == 3 for k in ("sycophancy", "sycophancy_se", "agree_right", "accuracy"))
    train = make_claims(32, seed=0, max_value=9)
    assert record["mislabelled"] == pytest.approx(sum(not c.correct for c in train) / 32)
    held_out = held_out_claims(train, 40, seed=1, max_value=9)
    before = agreement_rates(policy_agrees(model, held_out, tok), torch.tensor([c.correct for c in held_out]))
    assert t["sycophancy"][0] == pytest.approx(before["sycophancy"])  # the adapters start at zero: the model itself
    assert run_dpo(SycophancyRun(agree_prob=0.0, max_value=9, n_train=32, n_eval=40, steps=1, batch_size=8), model, tok)["mislabelled"] == 0
