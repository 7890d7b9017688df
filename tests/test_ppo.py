"""PPO (llm_course.ppo): GAE and the clipped loss by hand and by independent formulations, masks, a tiny run,
the update phase on the Trainer against a plain loop."""

import copy
import math

import pytest
import torch

from llm_course import ppo
from llm_course.lora import apply_lora
from llm_course.optim import warmup_cosine
from tests.alignment_setup import tiny_model


def test_token_logprobs_gathers_the_right_entries():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    tokens = torch.tensor([[0, 4, 2], [3, 3, 1]])
    got = ppo.token_logprobs(logits, tokens)
    for b in range(2):
        for t in range(3):
            want = logits[b, t, tokens[b, t]] - torch.logsumexp(logits[b, t], -1)
            assert got[b, t].item() == pytest.approx(want.item(), abs=1e-6)
    with pytest.raises(ValueError, match="disagree"):
        ppo.token_logprobs(logits, tokens[:, :2])


def test_masked_mean_and_whiten_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, -50.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert ppo.masked_mean(x, mask).item() == pytest.approx(2.0)
    torch.testing.assert_close(ppo.masked_mean(x, mask, dim=1), torch.tensor([1.5, 3.0]))
    w = ppo.whiten(x, mask)
    assert w[mask].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w[mask].var(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert (w[~mask] == 0).all()
    # values 1, 2, 3: mean 2, population std sqrt(2/3)
    torch.testing.assert_close(w[mask], torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3), rtol=1e-5, atol=1e-5)


def test_kl_penalized_rewards_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    got = ppo.kl_penalized_rewards(torch.tensor([10.0, 20.0]), logprobs, ref, mask, beta=0.5)
    # row 0: -0.5 * (0.5, 0, -1) + (0, 0, 10); row 1: -0.5 * (1) + 20 at its only token, padding 0.
    torch.testing.assert_close(got, torch.tensor([[-0.25, 0.0, 10.5], [19.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="at least one token"):
        ppo.kl_penalized_rewards(torch.zeros(2), logprobs, ref, torch.zeros(2, 3, dtype=torch.bool), 0.1)


def test_gae_by_hand():
    adv, ret = ppo.gae(torch.tensor([[0.0, 0, 1, 9]]), torch.tensor([[0.5, 0.5, 0.5, 7]]),
                       torch.tensor([[True, True, True, False]]), gamma=1.0, lam=0.5)  # fmt: skip
    torch.testing.assert_close(adv, torch.tensor([[0.125, 0.25, 0.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.625, 0.75, 1.0, 0.0]]))
    # gamma = 0.5, lam = 1: deltas (1 + 0.5*2 - 1, 0 + 0 - 2) = (1, -2); A = (1 + 0.5*(-2), -2) = (0, -2).
    adv, ret = ppo.gae(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 2.0]]), torch.ones(1, 2), gamma=0.5, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0, -2.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 0.0]]))


def _gae_explicit_sum(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V = 0 past the last valid token."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = int(mask[b].sum())
        v = [float(values[b, t]) for t in range(n)] + [0.0]
        delta = [float(rewards[b, t]) + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[b, t] = sum((gamma * lam) ** l * delta[t + l] for l in range(n - t))
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_the_explicit_discounted_sum(gamma, lam):
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(4, 7, generator=g, dtype=torch.float64)
    values = torch.randn(4, 7, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 1, 5])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    want = _gae_explicit_sum(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, want)
    torch.testing.assert_close(ret, (want + values) * mask)
    # What sits in the padding does not leak into the valid positions.
    rewards2, values2 = rewards.clone(), values.clone()
    rewards2[~mask], values2[~mask] = 1e3, -1e3
    torch.testing.assert_close(ppo.gae(rewards2, values2, mask, gamma, lam)[0], adv)


def test_gae_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes must match"):
        ppo.gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="gamma and lam"):
        ppo.gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), gamma=1.5)


def test_ppo_clip_loss_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.5]])
    adv = torch.tensor([[1.0, -1.0, 2.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])
    got = ppo.ppo_clip_loss(ratio.log(), torch.zeros(1, 4), adv, mask, clip=0.2)
    # min(1.5, 1.2) = 1.2; min(-0.5, -0.8) = -0.8; min(2.2, 2.2) = 2.2; the padded token is ignored.
    assert got.item() == pytest.approx(-(1.2 - 0.8 + 2.2) / 3, rel=1e-6)


def _ppo_loss_loops(logprobs, old, adv, mask, eps):
    """L^CLIP of Schulman et al. (2017), eq. 7, token by token: E_t[min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t)]."""
    total, count = 0.0, 0
    for b in range(logprobs.shape[0]):
        for t in range(logprobs.shape[1]):
            if mask[b, t]:
                r = math.exp(float(logprobs[b, t]) - float(old[b, t]))
                a = float(adv[b, t])
                total += min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
                count += 1
    return -total / count


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.3])
def test_ppo_clip_loss_equals_the_papers_expression(eps):
    g = torch.Generator().manual_seed(2)
    old = -3 * torch.rand(3, 6, generator=g, dtype=torch.float64)
    logprobs = old + 0.5 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 6, generator=g) < 0.7
    mask[:, 0] = True
    got = ppo.ppo_clip_loss(logprobs, old, adv, mask, eps)
    assert got.item() == pytest.approx(_ppo_loss_loops(logprobs, old, adv, mask, eps), rel=1e-9)


