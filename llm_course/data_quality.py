"""Quality filters and source mixing for a pretraining corpus (chapter 06, data).

Implements
- `text_stats`: the numbers heuristic filters look at: word count, mean word length, the ratio
  of symbols ("#" and "...") to words, the share of lines ending in an ellipsis or starting with
  a bullet, the share of words with a letter, how many of 8 common English words occur, the
  share of duplicated lines (and of the characters in them), and the share of characters in the
  most frequent word 2-gram;
- `Rule` and `GOPHER_RULES`: the thresholds of Gopher's "MassiveText" quality and repetition
  filters (Rae et al., 2021, appendix A; the parts that need no n-gram above 2), and
  `CODE_RULES`, limits of the kind code corpora use (line length, share of alphanumeric
  characters, repeated lines: code repeats short lines such as `else:` by nature);
  `apply_rules` returns, for each document, the first rule it breaks;
- `MixtureBatches`: a data source for the `Trainer` that draws each training window from one of
  several token streams with given weights (the "mixture" of Gopher's and Llama's data tables),
  with `realised_shares` to check the proportions it produced.

Left out: model-based filters (a classifier of "looks like Wikipedia", perplexity under a
reference model), language identification, and repetition rules on n-grams above 2.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_WORD = re.compile(r"\S+")
_BULLETS = ("*", "-", "\u2022", "\u2023", "\u25e6")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list


def text_stats(text: str) -> dict[str, float]:
    """The statistics the rules test, for one document (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"a document must be a str, got {type(text).__name__}")
    words = _WORD.findall(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    n_words, n_lines = len(words), max(len(lines), 1)
    line_counts = Counter(lines)
    dup_lines = [line for line in lines if line_counts[line] > 1]
    bigrams = Counter(zip(words, words[1:]))
    top_bigram_chars = 0
    if bigrams:
        (w1, w2), count = bigrams.most_common(1)[0]
        top_bigram_chars = count * (len(w1) + len(w2))
    word_chars = sum(len(w) for w in words)
    return {
        "words": n_words,
        "mean_word_length": word_chars / n_words if n_words else 0.0,
        "symbol_ratio": (text.count("#") + text.count("...") + text.count("\u2026")) / max(n_words, 1),
        "ellipsis_lines": sum(line.endswith(("...", "\u2026")) for line in lines) / n_lines,
        "bullet_lines": sum(line.startswith(_BULLETS) for line in lines) / n_lines,
        "stop_words": len(STOP_WORDS & {w.lower() for w in words}),
        "alpha_words": sum(any(c.isalpha() for c in w) for w in words) / max(n_words, 1),
        "duplicate_lines": len(dup_lines) / n_lines,
        "duplicate_line_chars": sum(len(line) for line in dup_lines) / max(sum(len(line) for line in lines), 1),
        "top_bigram_chars": top_bigram_chars / max(word_chars, 1),
        "max_line_length": max((len(line) for line in text.splitlines()), default=0),
        "alphanumeric": sum(c.isalnum() for c in text) / max(len(text), 1),
    }


@dataclass(frozen=True)
class Rule:
    """A document is removed when `stat` falls outside [low, high]."""

    name: str  # what the report calls it
    stat: str  # a key of text_stats
    low: float = float("-inf")
    high: float = float("inf")

    def breaks(self, stats: dict[str, float]) -> bool:
        value = stats[self.stat]
        return not self.low <= value <= self.high


GOPHER_RULES = (
    Rule("word count outside 50 .. 100,000", "words", 50, 100_000),
    Rule("mean word length outside 3 .. 10", "mean_word_length", 3, 10),
    Rule("symbol-to-word ratio above 0.1", "symbol_ratio", high=0.1),
    Rule("over 90% of lines start with a bullet", "bullet_lines", high=0.9),
    Rule("over 30% of lines end in an ellipsis", "ellipsis_lines", high=0.3),
    Rule("under 80% of words have a letter", "alpha_words", low=0.8),
    Rule("fewer than 2 of the 8 stop words", "stop_words", low=2),
    Rule("over 30% of lines are duplicated", "duplicate_lines", high=0.3),
    Rule("over 20% of characters in duplicated lines", "duplicate_line_chars", high=0.2),
    Rule("top 2-gram over 20% of characters", "top_bigram_chars", high=0.2),
)

CODE_RULES = (
    Rule("fewer than 50 words", "words", low=50),
    Rule("a line longer than 1,000 characters", "max_line_length", high=1000),
    Rule("under 25% alphanumeric characters", "alphanumeric", low=0.25),
    Rule("over 50% of characters in duplicated lines", "duplicate_line_chars", high=0.5),
    Rule("top 2-gram over 20% of characters", "top_bigram_chars", high=0.2),
)


def apply_rules(docs: Sequence[str], rules: Sequence[Rule]) -> list[str | None]:
    """For each document, the name of the first rule it breaks, or None if it passes them all."""
    known = set(text_stats(""))
    for rule in rules:
        if rule.stat not in known:
            raise ValueError(f"rule {rule.name!r} tests an unknown statistic {rule.stat!r} (known: {sorted(known)})")
    out = []
    for doc in docs:
        stats = text_stats(doc)
        out.append(next((rule.name for rule in rules if rule.breaks(stats)), None))
    return out


# ---------------------------------------------------------------------------------------
# Mixing sources
# ---------------------------------------------------------------------------------------


def _check_weights(weights: dict[str, float], names) -> dict[str, float]:
    if set(weights) != set(names):
        raise ValueError(f"weights must name every source exactly: sources {sorted(names)}, weights {sorted(weights)}")
    bad = {k: v for k, v in weights.items() if not v >= 0}
    if bad or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


class MixtureBatches:
    """The trainer's data source: batches (x, y), each (B, T), whose every window of T + 1 tokens is
    cut from source s with probability weights[s], at a uniformly random position of its stream.

    Batch i is drawn from a generator seeded with (seed, i), so the data position is one integer
    (`state_dict`). `counts` records how many windows each source gave.
    """

    def __init__(self, streams: dict[str, torch.Tensor], weights: dict[str, float], batch_size: int, seq_len: int,
                 seed: int = 0):  # fmt: skip
        if not streams:
            raise ValueError("give at least one source stream")
        for name, tokens in streams.items():
            if tokens.dim() != 1 or len(tokens) < seq_len + 1:
                raise ValueError(f"source {name!r} must be a 1-D stream of at least seq_len + 1 = {seq_len + 1} "
                                 f"tokens, got shape {tuple(tokens.shape)}")  # fmt: skip
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be at least 1, got {batch_size} and {seq_len}")
        self.names = list(streams)
        self.streams = [streams[n] for n in self.names]
        shares = _check_weights(weights, self.names)
        self.probs = torch.tensor([shares[n] for n in self.names], dtype=torch.float64)  # (S,)
        self.batch_size, self.seq_len, self.seed, self.index = batch_size, seq_len, seed, 0
        self.counts = dict.fromkeys(self.names, 0)

    def draw_sources(self, generator: torch.Generator) -> torch.Tensor:
        """(B,) source indices, each drawn with the mixture's probabilities."""
        return torch.multinomial(self.probs, self.batch_size, replacement=True, generator=generator)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.index)
        self.index += 1
        windows = []
        for s in self.draw_sources(g).tolist():
            stream = self.streams[s]
            start = int(torch.randint(0, len(stream) - self.seq_len, (1,), generator=g))
            windows.append(stream[start : start + self.seq_len + 1])
            self.counts[self.names[s]] += 1
        window = torch.stack(windows)  # (B, T + 1)
        return window[:, :-1].long(), window[:, 1:].long()

    def realised_shares(self) -> dict[str, float]:
        """The share of windows (and so of tokens) each source has given so far."""
        total = sum(self.counts.values())
        return {n: c / total if total else 0.0 for n, c in self.counts.items()}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "index": self.index, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.index, self.counts = state["seed"], state["index"], dict(state["counts"])


def removed_share(flags: Sequence, sizes: Sequence[int]) -> float:
    """The share of `sizes` (characters, tokens) in the documents whose flag is not None."""
    total = sum(sizes)
    return sum(s for f, s in zip(flags, sizes) if f is not None) / total if total else 0.0


