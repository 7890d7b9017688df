"""Preference labels from AI feedback instead of people: RLAIF and constitutional-style judges (chapter 12).

RLHF ranks each pair of responses by a person. RL from AI feedback (Bai et al., 2022, "Constitutional
AI"; Lee et al., 2024, "RLAIF vs. RLHF") asks a *judge* instead: a model shown the prompt and the
two responses, often with a written list of principles (a *constitution*) saying what "better"
means. Its labels then train a reward model or, here, DPO directly.

A judge is any callable

    judge(instructions, first, second) -> (B,) tensor, P(first response is better) in [0, 1],

and it sees the two responses in some order. Language-model judges prefer one position over the
other (Lee et al. ask in both orders and average), so every pair is judged twice:

- `judge_both_orders(judge, pairs)`: P(chosen better) asked with the chosen response shown first,
  and asked with it shown second; `combine_orders` averages the two, which cancels a pure
  position bias;
- `agreement(p_first, p_second)`: how often the judge picks the ground truth's chosen response
  (each order alone and both combined), how often its two orders disagree, and the share of its
  verdicts (ties left out) that go to the response shown first (0.5 without a position bias);
- `relabel(pairs, p)`: the pairs as the judge ranks them (swapped where it prefers the other
  response, dropped where it cannot tell), for `dpo.dpo_train`;
- `win_rate(a, b)`: the share of prompts where a's answer scores higher than b's (ties half).

Two judges:

- `ConstitutionJudge`: `Principle`s, each a written rule with the function that reads it; the
  judge prefers the response with the higher weighted sum. It is code, not a language model: it
  reads its rules exactly, so every disagreement with the ground truth comes from the rules
  themselves. `constitution(terms)` is the chapter's (`index_terms` gives its "terms of the index").
- `LMJudge`: a causal language model asked "which answer is better, A or B?" in the chat
  template; P(first better) is the softmax of its next-token logits of " A" and " B", the
  multiple-choice reading of Bai et al.

The pairs judged here are `preferences.Preference` pairs, whose chosen/rejected order is the
ground truth's: it is used to *measure* the judge, never shown to it (both orders are asked).

Left out: chain-of-thought before the verdict, critiques and revisions (the supervised half of
Constitutional AI), soft labels (training on the judge's probability instead of its verdict),
and sampling a different principle for each comparison.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llm_course.preferences import Preference, words_of
from llm_course.sft import format_prompt
from llm_course.tokenizer import Tokenizer

#: judge(instructions, first, second) -> (B,) P(first response is better than second).
Judge = Callable[[list[str], list[str], list[str]], torch.Tensor]


# --------------------------------------------------------------------------- asking a judge
def _check_probabilities(p: torch.Tensor, n: int, who: str) -> torch.Tensor:
    if p.shape != (n,):
        raise ValueError(f"{who} must return one probability per pair, shape ({n},), got {tuple(p.shape)}")
    if not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError(f"{who} must return probabilities in [0, 1], got values from {p.min().item():g} to {p.max().item():g}")
    return p.detach().float().cpu()


def judge_both_orders(judge: Judge, pairs: Sequence[Preference]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ask `judge` about every pair twice: (p_first, p_second), each (N,) P(chosen response is better).

    p_first asks with the chosen response shown first: judge(x, chosen, rejected).
    p_second asks with it shown second: 1 - judge(x, rejected, chosen).
    A judge that reads only the content gives p_first == p_second."""
    if not pairs:
        raise ValueError("judge_both_orders needs at least one pair")
    instructions = [p.instruction for p in pairs]
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    p_first = _check_probabilities(judge(instructions, chosen, rejected), len(pairs), "the judge")
    p_second = 1 - _check_probabilities(judge(instructions, rejected, chosen), len(pairs), "the judge")
    return p_first, p_second


def combine_orders(p_first: torch.Tensor, p_second: torch.Tensor) -> torch.Tensor:
    """The judge's P(chosen better) from both orders: their mean, (N,), (N,) -> (N,).

    A bias toward one position adds to one order what it takes from the other, so it cancels."""
    if p_first.shape != p_second.shape or p_first.dim() != 1:
        raise ValueError(f"p_first and p_second must be (N,) tensors of one shape, got {tuple(p_first.shape)} and {tuple(p_second.shape)}")
    return (p_first + p_second) / 2