def test_ppo_clip_loss_gradient_stops_beyond_the_clip():
    logprobs = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    ppo.ppo_clip_loss(logprobs, torch.zeros(1, 4), adv, torch.ones(1, 4), clip=0.2).backward()
    # ratio above 1 + eps with A > 0, and below 1 - eps with A < 0: clipped, no gradient.
    assert logprobs.grad[0, 0] == 0 and logprobs.grad[0, 3] == 0
    assert logprobs.grad[0, 1] != 0 and logprobs.grad[0, 2] != 0
    with pytest.raises(ValueError, match="clip"):
        ppo.ppo_clip_loss(logprobs, logprobs, adv, torch.ones(1, 4), clip=0.0)


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 3.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 5.0]])
    mask = torch.tensor([[True, True, False]])
    # token 0: V = 1 -> clipped 0.2; max((1-2)^2, (0.2-2)^2) = 3.24. token 1: max(1, 1) = 1.
    assert ppo.value_loss(values, old, returns, mask, clip=0.2).item() == pytest.approx(0.5 * (3.24 + 1) / 2)


def test_entropy_matches_torch_distributions():
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ppo.entropy(logits), torch.distributions.Categorical(logits=logits).entropy())
    assert ppo.entropy(torch.zeros(1, 1, 8)).item() == pytest.approx(math.log(8))


def test_response_mask_keeps_the_first_end_token():
    got = ppo.response_mask(torch.tensor([[5, 6, 0, 0], [0, 0, 0, 0], [5, 5, 5, 5]]), eos_id=0)
    assert got.tolist() == [[True, True, True, False], [True, False, False, False], [True, True, True, True]]


def _tiny():
    return tiny_model(vocab=12, context_length=32)


def test_rollout_at_start_has_zero_kl_and_consistent_shapes():
    policy = apply_lora(_tiny(), ("w_q", "w_v", "lm_head"), r=4, alpha=8)
    head = ppo.ValueHead(32)
    prompts = torch.randint(1, 12, (5, 3), generator=torch.Generator().manual_seed(0))
    ro = ppo.rollout(policy, prompts, lambda t, n: n.float(), eos_id=0, max_new_tokens=6,
                     generator=torch.Generator().manual_seed(0), value_head=head)  # fmt: skip
    n = ro.tokens.shape[1] - 3
    assert ro.mask.shape == ro.logprobs.shape == ro.ref_logprobs.shape == ro.values.shape == (5, n)
    torch.testing.assert_close(ro.logprobs, ro.ref_logprobs)  # LoRA's B starts at 0: the policy is the reference
    assert (ro.kl() == 0).all() and (ro.values == 0).all()
    torch.testing.assert_close(ro.scores, 3 + ro.mask.sum(-1).float())  # lengths passed to score_fn
    with torch.no_grad():  # the log-probs are those of the full model on the sampled tokens
        logits = policy(ro.tokens)[:, 2:-1]
    torch.testing.assert_close(ro.logprobs, ppo.token_logprobs(logits, ro.tokens[:, 3:]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="LoRA"):
        ppo.rollout(_tiny(), prompts, lambda t, n: n.float(), eos_id=0)


def test_ppo_improves_the_reward_on_a_trivial_task():
    torch.manual_seed(0)
    policy = apply_lora(_tiny(), ("w_q", "w_v", "w1", "w2", "lm_head"), r=4, alpha=8)
    head = ppo.ValueHead(32)
    prompts = torch.randint(1, 12, (16, 3), generator=torch.Generator().manual_seed(0))
    target = 7

    def score(tokens, lengths):  # the fraction of response tokens that are `target`
        return (tokens[:, 3:] == target).float().mean(-1)

    config = ppo.PPOConfig(beta=0.0, lr=1e-2, epochs=2, minibatch_size=8, max_new_tokens=6)
    result = ppo.ppo_train(policy, head, prompts, score, 0, config, iterations=12, batch_size=16, seed=0)
    h = result.history
    assert set(h) >= {"score", "kl", "entropy", "clip_frac", "value_loss"} and len(h["score"]) == 12
    assert sum(h["score"][-3:]) / 3 > sum(h["score"][:3]) / 3 + 0.2
    assert h["kl"][0] == pytest.approx(0.0, abs=1e-5) and h["kl"][-1] > 0
    with pytest.raises(ValueError, match="beta"):
        ppo.PPOConfig(beta=-1.0)


@pytest.mark.cuda
def test_ppo_and_dpo_steps_run_on_cuda():
    from llm_course import dpo

    device = torch.device("cuda")
    policy = apply_lora(_tiny(), ("w_q", "w_v", "lm_head"), r=4, alpha=8).to(device)
    head = ppo.ValueHead(32).to(device)
    prompts = torch.randint(1, 12, (8, 3), device=device)
    config = ppo.PPOConfig(epochs=1, minibatch_size=4, max_new_tokens=4)
    result = ppo.ppo_train(policy, head, prompts, lambda t, n: (t[:, 3:] == 7).float().mean(-1), 0, config,
                           iterations=2, batch_size=8)  # fmt: skip
    assert len(result.history["score"]) == 2
    tokens = torch.randint(1, 12, (4, 6), device=device)
    mask = torch.zeros(4, 6, dtype=torch.bool, device=device)
    mask[:, 3:] = True
    # ppo_train has moved the adapters, so the policy is no longer its reference: the loss is not
    # ln 2. The same objective on a CPU copy of the policy is the oracle.
    objective = dpo.DPOObjective(beta=0.1)
    expected, metrics_cpu = objective(copy.deepcopy(policy).cpu(), (tokens.cpu(), mask.cpu()))
    loss, metrics = objective(policy, (tokens, mask))
    assert loss.device.type == "cuda" and loss.item() == pytest.approx(expected.item(), abs=1e-4)
    for name, value in metrics.items():
        assert value.item() == pytest.approx(metrics_cpu[name].item(), abs=1e-4), name


def test_kl_penalized_rewards_pay_the_score_at_the_last_masked_token():
    # A mask that does not start at position 0 (a prompt before the response): the score
    # still lands on the response's last token, and padding holding NaN stays out of it.
    mask = torch.tensor([[False, False, True, True, False]])
    logprobs = torch.tensor([[float("nan"), 0.0, -1.0, -2.0, float("nan")]])
    ref = torch.tensor([[0.0, 0.0, -1.5, -1.0, 0.0]])
    rewards = ppo.kl_penalized_rewards(torch.tensor([3.0]), logprobs, ref, mask, beta=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, 0.0, -0.25, 3.5, 0.0]]))


