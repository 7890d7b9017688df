"""Tests for llm_course.sampling: the filters agree with Hugging Face's logits warpers, worked
examples, ties, greedy decoding, seeded draws, sample frequencies (chi-square), and errors."""

import math

import pytest
import torch

from llm_course.sampling import (
    apply_temperature,
    check_sampling_settings,
    frequency_penalty,
    min_p_filter,
    repetition_penalty,
    sample_next,
    top_k_filter,
    top_p_filter,
)

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

SIGNIFICANCE = 1e-3  # a correct sampler fails a chi-square test this rarely; the seeds below are fixed
PROBS = [0.05, 0.45, 0.30, 0.20]  # the seeds' example distribution over four tokens


def random_logits(seed: int, shape=(4, 50), scale: float = 3.0, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


def hugging_face(logits, temperature=None, top_k=None, top_p=None) -> torch.Tensor:
    """Hugging Face's warpers in generate()'s order, temperature -> top-k -> top-p."""
    input_ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)  # unused by these warpers
    if temperature is not None:
        logits = TemperatureLogitsWarper(float(temperature))(input_ids, logits)
    if top_k is not None:
        logits = TopKLogitsWarper(top_k)(input_ids, logits)
    if top_p is not None:
        logits = TopPLogitsWarper(top_p)(input_ids, logits)
    return logits


def ours(logits, temperature=None, top_k=None, top_p=None) -> torch.Tensor:
    if temperature is not None:
        logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


# ----------------------------------------------------------------------------- oracle: Hugging Face
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 1.7, 10.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_temperature_equals_hugging_face(temperature, dtype):
    logits = random_logits(0, dtype=dtype)
    torch.testing.assert_close(ours(logits, temperature), hugging_face(logits, temperature), rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 2, 5, 17, 49, 50, 51, 1000])
def test_top_k_equals_hugging_face(k):
    for seed in range(5):
        logits = random_logits(seed)
        torch.testing.assert_close(ours(logits, top_k=k), hugging_face(logits, top_k=k), rtol=0, atol=0)


@pytest.mark.parametrize("p", [1e-4, 0.1, 0.3, 0.5, 0.9, 0.95, 0.999, 1.0])
@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_top_p_equals_hugging_face(p, scale):
    for seed in range(5):
        logits = random_logits(seed, shape=(6, 200), scale=scale)
        torch.testing.assert_close(ours(logits, top_p=p), hugging_face(logits, top_p=p), rtol=0, atol=0)


@pytest.mark.parametrize(
    "settings",
    [(0.7, 10, 0.9), (1.5, 40, 0.5), (0.3, None, 0.8), (2.0, 5, None), (1.0, 3, 0.99), (0.9, 1, 0.2)],
    ids=str,
)
def test_combined_filters_equal_hugging_face_order(settings):
    temperature, k, p = settings
    for seed in range(5):
        logits = random_logits(seed, shape=(5, 100))
        torch.testing.assert_close(ours(logits, *settings), hugging_face(logits, *settings), rtol=0, atol=0)


def test_order_matters():
    """top-p measured after top-k (and after the temperature) keeps other tokens than the other orders."""
    logits = torch.log(torch.tensor([[0.30, 0.25, 0.20, 0.15, 0.10]]))
    # top-k 3 leaves 0.30, 0.25, 0.20 renormalised: 0.40, 0.33, 0.27; top-p 0.7 then needs two of them.
    assert torch.isfinite(top_p_filter(top_k_filter(logits, 3), 0.7)).sum() == 2
    # top-p 0.7 first, on the full distribution, needs three tokens (0.30 + 0.25 < 0.7).
    assert torch.isfinite(top_k_filter(top_p_filter(logits, 0.7), 3)).sum() == 3
    # A low temperature sharpens the distribution: after it, the nucleus of 0.7 is one token.
    assert torch.isfinite(top_p_filter(apply_temperature(logits, 0.1), 0.7)).sum() == 1


