"""Benchmark contamination: a planted leak, its effect on the score, and two ways to detect it (chapter 14).

A benchmark is contaminated when its items, or text close to them, were in the training data:
the model can then score by recalling rather than by solving. This module

- plants a leak: `load_contaminated` continues training the chapter 06 model ("tiny") on a mix
  of passages it already saw and `leaked` benchmark passages (`LeakTraining`; the course's
  `Trainer`, cached with `llm_course.cache`);
- detects it from the data, as Brown et al. (2020, "Language Models are Few-Shot Learners",
  appendix C) did for GPT-3: the share of an item's word n-grams (they used 13-grams) that also
  occur in the training data (`word_ngrams`, `ngram_overlap`);
- detects it from the model alone, with the Min-K% Prob score of Shi et al. (2024, "Detecting
  Pretraining Data from Large Language Models"): the mean log-probability of the k% least likely
  tokens of a text (`token_log_probs`, `min_k_percent`); seen text has fewer surprising tokens.
  `auc` measures how well a score separates leaked items from clean ones.

Shapes: B batch, T sequence length, V vocabulary; P and N positive and negative scores.
Left out: paraphrased or translated leaks (n-grams miss them), reference-model calibration of
membership scores, and the decontamination of real pretraining corpora.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llm_course import cache as course_cache
from llm_course.checkpoints import load_model, save_model
from llm_course.shuffled_batches import ShuffledBatches
from llm_course.trainer import TrainConfig, Trainer

_WORD = re.compile(r"\w+")


# ---------------------------------------------------------------------------------------
# Detection from the data: n-gram overlap
# ---------------------------------------------------------------------------------------


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Every run of n consecutive words of `text` (lower-cased runs of letters, digits and
    underscores, so that spacing and punctuation do not hide a copy)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(item: str, training_ngrams: set[tuple[str, ...]], n: int) -> float:
    """Share of the item's word n-grams that occur in the training data (`word_ngrams(data, n)`).

    1.0: every n-gram was seen (a verbatim copy); 0.0: none. An item shorter than n words has no
    n-grams and gets NaN (it cannot be judged this way)."""
    grams = word_ngrams(item, n)
    if not grams:
        return math.nan
    if training_ngrams and len(next(iter(training_ngrams))) != n:
        raise ValueError(f"the training n-grams have length {len(next(iter(training_ngrams)))}, not n = {n}")
    return sum(g in training_ngrams for g in grams) / len(grams)


# ---------------------------------------------------------------------------------------
# Detection from the model: Min-K% Prob
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def token_log_probs(model, tokenizer, text: str) -> torch.Tensor:
    """log p(token t | tokens before it) for every token of `text` after the first: (T - 1,).

    Texts longer than the model's context are scored on their first context_length + 1 tokens."""
    ids = torch.tensor(tokenizer.encode_ordinary(text)[: model.config.context_length + 1])
    if len(ids) < 2:
        raise ValueError(f"{text!r} has fewer than 2 tokens: no token has a context to be predicted from")
    log_probs = F.log_softmax(model(ids[None, :-1])[0].float(), dim=-1)  # (T - 1, V)
    return log_probs.gather(1, ids[1:, None])[:, 0]


def min_k_percent(log_probs: torch.Tensor, k: float = 0.2) -> float:
    """Min-K% Prob: the mean of the ceil(k T) lowest of T token log-probabilities.

    k = 1 is the mean log-likelihood (minus the log-perplexity). A small k keeps only the
    surprising tokens: in text the model has not seen, a few words are very unlikely, and
    they are what memorisation removes first."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    if log_probs.numel() == 0:
        raise ValueError("min_k_percent needs at least one log-probability")
    n = math.ceil(round(k * log_probs.numel(), 9))  # round first: 0.7 * 10 is 7.000000000000001 in floating point
    return float(log_probs.flatten().sort().values[:n].mean())


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve of a score that should be higher for `positive` items:
    P(score of a random positive > score of a random negative), ties counting 1/2 (Mann-Whitney U)."""
    if positive.numel() == 0 or negative.numel() == 0:
        raise ValueError("auc needs at least one positive and one negative score")
    diff = positive.double().flatten()[:, None] - negative.double().flatten()[None, :]  # (P, N)
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