@dataclass(frozen=True)
class Agreement:
    """How a judge's verdicts on ground-truth pairs compare with the ground truth."""

    accuracy: float  # both orders combined: share of the decided pairs where the judge picks the truth's chosen
    decided: float  # share of the pairs where the combined verdict is not a tie (p != 0.5)
    accuracy_first: float  # chosen shown first, that order alone (a tie counts half)
    accuracy_second: float  # chosen shown second, that order alone (a tie counts half)
    order_disagreement: float  # share of pairs whose two orders pick different responses
    first_position: float  # share of the decided single-order verdicts that pick the response shown first


def _verdict(p: torch.Tensor) -> torch.Tensor:
    """+1 where p > 0.5 (the chosen response wins), -1 where p < 0.5, 0 at a tie."""
    return torch.sign(p - 0.5)


def agreement(p_first: torch.Tensor, p_second: torch.Tensor) -> Agreement:
    """The `Agreement` of a judge from its two orders' P(chosen better) (N,) each, as `judge_both_orders` returns."""
    p = combine_orders(p_first, p_second)
    if p.numel() == 0:
        raise ValueError("agreement needs at least one pair")
    v1, v2, v = _verdict(p_first), _verdict(p_second), _verdict(p)
    decided = v != 0
    # The first-shown response is the chosen one in the first order, the rejected one in the second.
    first_picks = int((v1 > 0).sum() + (v2 < 0).sum())
    single_decided = int((v1 != 0).sum() + (v2 != 0).sum())
    return Agreement(
        accuracy=float((v[decided] > 0).float().mean()) if decided.any() else float("nan"),
        decided=float(decided.float().mean()),
        accuracy_first=float(((v1 > 0).float() + 0.5 * (v1 == 0).float()).mean()),
        accuracy_second=float(((v2 > 0).float() + 0.5 * (v2 == 0).float()).mean()),
        order_disagreement=float((v1 != v2).float().mean()),
        first_position=first_picks / single_decided if single_decided else float("nan"),
    )


def relabel(pairs: Sequence[Preference], p_chosen: torch.Tensor) -> list[Preference]:
    """The pairs as the judge ranks them: kept where p_chosen > 0.5, swapped where it is < 0.5, dropped at 0.5.

    `p_chosen` (N,) is the judge's P(the pair's chosen response is better), e.g. `combine_orders`.
    The scores stay attached to their responses (a swapped pair has chosen_score < rejected_score),
    so the ground truth of the new labels can still be measured; DPO does not read them."""
    if p_chosen.shape != (len(pairs),):
        raise ValueError(f"p_chosen must have one probability per pair, shape ({len(pairs)},), got {tuple(p_chosen.shape)}")
    out = []
    for pair, p in zip(pairs, p_chosen.tolist()):
        if p > 0.5:
            out.append(pair)
        elif p < 0.5:
            out.append(Preference(pair.instruction, pair.rejected, pair.chosen, pair.rejected_score, pair.chosen_score))
    return out


