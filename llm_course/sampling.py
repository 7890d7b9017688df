"""Choosing the next token from a model's logits: greedy, temperature, top-k, top-p, min-p, penalties (chapter 08).

Implements pure functions on logits of shape (..., V), outside the model's forward:
- `apply_temperature`: logits / T. T < 1 sharpens the distribution, T > 1 flattens it;
- `top_k_filter`: keep the k largest logits, set the others to -inf (Fan et al., 2018,
  "Hierarchical Neural Story Generation");
- `top_p_filter`: nucleus sampling, keep the smallest set of most probable tokens whose
  probabilities add up to at least p (Holtzman et al., 2020, "The Curious Case of Neural
  Text Degeneration");
- `min_p_filter`: keep the tokens at least `min_p` times as probable as the most probable one
  (Nguyen et al., 2025, "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM
  Outputs"): the cut follows the model's confidence, tight when one token dominates;
- `sample_next`: the filters combined in Hugging Face's order, temperature -> top-k -> top-p
  -> min-p, then a softmax and one draw from `torch.multinomial` with an explicit
  `torch.Generator`. Temperature 0 means greedy decoding: the most probable token, no randomness.
- `repetition_penalty`: the penalty of Keskar et al. (2019, "CTRL"): the logit of every token
  already in the sequence is divided by the penalty if positive, multiplied if negative;
- `frequency_penalty`: OpenAI's frequency and presence penalties, subtracted from the logits:
  ``alpha_frequency * count + alpha_presence * (count > 0)``;
- `check_sampling_settings`: the validation, shared with `llm_course.generation.generate`.

The filters agree with Hugging Face's `TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper`, `MinPLogitsWarper` and `RepetitionPenaltyLogitsProcessor`
(tests/test_sampling.py). Ties are treated as a threshold: a token tied with the last one
kept is kept too, by top-k as by top-p. Left out: typical sampling, no-repeat n-grams.
"""

from __future__ import annotations

import math

import torch

from llm_course.utils import check_generator