# ---------------------------------------------------------------------------------------
# Planting the leak (a short continued pretraining, cached)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeakTraining:
    """A continued pretraining of the chapter 06 model whose data hides a copy of some benchmark items."""

    leaked: tuple[str, ...]  # the benchmark texts that leak into the training data
    filler: tuple[str, ...]  # ordinary training text, mixed in (passages the model already trained on)
    copies: int = 2  # how many times each leaked text is in the data (web copies of a benchmark repeat)
    steps: int = 40  # optimizer steps
    batch_size: int = 16  # texts per step
    lr: float = 1e-3  # AdamW learning rate (constant after a 4-step warmup)
    seed: int = 0  # data order


def leak_batches(cfg: LeakTraining, tokenizer, context_length: int) -> ShuffledBatches:
    """The data: every filler text once and every leaked text `copies` times, shuffled, as
    right-padded (inputs (B, T), targets (B, T)) with target -100 on the padding."""
    texts = list(cfg.filler) + [t for t in cfg.leaked for _ in range(cfg.copies)]
    encoded = [tokenizer.encode_ordinary(t)[: context_length + 1] for t in texts]
    if any(len(e) < 2 for e in encoded):
        raise ValueError("every leaked and filler text needs at least 2 tokens")

    def collate(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        T = max(len(r) for r in rows) - 1
        inputs = torch.zeros(len(rows), T, dtype=torch.long)
        targets = torch.full((len(rows), T), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            inputs[i, : len(r) - 1], targets[i, : len(r) - 1] = torch.tensor(r[:-1]), torch.tensor(r[1:])
        return inputs, targets

    return ShuffledBatches(encoded, cfg.batch_size, collate, cfg.seed)


def padded_lm_loss(model, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy over the targets that are not padding (-100)."""
    inputs, targets = batch  # (B, T), (B, T)
    logits = model(inputs)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100), {}


def train_with_leak(model, tokenizer, cfg: LeakTraining) -> list[float]:
    """Continue training `model` in place on `leak_batches` with the course's `Trainer`; returns the losses."""
    data = leak_batches(cfg, tokenizer, model.config.context_length)
    config = TrainConfig(
        batch_size=data.batch_size, seq_len=model.config.context_length, max_steps=cfg.steps, lr=cfg.lr,
        min_lr_ratio=1.0, warmup_steps=4, weight_decay=0.0, beta2=0.999, grad_clip=1.0, eval_interval=0,
        spike_threshold=0.0, seed=cfg.seed,
    )  # fmt: skip
    model.train()
    losses = Trainer(model, config, data=data, objective=padded_lm_loss, log=None).train()["loss"]
    model.eval()
    return losses


def load_contaminated(cfg: LeakTraining, cache: str | Path | None = None):
    """(model, tokenizer, info): the chapter 06 "tiny" model after `train_with_leak`, trained once,
    then read from the cache. The key covers `cfg` (the leaked texts included), the pretrained
    model's cache folder (keyed by its own recipe, corpus and code) and this module's code."""
    from llm_course.pretrained import load_pretrained, pretrained_dir

    model, tokenizer = load_pretrained("tiny", log=None)
    settings = {"leak": cfg, "base": pretrained_dir("tiny").name}

    def build(tmp: Path) -> None:
        start = time.perf_counter()
        losses = train_with_leak(model, tokenizer, cfg)
        save_model(model, tmp)
        info = {"settings": dataclasses.asdict(cfg), "losses": losses, "seconds": time.perf_counter() - start}
        (tmp / "info.json").write_text(json.dumps(info))

    folder = course_cache.cached_entry("contamination", "leak", settings, __name__, build, cache)
    return load_model(folder).eval(), tokenizer, json.loads((folder / "info.json").read_text())


def split_leaked(n_items: int, share: float = 0.5, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded random split of items 0 .. n_items - 1 into (leaked, clean), sorted."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    n = round(share * n_items)
    return sorted(order[:n]), sorted(order[n:])