# ----------------------------------------------------------------------------- worked examples
def test_worked_examples_on_the_seeds_distribution():
    logits = torch.log(torch.tensor(PROBS))
    kept = lambda x: torch.isfinite(x).nonzero().flatten().tolist()  # noqa: E731
    assert kept(top_k_filter(logits, 1)) == [1]
    assert kept(top_k_filter(logits, 2)) == [1, 2]
    assert kept(top_p_filter(logits, 0.4)) == [1]  # 0.45 alone reaches 0.4
    assert kept(top_p_filter(logits, 0.5)) == [1, 2]  # 0.45 < 0.5, 0.45 + 0.30 >= 0.5
    assert kept(top_p_filter(logits, 0.8)) == [1, 2, 3]  # 0.75 < 0.8, 0.95 >= 0.8
    assert kept(top_p_filter(logits, 0.99)) == [0, 1, 2, 3]
    # Kept logits are unchanged; the softmax renormalises them: 0.45 / 0.75 = 0.6.
    assert torch.equal(top_k_filter(logits, 2)[1:3], logits[1:3])
    torch.testing.assert_close(torch.softmax(top_k_filter(logits, 2), -1), torch.tensor([0.0, 0.6, 0.4, 0.0]))
    # softmax(log p / T) is proportional to p ** (1 / T).
    for T in [0.5, 2.0]:
        want = torch.tensor(PROBS) ** (1 / T)
        torch.testing.assert_close(torch.softmax(apply_temperature(logits, T), -1), want / want.sum())


def test_temperature_extremes():
    logits = torch.log(torch.tensor(PROBS))
    cold = torch.softmax(apply_temperature(logits, 0.01), -1)
    hot = torch.softmax(apply_temperature(logits, 100.0), -1)
    assert cold[1] > 0.999  # T -> 0: all the mass on the most probable token
    torch.testing.assert_close(hot, torch.full((4,), 0.25), atol=0.01, rtol=0)  # T -> inf: uniform


def test_ties_are_kept_together():
    logits = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.0])
    assert torch.isfinite(top_k_filter(logits, 2)).sum() == 4  # the three tied at the k-th value all stay
    # probabilities ~ 0.45, 0.17 x 3, 0.06: top-p 0.5 needs a second token, and its two ties come with it.
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [True, True, True, True, False]
    # The result does not depend on where the tied tokens sit in the vocabulary.
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.equal(top_p_filter(logits[perm], 0.5), top_p_filter(logits, 0.5)[perm])


def test_filters_keep_shape_dtype_and_input():
    logits = random_logits(3, shape=(2, 3, 20), dtype=torch.float16)
    before = logits.clone()
    for out in [apply_temperature(logits, 0.5), top_k_filter(logits, 4), top_p_filter(logits, 0.7)]:
        assert out.shape == logits.shape and out.dtype == torch.float16
    assert torch.equal(logits, before)  # no in-place change
    assert (torch.isfinite(top_k_filter(logits, 4)).sum(-1) == 4).all()
    assert top_p_filter(logits, 1.0) is logits  # p = 1 keeps everything


