"""Reward model (llm_course.reward_model): the Bradley–Terry loss by hand and against -logsigmoid, a tiny training run."""

import math

import pytest
import torch
from torch.nn import functional as F

from llm_course import reward_model as rmod
from llm_course.preferences import Preference, collate_responses
from tests.alignment_setup import chat_tokenizer, tiny_model


def test_pairwise_loss_by_hand():
    # -log sigmoid(2) = log(1 + e^-2); -log sigmoid(-1) = log(1 + e); -log sigmoid(0) = log 2.
    got = rmod.pairwise_loss(torch.tensor([2.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 3.0]))
    want = (math.log(1 + math.exp(-2)) + math.log(1 + math.e) + math.log(2)) / 3
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_pairwise_loss_equals_minus_logsigmoid_and_the_probability_form():
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    want = -F.logsigmoid(rc - rr).mean()
    torch.testing.assert_close(rmod.pairwise_loss(rc, rr).double(), want, rtol=1e-6, atol=1e-7)
    # The Bradley–Terry likelihood written with probabilities: P(c > r) = e^rc / (e^rc + e^rr).
    p = torch.exp(rc) / (torch.exp(rc) + torch.exp(rr))
    torch.testing.assert_close(rmod.pairwise_loss(rc, rr).double(), -torch.log(p).mean(), rtol=1e-6, atol=1e-7)


def test_pairwise_loss_is_stable_and_shift_invariant():
    assert rmod.pairwise_loss(torch.tensor([0.0]), torch.tensor([1000.0])).item() == pytest.approx(1000.0)
    assert rmod.pairwise_loss(torch.tensor([1000.0]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-12)
    rc, rr = torch.tensor([0.3, -1.2]), torch.tensor([0.5, 0.1])
    torch.testing.assert_close(rmod.pairwise_loss(rc + 7, rr + 7), rmod.pairwise_loss(rc, rr))


def test_pairwise_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        rmod.pairwise_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="at least one pair"):
        rmod.pairwise_loss(torch.zeros(0), torch.zeros(0))


def test_preference_accuracy_counts_ties_half():
    assert rmod.preference_accuracy(torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 1.0, 2.0, 1.0])) == 0.625


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def test_reward_model_reads_the_last_real_token(tok):
    rm = rmod.RewardModel(tiny_model(tok.n_vocab))
    torch.nn.init.normal_(rm.head.weight)
    tokens, _, lengths = collate_responses(["Write about: list"] * 2, ["good", "a list of string objects"], tok)
    both = rm(tokens, lengths)
    for i in range(2):  # each row alone, without padding, gives the same reward
        alone = rm(tokens[i : i + 1, : lengths[i]], lengths[i : i + 1])
        torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lengths"):
        rm(tokens, lengths + 100)


def test_reward_model_learns_a_separable_preference(tok):
    torch.manual_seed(0)
    pairs = [Preference("Write about: list", "good", "bad", 1.0, 0.0)] * 8
    rm = rmod.RewardModel(tiny_model(tok.n_vocab))
    assert rmod.evaluate_reward_model(rm, pairs[:1], tok) == 0.5  # the zero head ties everything
    result = rmod.train_reward_model(rm, pairs, tok, steps=30, batch_size=8, lr=3e-3)
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert result.losses[-1] < 0.1
    assert rmod.evaluate_reward_model(rm, pairs, tok) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        rmod.train_reward_model(rm, [], tok)


def test_pairwise_objective_is_the_loss_and_accuracy_of_the_batch(tok):
    rm = rmod.RewardModel(tiny_model(tok.n_vocab))
    torch.nn.init.normal_(rm.head.weight)
    pairs = [Preference("Write about: list", "a list of string objects", "bad", 2.0, 0.0),
             Preference("Write about: list", "good", "the good answer is bad", 1.0, 0.0)]  # fmt: skip
    tokens, lengths = rmod.collate_pair_rewards(pairs, tok)
    loss, metrics = rmod.pairwise_objective(rm, (tokens, lengths))
    rewards = torch.stack([rm(*rmod.collate_pair_rewards([p], tok)) for p in pairs])  # (2 pairs, [chosen, rejected])
    torch.testing.assert_close(loss, rmod.pairwise_loss(rewards[:, 0], rewards[:, 1]), rtol=1e-5, atol=1e-6)
    assert metrics["accuracy"].item() == rmod.preference_accuracy(rewards[:, 0], rewards[:, 1])
