"""A preference data set made by the course's own code, with a known notion of "better" (chapter 12).

Alignment needs prompts, pairs of responses and a judgement of which response is better. Real
judgements come from people; here they come from a **ground-truth score** computed by code, so
that every later stage (the reward model, PPO, DPO) can be checked against the truth:

- The task: "<|user|>Write about: <topic><|assistant|> <one sentence><|endoftext|>", where the
  topic is a word of the CPython documentation and the answer a short sentence of that
  documentation that contains it (`topic_examples`: the SFT data of the chapter).
- `ground_truth_score(response)`: the number of *distinct* words of `LEXICON` (nouns of
  Python's vocabulary: "object", "string", "module", ...) in the response, minus
  `repeat_penalty` for every repeated occurrence of a lexicon word. A good answer names
  many different concepts; saying "object" five times is worse than saying it once.
- `make_preferences(model, tokenizer, instructions, seed)`: two responses sampled from the model
  for each prompt; the one with the higher ground truth is "chosen", ties are dropped.

Natural samples rarely repeat a lexicon word, so the pairs teach a reward model mostly that
"lexicon words are good"; the repetition penalty is what a policy that over-optimises the
learned reward runs into (reward hacking, chapter 12).

Left out: human or model-written judgements, several ranked responses per prompt, and
prompts of different lengths in one batch (every prompt here has the same number of tokens).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from llm_course.generation import generate
from llm_course.sft import END, Example, format_prompt
from llm_course.tokenizer import Tokenizer

PROMPT = "Write about:"

# The target lexicon of the ground-truth score: nouns of Python's vocabulary, singular and plural.
LEXICON = frozenset(
    "object objects value values class classes type types name names method methods function functions "
    "list lists string strings module modules exception exceptions attribute attributes sequence sequences "
    "expression expressions tuple tuples dictionary number numbers integer integers variable variables "
    "instance instances keyword keywords statement statements argument arguments operator operators "
    "iterator iterators namespace pattern patterns element elements item items key keys".split()
)


def words_of(text: str) -> list[str]:
    """The lowercase words (runs of letters) of `text`."""
    return re.findall(r"[a-z]+", text.lower())


def ground_truth_score(response: str, lexicon: frozenset[str] = LEXICON, repeat_penalty: float = 2.0) -> float:
    """Distinct lexicon words of `response` minus `repeat_penalty` per repeated lexicon word.

    "a list of string objects" -> 3; "object object object" -> 1 - 2 * repeat_penalty."""
    hits = [w for w in words_of(response) if w in lexicon]
    distinct = len(set(hits))
    return float(distinct - repeat_penalty * (len(hits) - distinct))


def corpus_sentences(text: str, min_words: int = 4, max_words: int = 16) -> list[str]:
    """The short, plain sentences of `text`: `min_words`..`max_words` words, starting with a capital,
    made only of letters, spaces and simple punctuation (no code, no markup)."""
    sentences = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    plain = re.compile(r"[A-Z][A-Za-z ,.;:()'-]+")
    return [s for s in sentences if min_words <= len(s.split()) <= max_words and plain.fullmatch(s)]


def topic_words(sentences: list[str], tokenizer: Tokenizer, min_count: int = 3, min_len: int = 4) -> list[str]:
    """Words (at least `min_len` letters) in at least `min_count` of `sentences` that are one token after
    a space, sorted. One token each: every prompt "Write about: <topic>" then has the same length."""
    counts = Counter(w for s in sentences for w in set(words_of(s)))
    return sorted(w for w, c in counts.items() if c >= min_count and len(w) >= min_len and len(tokenizer.encode(" " + w)) == 1)


def topic_examples(sentences: list[str], topics: list[str]) -> list[Example]:
    """One SFT example per (topic, sentence containing it): "Write about: topic" -> the sentence."""
    topic_set = set(topics)
    out = []
    for s in sentences:
        for w in sorted(set(words_of(s)) & topic_set):
            out.append(Example("write", f"{PROMPT} {w}", s))
    return out


def prompt_ids(instructions: list[str], tokenizer: Tokenizer) -> torch.Tensor:
    """The chat prompts of `instructions` as one (B, P) tensor of token ids (they must have one length)."""
    ids = [tokenizer.encode(format_prompt(i), allowed_special="all") for i in instructions]
    if len({len(x) for x in ids}) != 1:
        raise ValueError("the prompts must all have the same number of tokens (use one-token topic words)")
    return torch.tensor(ids)


def decode_responses(tokens: torch.Tensor, tokenizer: Tokenizer) -> list[str]:
    """The text of each row of generated ids (B, n), up to (not including) the first <|endoftext|>.

    Other special tokens a model may sample (<|user|>, <|assistant|>) are left out of the text."""
    end = tokenizer.special_tokens[END]
    special = set(tokenizer.special_tokens.values())
    out = []
    for row in tokens.tolist():
        row = row[: row.index(end)] if end in row else row
        out.append(tokenizer.decode([t for t in row if t not in special]).strip())
    return out


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    tokenizer: Tokenizer,
    instructions: list[str],
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """One sampled response (text) per instruction, from `model` with the chat template."""
    device = next(model.parameters()).device
    idx = prompt_ids(instructions, tokenizer).to(device)  # (B, P)
    end = tokenizer.special_tokens[END]
    out = generate(model, idx, max_new_tokens, temperature, generator=generator, eos_id=end, use_cache=True)
    return decode_responses(out[:, idx.shape[1] :], tokenizer)


@dataclass(frozen=True)
class Preference:
    """A prompt with two responses, the chosen one scoring higher on the ground truth."""

    instruction: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float


def make_preferences(
    model: nn.Module,
    tokenizer: Tokenizer,
    instructions: list[str],
    seed: int = 0,
    batch_size: int = 64,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
) -> list[Preference]:
    """Two responses per instruction sampled from `model` (seeded); chosen = higher `ground_truth_score`,
    ties dropped. Pairs come in the order of `instructions`."""
    if not instructions:
        raise ValueError("make_preferences needs at least one instruction")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    pairs = []
    for i in range(0, len(instructions), batch_size):
        batch = instructions[i : i + batch_size]
        a = sample_responses(model, tokenizer, batch, max_new_tokens, temperature, generator)
        b = sample_responses(model, tokenizer, batch, max_new_tokens, temperature, generator)
        for instruction, x, y in zip(batch, a, b):
            sx, sy = ground_truth_score(x), ground_truth_score(y)
            if sx != sy:
                (c, sc), (r, sr) = sorted([(x, sx), (y, sy)], key=lambda t: -t[1])
                pairs.append(Preference(instruction, c, r, sc, sr))
    return pairs


def split_pairs(pairs: list[Preference], held_out: float = 0.2, seed: int = 0) -> tuple[list[Preference], list[Preference]]:
    """Shuffle with `seed` and split into (train, held-out); prompts of held-out pairs may also be in train."""
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    k = int(len(shuffled) * held_out)
    return shuffled[k:], shuffled[:k]


def encode_response(instruction: str, response: str, tokenizer: Tokenizer) -> tuple[list[int], int]:
    """(token ids of prompt + " " response + <|endoftext|>, number of prompt tokens)."""
    prompt = tokenizer.encode(format_prompt(instruction), allowed_special="all")
    answer = tokenizer.encode(" " + response) + [tokenizer.special_tokens[END]]
    return prompt + answer, len(prompt)


def collate_responses(
    instructions: list[str], responses: list[str], tokenizer: Tokenizer, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (tokens (B, T) long, response_mask (B, T) bool, lengths (B,) long).

    response_mask[b, t] is True where tokens[b, t] belongs to the response (its end token
    included); lengths[b] is the number of real tokens of row b."""
    encoded = [encode_response(i, r, tokenizer) for i, r in zip(instructions, responses, strict=True)]
    T = max(len(ids) for ids, _ in encoded)
    tokens = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(encoded), T, dtype=torch.bool)
    for b, (ids, p) in enumerate(encoded):
        tokens[b, : len(ids)] = torch.tensor(ids)
        mask[b, p : len(ids)] = True
    return tokens, mask, torch.tensor([len(ids) for ids, _ in encoded])