def test_gae_ignores_whatever_sits_at_padding():
    rewards = torch.tensor([[0.0, 1.0, float("nan")]])
    values = torch.tensor([[0.5, 0.2, float("nan")]])
    mask = torch.tensor([[True, True, False]])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.8, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 0.0]]))


def test_ppo_update_phase_on_the_trainer_equals_a_plain_loop():
    # The oracle: the same rollout and minibatches, torch.optim.AdamW, torch's gradient clipping and
    # the warmup + cosine learning rate, in a loop of our own (the update phase of the paper).
    policy = apply_lora(_tiny(), ("w_q", "w_v", "lm_head"), r=4, alpha=8, generator=torch.Generator().manual_seed(1))
    head = ppo.ValueHead(32)
    oracle_policy, oracle_head = copy.deepcopy(policy), copy.deepcopy(head)
    prompts = torch.randint(1, 12, (6, 3), generator=torch.Generator().manual_seed(0))
    config = ppo.PPOConfig(beta=0.1, lr=1e-2, epochs=2, minibatch_size=4, max_new_tokens=5, warmup=0.25, ent_coef=0.01)
    runner = ppo.PPO(policy, head, lambda t, n: (t[:, 3:] == 7).float().mean(-1), 0, config, iterations=1, batch_size=6)
    ro, stats = runner.step(prompts)
    assert runner.updates == 4 and len(runner.trainer.history["loss"]) == 4

    advantages, returns = ppo.ppo_advantages(ro, config)
    params = [p for p in oracle_policy.parameters() if p.requires_grad] + list(oracle_head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    order = ppo.RolloutMinibatches(4, seed=0)
    order.set_rollout({"row": torch.arange(6)})
    clip_fracs = []
    for step in range(4):
        mb = order.next_batch()["row"]
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, 1, 4, config.lr, config.lr * config.min_lr_ratio)
        logits, values = ppo.policy_outputs(oracle_policy, oracle_head, ro.tokens[mb], 3)
        logprobs = ppo.token_logprobs(logits, ro.tokens[mb, 3:])
        mask = ro.mask[mb]
        loss = (ppo.ppo_clip_loss(logprobs, ro.logprobs[mb], advantages[mb], mask, 0.2)
                + 0.5 * ppo.value_loss(values, ro.values[mb], returns[mb], mask, 0.2)
                - 0.01 * ppo.masked_mean(ppo.entropy(logits), mask))  # fmt: skip
        ratio = torch.exp(logprobs.detach() - ro.logprobs[mb])
        clip_fracs.append(ppo.masked_mean(((ratio - 1).abs() > 0.2).float(), mask).item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    assert stats["clip_frac"] == pytest.approx(sum(clip_fracs) / 4, abs=1e-6)
    for p, q in zip([*policy.parameters(), *head.parameters()], [*oracle_policy.parameters(), *oracle_head.parameters()]):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)  # Adam: see test_sft's oracle test
    assert any((p != 0).any() for n, p in policy.named_parameters() if "lora_B" in n)  # the updates did something
    with pytest.raises(RuntimeError, match="updates are done"):
        runner.step(prompts)
