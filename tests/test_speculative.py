"""Tests for llm_course.speculative: the accept / resample rule on worked examples, and the claim that
speculative decoding leaves the output distribution unchanged, by chi-square tests with a fixed seed
at significance level 0.001: once on the rule alone (a large sample), once end to end with two tiny
transformers over a 4-token vocabulary, where the target's distribution of every 2-token
continuation can be enumerated. A negative control (sampling from the draft) must fail the same test."""

import dataclasses
import itertools

import pytest
import torch

from llm_course.generation import generate
from llm_course.speculative import (
    expected_tokens_per_step,
    probabilities,
    residual_distribution,
    speculative_generate,
    speculative_step,
    verify_draft,
)
from llm_course.transformer import Transformer, tiny

SIGNIFICANCE = 0.001  # reject "same distribution" when the chi-square p-value is below this


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P(X >= observed statistic) for X ~ chi^2 with (cells - 1) degrees of freedom (Pearson's test).

    Cells expected to hold fewer than 5 samples are pooled into one, as the test requires.
    """
    counts, expected = counts.double(), probs.double() * counts.sum()
    assert counts[expected == 0].sum() == 0, "a sample fell where the target has probability 0"
    small = expected < 5
    counts = torch.cat([counts[~small], counts[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected > 0
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = int(keep.sum()) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2).item()


# ----------------------------------------------------------------------------- the rule, by hand
def test_residual_distribution():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.6, 0.2])
    torch.testing.assert_close(residual_distribution(p, q), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(residual_distribution(p, p), p)  # nothing to resample: p itself


def test_verify_draft_worked_example():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])  # gamma = 2, plus one beyond
    q = torch.tensor([[0.25, 0.5, 0.25], [0.1, 0.8, 0.1]])
    draft = torch.tensor([0, 1])
    # Draft 0: p/q = 2 -> always accepted. Draft 1: p/q = 0.125 -> accepted iff u < 0.125.
    n, dist = verify_draft(p, q, draft, torch.tensor([0.99, 0.5]))
    assert n == 1
    torch.testing.assert_close(dist, torch.tensor([0.0, 0.0, 1.0]))  # max(0, p - q) = (0, 0, 0.7)
    n, dist = verify_draft(p, q, draft, torch.tensor([0.99, 0.1]))
    assert n == 2
    torch.testing.assert_close(dist, p[2])  # every draft accepted: the bonus token comes from p_{gamma+1}


def test_greedy_rule_accepts_while_the_draft_matches_the_argmax():
    logits_p = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 5.0]])
    logits_q = torch.tensor([[2.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    p, q = probabilities(logits_p, 0), probabilities(logits_q, 0)
    out = speculative_step(p, q, q.argmax(-1))
    assert out.tolist() == [0, 1]  # draft 0 matches, draft 0 != argmax 1 -> the target's 1


def test_expected_tokens_formula():
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert abs(expected_tokens_per_step(0.5, 2) - 1.75) < 1e-12  # 1 + 0.5 + 0.25


# ----------------------------------------------------------------------------- the distribution is p
def test_one_step_is_distributed_as_the_target():
    """Every token a round emits follows p. With context-free p_i, the first emitted token ~ p_1."""
    g = torch.Generator().manual_seed(0)
    V, gamma, n = 6, 3, 10_000
    p = torch.softmax(torch.randn(gamma + 1, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(gamma, V, generator=g) * 1.5, -1)
    drafts = torch.multinomial(q, n, replacement=True, generator=g).T  # (n, gamma), row i ~ q
    firsts = torch.zeros(V)
    for draft in drafts:
        firsts[speculative_step(p, q, draft, g)[0]] += 1
    assert chi_square_p_value(firsts, p[0]) > SIGNIFICANCE
    assert chi_square_p_value(firsts, q[0]) < SIGNIFICANCE  # the test can tell q from p


def _tiny_model(seed: int, n_layers: int, d_model: int) -> Transformer:
    config = dataclasses.replace(tiny(4), n_layers=n_layers, d_model=d_model, n_heads=2, n_kv_heads=2, context_length=8)
    model = Transformer(config, generator=torch.Generator().manual_seed(seed)).eval()
    with torch.no_grad():  # large weights: peaked, context-dependent distributions
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + p.numel())) * 0.5)
    return model


def _continuation_probs(model: Transformer, prompt: torch.Tensor, n_new: int, temperature: float) -> dict:
    """Exact probability of every continuation of n_new tokens under `model`, by enumeration."""
    V = model.config.vocab_size
    out = {}
    with torch.no_grad():
        for seq in itertools.product(range(V), repeat=n_new):
            ids = torch.cat([prompt, torch.tensor([seq])], dim=1)
            logp = torch.log_softmax(model(ids)[0].double() / temperature, -1)  # (T, V)
            out[seq] = sum(logp[prompt.shape[1] - 1 + i, s].item() for i, s in enumerate(seq))
    return {k: torch.tensor(v).exp().item() for k, v in out.items()}


def test_speculative_generate_is_distributed_as_the_target(temperature=0.8):
    target, draft = _tiny_model(0, 2, 16), _tiny_model(1, 1, 8)
    prompt, n_new, n_samples = torch.tensor([[1, 3]]), 2, 1500
    exact = _continuation_probs(target, prompt, n_new, temperature)
    cells = list(exact)
    g = torch.Generator().manual_seed(0)
    counts, control = torch.zeros(len(cells)), torch.zeros(len(cells))
    accepted = 0
    for _ in range(n_samples):
        out, stats = speculative_generate(target, draft, prompt, n_new, gamma=2, temperature=temperature, generator=g)
        counts[cells.index(tuple(out[0, 2:].tolist()))] += 1
        accepted += stats.accepted
        control_out = generate(draft, prompt, n_new, temperature, generator=g)  # the draft alone
        control[cells.index(tuple(control_out[0, 2:].tolist()))] += 1
    probs = torch.tensor([exact[c] for c in cells], dtype=torch.float64)
    assert abs(probs.sum().item() - 1) < 1e-6  # float32 logits
    assert 0 < accepted < n_samples * n_new  # drafts were both accepted and rejected: the rule was exercised
    assert chi_square_p_value(counts, probs) > SIGNIFICANCE
    assert chi_square_p_value(control, probs) < SIGNIFICANCE  # negative control: the draft's own distribution


def test_greedy_speculative_equals_greedy_target():
    target, draft = _tiny_model(0, 2, 16), _tiny_model(1, 1, 8)
    prompt = torch.tensor([[1, 3]])
    out, stats = speculative_generate(target, draft, prompt, 3, gamma=3, temperature=0)
    assert torch.equal(out, generate(target, prompt, 3, temperature=0))
    assert stats.target_passes <= 3


def test_too_long_raises():
    target, draft = _tiny_model(0, 2, 16), _tiny_model(1, 1, 8)
    with pytest.raises(ValueError, match="context_length"):
        speculative_generate(target, draft, torch.tensor([[1, 3]]), 6, gamma=2)


def test_probabilities_cast_to_float32_before_the_temperature_like_the_sampler():
    from llm_course.sampling import apply_temperature, top_k_filter, top_p_filter

    logits = (torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 4).bfloat16()
    got = probabilities(logits, temperature=0.7, top_k=20, top_p=0.9)
    # The sampler's order: float32 first, then temperature -> top-k -> top-p -> softmax.
    want = torch.softmax(top_p_filter(top_k_filter(apply_temperature(logits.float(), 0.7), 20), 0.9), dim=-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # Dividing the bf16 logits first rounds them a second time: the distributions differ.
    late = torch.softmax(apply_temperature(logits, 0.7).float(), dim=-1)
    assert not torch.equal(probabilities(logits, temperature=0.7), late)
    assert probabilities(logits, temperature=0).dtype == torch.float32


def test_a_generator_on_another_device_is_refused_clearly():
    p, q = torch.full((3, 4), 0.25, device="meta"), torch.full((2, 4), 0.25, device="meta")
    with pytest.raises(RuntimeError, match=r"generator is on 'cpu' and the target's probabilities on 'meta'"):
        speculative_step(p, q, torch.zeros(2, dtype=torch.long, device="meta"), torch.Generator())
    target, draft = _tiny_model(0, 2, 16), _tiny_model(1, 1, 8)
    with pytest.raises(RuntimeError, match=r"the prompt idx on 'meta'"):
        speculative_generate(target, draft, torch.tensor([[1, 3]], device="meta"), 2, generator=torch.Generator())


def test_out_of_range_prompt_ids_are_named():
    target, draft = _tiny_model(0, 2, 16), _tiny_model(1, 1, 8)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 4\)"):
        speculative_generate(target, draft, torch.tensor([[1, 9]]), 2)
