"""DPO (llm_course.dpo): the loss by hand and by the paper's formula, masked log-probs, a tiny run with a LoRA reference."""

import math

import pytest
import torch

from llm_course import dpo
from llm_course.lora import apply_lora, lora_disabled
from llm_course.preferences import Preference
from tests.alignment_setup import chat_tokenizer, tiny_model


def test_dpo_loss_by_hand():
    # pair 1: margin 0.5 * ((-3 - -4) - (-5 - -4)) = 1 -> log(1 + e^-1).
    # pair 2: the policy ties the two (-2, -2) but the reference preferred the chosen one (-1 vs -3):
    # margin 0.5 * ((-2 - -1) - (-2 - -3)) = -1 -> log(1 + e).
    got = dpo.dpo_loss(torch.tensor([-3.0, -2.0]), torch.tensor([-5.0, -2.0]), torch.tensor([-4.0, -1.0]),
                       torch.tensor([-4.0, -3.0]), beta=0.5)  # fmt: skip
    assert got.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2, rel=1e-6)


def test_dpo_loss_equals_the_papers_formula_in_float64():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-10 * torch.rand(20, generator=g, dtype=torch.float64) for _ in range(4))
    for beta in (0.05, 0.1, 1.0):
        # Rafailov et al. (2023), eq. 7: -log sigma(beta log pi(yw)/pi_ref(yw) - beta log pi(yl)/pi_ref(yl)).
        z = beta * torch.log(torch.exp(pc) / torch.exp(rc)) - beta * torch.log(torch.exp(pr) / torch.exp(rr))
        want = -torch.log(1 / (1 + torch.exp(-z))).mean()
        torch.testing.assert_close(dpo.dpo_loss(pc, pr, rc, rr, beta).double(), want, rtol=1e-5, atol=1e-7)


def test_dpo_loss_is_log2_when_policy_equals_reference_and_gradient_sign():
    pc = torch.tensor([-3.0, -7.0], requires_grad=True)
    pr = torch.tensor([-4.0, -1.0], requires_grad=True)
    loss = dpo.dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # raise the chosen, lower the rejected


def test_implicit_rewards():
    torch.testing.assert_close(dpo.implicit_rewards(torch.tensor([-2.0, -6.0]), torch.tensor([-4.0, -5.0]), 0.5),
                               torch.tensor([1.0, -0.5]))  # fmt: skip


def test_dpo_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        dpo.dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        dpo.dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=0.0)
    with pytest.raises(ValueError, match="same shape"):
        dpo.sequence_logprobs(torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 2))


def test_sequence_logprobs_respects_mask_and_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    want = [sum(torch.log_softmax(logits[b, t].double(), -1)[tokens[b, t]].item() for t in range(5) if mask[b, t]) for b in range(2)]
    torch.testing.assert_close(dpo.sequence_logprobs(logits, tokens, mask).double(), torch.tensor(want, dtype=torch.float64))
    # What sits at masked positions (prompt, padding) changes nothing.
    logits2, tokens2 = logits.clone(), tokens.clone()
    logits2[~mask] = 100 * torch.randn_like(logits2[~mask])
    tokens2[~mask] = 0
    torch.testing.assert_close(dpo.sequence_logprobs(logits2, tokens2, mask), dpo.sequence_logprobs(logits, tokens, mask))


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def test_lora_disabled_reference_equals_the_sft_model(tok):
    sft_model = tiny_model(tok.n_vocab)
    policy = apply_lora(tiny_model(tok.n_vocab), ("w_q", "w_v", "lm_head"), r=4, alpha=8)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a policy that has moved away from its base
    pairs = [Preference("Write about: list", "a list of string objects", "bad", 2.0, 0.0)] * 2
    tokens, mask = dpo.collate_pairs(pairs, tok)
    with torch.no_grad():
        want = dpo.pair_logprobs(sft_model, tokens, mask)
        with lora_disabled(policy):
            ref = dpo.pair_logprobs(policy, tokens, mask)
        moved = dpo.pair_logprobs(policy, tokens, mask)
    torch.testing.assert_close(ref, want)
    assert not torch.allclose(moved[0], want[0])


def test_dpo_train_increases_the_margin(tok):
    torch.manual_seed(0)
    pairs = [Preference("Write about: list", "a list of string objects", "the good answer is bad", 2.0, 0.0)] * 4
    policy = apply_lora(tiny_model(tok.n_vocab), ("w_q", "w_v", "lm_head"), r=4, alpha=8)
    calls = []
    result = dpo.dpo_train(policy, pairs, tok, beta=0.1, steps=20, batch_size=4, lr=1e-2,
                           track_fn=lambda p: calls.append(1) or {"x": 1.0}, track_every=10)  # fmt: skip
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-5)  # B = 0: the policy is the reference
    assert result.margins[0] == pytest.approx(0.0, abs=1e-5)
    assert result.margins[-1] > 0.5 and result.losses[-1] < 0.5 and result.accuracies[-1] == 1.0
    assert result.tracked["step"] == [0.0, 10.0, 20.0] and len(calls) == 3
    with pytest.raises(ValueError, match="LoRA"):
        dpo.dpo_train(tiny_model(tok.n_vocab), pairs, tok, steps=1)