def _check_number(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number{' or None' if allow_none else ''}, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def check_sampling_settings(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
) -> None:
    """Raise a ValueError (or TypeError) that names the setting if a sampling setting is invalid.

    Valid: temperature >= 0 (0 = greedy), top_k None or an int >= 1, top_p None or in (0, 1],
    min_p None or in [0, 1], repetition_penalty None or > 0 (1 = no penalty).
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy decoding), got {temperature}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"top_k must be an int or None, got {type(top_k).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1 (None turns top-k off), got {top_k}")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TypeError(f"top_p must be a number or None, got {type(top_p).__name__}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 or None turns top-p off), got {top_p}")
    _check_number("min_p", min_p)
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1] (0 or None turns min-p off), got {min_p}")
    _check_number("repetition_penalty", repetition_penalty)
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise ValueError(
            f"repetition_penalty must be > 0 (1 is no penalty, > 1 discourages repeats), got {repetition_penalty}"
        )


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (..., V) divided by `temperature` > 0: softmax(logits / T) is the tempered distribution.

    Temperature 0 is greedy decoding, the limit T -> 0, which is not a division: use
    `sample_next(logits, temperature=0)` or `logits.argmax(-1)`.
    """
    check_sampling_settings(temperature)
    if temperature == 0:
        raise ValueError(
            "temperature 0 means greedy decoding, which is the limit T -> 0, not a division by 0: "
            "use sample_next(logits, temperature=0) or logits.argmax(-1)"
        )
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` largest logits of each row (..., V) and set the others to -inf.

    Logits tied with the k-th largest are kept as well; k >= V keeps everything.
    """
    check_sampling_settings(top_k=k)
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most probable tokens whose probabilities sum to >= top_p.

    Logits (..., V) -> the same logits with the other tokens set to -inf. A token is kept
    when the tokens more probable than it hold less than `top_p` of the probability, so the
    most probable token is always kept; top_p = 1 keeps everything.
    """
    check_sampling_settings(top_p=top_p)
    if top_p == 1.0:
        return logits
    # Half-precision cumulative sums are too coarse: work in at least float32.
    probs = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))  # (..., V)
    sorted_probs = probs.sort(dim=-1, descending=True).values  # (..., V), most probable first
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the tokens ranked above
    n_keep = (mass_before < top_p).sum(dim=-1, keepdim=True)  # (..., 1), at least 1
    smallest_kept = sorted_probs.gather(-1, n_keep - 1)  # (..., 1)
    return logits.masked_fill(probs < smallest_kept, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep the tokens of each row (..., V) whose probability is at least `min_p` times the largest one.

    The threshold scales with the model's confidence: when the top token has probability
    0.9, min_p = 0.1 keeps tokens above 0.09; when it has 0.05, tokens above 0.005. The most
    probable token is always kept; min_p = 0 keeps everything.
    """
    check_sampling_settings(min_p=min_p)
    probs = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))  # (..., V)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (..., 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise the tokens already in each row of `tokens` (B, T): logits (B, V) -> (B, V).

    A seen token's logit is divided by `penalty` if it is positive and multiplied by it if
    negative, so penalty > 1 always lowers it (once, however often the token occurred).
    The rule of CTRL and Hugging Face's `RepetitionPenaltyLogitsProcessor`.
    """
    check_sampling_settings(repetition_penalty=penalty)
    _check_tokens(logits, tokens)
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, tokens, True)  # (B, V)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)  # (B, V)
    return torch.where(seen, penalised, logits)


def frequency_penalty(
    logits: torch.Tensor, tokens: torch.Tensor, frequency: float = 0.0, presence: float = 0.0
) -> torch.Tensor:
    """OpenAI's penalties: logits (B, V) minus ``frequency * count + presence * (count > 0)``.

    `count` is how often each token occurs in its row of `tokens` (B, T). Unlike the
    repetition penalty, the frequency penalty grows with every repeat; both are additive,
    so a negative value encourages repeats instead.
    """
    _check_number("frequency", frequency, allow_none=False)
    _check_number("presence", presence, allow_none=False)
    _check_tokens(logits, tokens)
    counts = torch.zeros_like(logits).scatter_add_(-1, tokens, torch.ones_like(tokens, dtype=logits.dtype))  # (B, V)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def _check_tokens(logits: torch.Tensor, tokens: torch.Tensor) -> None:
    if logits.dim() != 2 or tokens.dim() != 2 or tokens.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected logits (B, V) and tokens (B, T) with the same B, "
            f"got {tuple(logits.shape)} and {tuple(tokens.shape)}"
        )
    in_range = tokens.numel() == 0 or 0 <= int(tokens.min()) and int(tokens.max()) < logits.shape[-1]
    if tokens.is_floating_point() or not in_range:
        raise ValueError(f"tokens must be integer ids in [0, {logits.shape[-1]}), the logits' vocabulary")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """Draw one token id per row of logits (..., V): ids of shape (...), dtype long.

    temperature 0: greedy, the index of the largest logit (the first one on ties); the
    filters and the generator are then unused. Otherwise the logits go through
    temperature -> top-k -> top-p -> min-p, Hugging Face's order (so top-p measures
    probability after the temperature and among the top k only), then softmax, then one
    draw with `torch.multinomial` from `generator` (torch's global generator if None), which
    must be on the logits' device (a RuntimeError says so otherwise).
    """
    check_sampling_settings(temperature, top_k, top_p, min_p)
    logits = logits.float()  # (..., V); the softmax and the draw in float32
    if temperature == 0:
        return logits.argmax(dim=-1)
    check_generator(generator, logits, "the logits to sample from")
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    if min_p is not None:
        logits = min_p_filter(logits, min_p)
    probs = torch.softmax(logits, dim=-1)  # (..., V)
    flat = probs.reshape(-1, probs.shape[-1])  # (N, V): multinomial takes one or two dims
    ids = torch.multinomial(flat, num_samples=1, generator=generator)  # (N, 1)
    return ids.reshape(probs.shape[:-1])