def win_rate(scores_a: torch.Tensor | Sequence[float], scores_b: torch.Tensor | Sequence[float]) -> float:
    """Share of prompts where a's answer scores higher than b's, a tie counting half: (N,), (N,) -> float."""
    a, b = torch.as_tensor(scores_a, dtype=torch.float64), torch.as_tensor(scores_b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1 or a.numel() == 0:
        raise ValueError(f"win_rate needs two non-empty (N,) score lists of one length, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float(((a > b).double() + 0.5 * (a == b).double()).mean())


# --------------------------------------------------------------------------- a constitution read by code
@dataclass(frozen=True)
class Principle:
    """A written rule and how the judge reads it: `score(response)`, higher is better, times `weight`."""

    text: str
    score: Callable[[str], float]
    weight: float = 1.0


class ConstitutionJudge:
    """Prefers the response with the higher sum of weight * score over its principles.

    P(first better) = sigmoid((total(first) - total(second)) / temperature): 0.5 at a tie, the
    verdict of the principles otherwise. The same for both orders: this judge has no position bias."""

    def __init__(self, principles: Sequence[Principle], temperature: float = 1.0):
        if not principles:
            raise ValueError("a constitution needs at least one principle")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.principles, self.temperature = tuple(principles), temperature

    def total(self, response: str) -> float:
        """The weighted sum of the principles' scores of one response."""
        return sum(p.weight * p.score(response) for p in self.principles)

    def __call__(self, instructions: list[str], first: list[str], second: list[str]) -> torch.Tensor:
        if not len(instructions) == len(first) == len(second):
            raise ValueError(f"instructions, first and second must have one length, got {len(instructions)}, {len(first)}, {len(second)}")
        diff = torch.tensor([self.total(a) - self.total(b) for a, b in zip(first, second)], dtype=torch.float32)
        return torch.sigmoid(diff / self.temperature)


def index_terms(topic_names: Sequence[str]) -> frozenset[str]:
    """The terms of a documentation index: the words of its topic names ("attribute-access" ->
    attribute, access), each also without a final "s" ("lists" -> list, but not "class"), so both forms count."""
    words = {w for name in topic_names for w in re.findall(r"[a-z]+", name.lower())}
    return frozenset(words | {w[:-1] for w in words if w.endswith("s") and not w.endswith("ss") and len(w) > 3})


def distinct_terms(response: str, terms: frozenset[str]) -> float:
    """The number of distinct words of `response` that are in `terms`."""
    return float(len({w for w in words_of(response) if w in terms}))


def repeated_words(response: str, min_len: int = 4) -> float:
    """The number of repeated occurrences of words of at least `min_len` letters ("the" does not count)."""
    words = [w for w in words_of(response) if len(w) >= min_len]
    return float(len(words) - len(set(words)))


def constitution(terms: frozenset[str]) -> list[Principle]:
    """The chapter's constitution: two written rules, read with the documentation's index `terms`."""
    return [
        Principle("Prefer the answer that names more of Python's concepts (terms of the documentation's index).",
                  lambda r: distinct_terms(r, terms)),
        Principle("Prefer the answer that does not repeat itself.", lambda r: -repeated_words(r)),
    ]  # fmt: skip


# --------------------------------------------------------------------------- a language model as judge
JUDGE_QUESTION = "Which answer names more Python concepts without repeating one, A or B?"


class LMJudge:
    """A causal language model asked, in the chat template, which of two answers is better.

    The prompt is <|user|>{question} Question: {instruction} A: {first} B: {second}<|assistant|>
    and P(first better) = softmax over the model's next-token logits of " A" and " B" (the
    multiple-choice reading of Bai et al., 2022). A model too small to read the question answers
    from the surface of the prompt, and often from the positions: `judge_both_orders` shows it."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, question: str = JUDGE_QUESTION, batch_size: int = 64):
        options = [tokenizer.encode(" A"), tokenizer.encode(" B")]
        if any(len(o) != 1 for o in options):
            raise ValueError(f"the tokenizer must encode ' A' and ' B' as one token each, got {options}")
        self.model, self.tokenizer, self.question, self.batch_size = model, tokenizer, question, batch_size
        self.option_ids = [o[0] for o in options]

    def prompt(self, instruction: str, first: str, second: str) -> str:
        """The text the judge model reads."""
        return format_prompt(f"{self.question} Question: {instruction} A: {first} B: {second}")

    @torch.no_grad()
    def __call__(self, instructions: list[str], first: list[str], second: list[str]) -> torch.Tensor:
        if not len(instructions) == len(first) == len(second):
            raise ValueError(f"instructions, first and second must have one length, got {len(instructions)}, {len(first)}, {len(second)}")
        device = next(self.model.parameters()).device
        context = self.model.config.context_length
        was_training = self.model.training
        self.model.eval()
        out = []
        for i in range(0, len(first), self.batch_size):
            ids = [self.tokenizer.encode(self.prompt(*t), allowed_special="all")
                   for t in zip(instructions[i : i + self.batch_size], first[i : i + self.batch_size], second[i : i + self.batch_size])]  # fmt: skip
            longest = max(len(x) for x in ids)
            if longest > context:
                raise ValueError(f"a judge prompt has {longest} tokens, more than the model's context of {context}")
            tokens = torch.zeros(len(ids), longest, dtype=torch.long)  # right-padded: the causal mask keeps padding out
            for b, x in enumerate(ids):
                tokens[b, : len(x)] = torch.tensor(x)
            last = torch.tensor([len(x) - 1 for x in ids], device=device)
            logits = self.model(tokens.to(device))[torch.arange(len(ids), device=device), last]  # (b, V): the next token
            out.append(torch.softmax(logits[:, self.option_ids].float(), dim=-1)[:, 0])  # (b,) P(" A")
        self.model.train(was_training)
        return torch.cat(out).cpu()