def test_top_p_ignores_tokens_already_removed():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    logits[2] = float("-inf")  # renormalised: 0.625, 0.375
    assert torch.isfinite(top_p_filter(logits, 0.6)).tolist() == [True, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [True, True, False]


# ----------------------------------------------------------------------------- sample_next
def test_temperature_zero_is_greedy_and_uses_no_randomness():
    logits = random_logits(4, shape=(8, 30))
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    for k, p in [(None, None), (3, None), (None, 0.5), (5, 0.9)]:
        ids = sample_next(logits, temperature=0, top_k=k, top_p=p, generator=g)
        assert torch.equal(ids, logits.argmax(-1)) and ids.dtype == torch.long
    assert torch.equal(g.get_state(), state)
    assert sample_next(torch.tensor([1.0, 3.0, 3.0]), temperature=0).item() == 1  # first index on ties


def test_shapes():
    g = torch.Generator().manual_seed(0)
    assert sample_next(torch.randn(10), generator=g).shape == ()
    assert sample_next(torch.randn(3, 10), generator=g).shape == (3,)
    assert sample_next(torch.randn(2, 3, 10), top_k=2, generator=g).shape == (2, 3)
    assert sample_next(torch.randn(2, 3, 10), temperature=0).shape == (2, 3)


def test_seeded_sampling_is_reproducible():
    logits = random_logits(5, shape=(64, 50), scale=1.0)
    draw = lambda seed: sample_next(logits, 0.8, 20, 0.9, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    # The global generator is not involved.
    torch.manual_seed(1)
    a = draw(7)
    torch.manual_seed(2)
    assert torch.equal(a, draw(7))


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P(X >= statistic) for X ~ chi-square with (number of categories - 1) degrees of freedom."""
    expected = probs * counts.sum()
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = len(probs) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic.double() / 2).item()


@pytest.mark.parametrize(
    "settings",
    [(1.0, None, None), (0.5, None, None), (2.0, None, None), (1.0, 3, None), (1.0, None, 0.6), (0.8, 4, 0.7)],
    ids=str,
)
def test_sample_frequencies_match_the_filtered_distribution(settings):
    """Chi-square goodness of fit at significance 0.001, 20 000 draws, fixed seeds."""
    temperature, k, p = settings
    logits = torch.log(torch.tensor([0.02, 0.30, 0.05, 0.25, 0.10, 0.18, 0.07, 0.03]))
    filtered = ours(logits[None], temperature, k, p)[0]
    probs = torch.softmax(filtered, -1)
    n = 20_000
    ids = sample_next(logits.expand(n, -1), temperature, k, p, torch.Generator().manual_seed(123))
    counts = torch.bincount(ids, minlength=len(logits)).double()
    assert (counts[probs == 0] == 0).all(), "a filtered token was drawn"
    support = probs > 0
    p_value = chi_square_p_value(counts[support], probs[support].double())
    assert p_value > SIGNIFICANCE, f"frequencies {counts.tolist()} do not fit {probs.tolist()} (p = {p_value:.2g})"


def test_chi_square_detects_a_wrong_distribution():
    """The test above has power: unfiltered samples fail it against the top-k distribution."""
    logits = torch.log(torch.tensor([0.30, 0.25, 0.20, 0.15, 0.10]))
    ids = sample_next(logits.expand(20_000, -1), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=5).double()
    wrong = torch.softmax(apply_temperature(logits, 0.8), -1).double()
    assert chi_square_p_value(counts, wrong) < 1e-6
    assert chi_square_p_value(counts, torch.softmax(logits, -1).double()) > SIGNIFICANCE


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(temperature=-0.5), ValueError, "temperature must be a finite number >= 0"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(temperature="1"), TypeError, "temperature must be a number"),
        (dict(top_k=0), ValueError, "top_k must be at least 1"),
        (dict(top_k=-3), ValueError, "top_k must be at least 1"),
        (dict(top_k=2.0), TypeError, "top_k must be an int"),
        (dict(top_k=True), TypeError, "top_k must be an int"),
        (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
        (dict(top_p=-0.1), ValueError, r"top_p must be in \(0, 1\]"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        check_sampling_settings(**kwargs)
    with pytest.raises(error, match=message):
        sample_next(torch.randn(5), **kwargs)


def test_invalid_settings_in_each_filter():
    logits = torch.randn(5)
    with pytest.raises(ValueError, match="greedy"):
        apply_temperature(logits, 0)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, -1.0)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)
    # Greedy ignores the filters, but invalid ones are still reported.
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, temperature=0, top_p=2.0)


def test_valid_edge_settings():
    check_sampling_settings(0, 1, 1.0)
    check_sampling_settings(1e-6, 10**9, 1e-9)
    assert math.isfinite(top_p_filter(torch.randn(5), 1e-9).max())  # the top token always stays


def test_a_generator_on_another_device_than_the_logits_is_refused_clearly():
    # The logits of a model on a GPU with set_seed's old CPU generator: meta stands in for the GPU.
    logits = torch.zeros(2, 5, device="meta")
    with pytest.raises(RuntimeError, match=r"generator is on 'cpu' and the logits to sample from on 'meta'"):
        sample_next(logits, temperature=1.0, generator=torch.Generator())
    assert sample_next(logits, temperature=0, generator=torch.Generator()).device.type == "meta"  # greedy draws nothing


# ----------------------------------------------------------------------------- min-p and penalties
@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_min_p_equals_hugging_face(min_p, scale):
    logits = random_logits(7, scale=scale)
    expected = MinPLogitsWarper(min_p)(torch.zeros(4, 1, dtype=torch.long), logits)
    assert torch.equal(min_p_filter(logits, min_p), expected)


def test_min_p_worked_example():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = min_p_filter(probs.log(), 0.2).isfinite()  # threshold 0.2 * 0.5 = 0.1
    assert kept.tolist() == [[True, True, True, False]]
    # The threshold follows the top token: a flat distribution keeps everything at the same min_p.
    assert min_p_filter(torch.zeros(1, 5), 0.9).isfinite().all()


def test_min_p_comes_after_top_p_as_in_hugging_face():
    logits = random_logits(8, scale=2.0)
    torch.manual_seed(3)
    warped = MinPLogitsWarper(0.2)(torch.zeros(4, 1, dtype=torch.long), hugging_face(logits, 0.8, 10, 0.9))
    expected = torch.multinomial(torch.softmax(warped, -1), 1).squeeze(-1)
    got = sample_next(logits, 0.8, 10, 0.9, torch.Generator().manual_seed(3), min_p=0.2)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_hugging_face(penalty):
    logits = random_logits(9)
    tokens = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))  # with repeats
    expected = RepetitionPenaltyLogitsProcessor(penalty)(tokens, logits.clone())
    assert torch.equal(repetition_penalty(logits, tokens, penalty), expected)


def test_repetition_penalty_worked_example():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    tokens = torch.tensor([[0, 1, 1, 1]])  # token 1 three times: penalised once
    assert repetition_penalty(logits, tokens, 2.0).tolist() == [[1.0, -4.0, 1.0, 0.5]]


def test_frequency_and_presence_penalties_against_a_loop():
    logits = random_logits(10, shape=(3, 20))
    tokens = torch.randint(0, 20, (3, 15), generator=torch.Generator().manual_seed(2))
    expected = logits.clone()
    for row, seq in enumerate(tokens.tolist()):
        for token in set(seq):
            expected[row, token] -= 0.7 * seq.count(token) + 0.4
    torch.testing.assert_close(frequency_penalty(logits, tokens, 0.7, 0.4), expected)
    assert torch.equal(frequency_penalty(logits, tokens[:, :0]), logits)  # no tokens yet: no change
    worked = frequency_penalty(torch.zeros(1, 3), torch.tensor([[2, 2, 0]]), frequency=1.0, presence=0.5)
    assert worked.tolist() == [[-1.5, 0.0, -2.5]]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: min_p_filter(torch.zeros(1, 3), 1.5), ValueError, r"min_p must be in \[0, 1\]"),
        (lambda: min_p_filter(torch.zeros(1, 3), -0.1), ValueError, r"min_p must be in \[0, 1\]"),
        (lambda: sample_next(torch.zeros(1, 3), min_p="0.1"), TypeError, "min_p must be a number"),
        (lambda: repetition_penalty(torch.zeros(1, 3), torch.zeros(1, 1, dtype=torch.long), 0), ValueError,
         "repetition_penalty must be > 0"),
        (lambda: repetition_penalty(torch.zeros(1, 3), torch.zeros(1, 1, dtype=torch.long), -1.2), ValueError,
         "repetition_penalty must be > 0"),
        (lambda: repetition_penalty(torch.zeros(1, 3), torch.tensor([[3]]), 1.2), ValueError, r"ids in \[0, 3\)"),
        (lambda: repetition_penalty(torch.zeros(2, 3), torch.zeros(1, 1, dtype=torch.long), 1.2), ValueError,
         "same B"),
        (lambda: frequency_penalty(torch.zeros(1, 3), torch.zeros(1, 1, dtype=torch.long), float("nan")),
         ValueError, "frequency must be finite"),
    ],
)
def test_penalty_and_min_p_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
