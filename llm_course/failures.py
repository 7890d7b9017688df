"""Measuring where language models fail (chapter 14): retrieval by position, calibration, tokens.

- **Lost in the middle** (Liu et al. 2023, "Lost in the Middle: How Language Models Use Long
  Contexts"): a synthetic key-value retrieval task. A context lists `n_pairs` pairs
  ``key value`` (distinct keys, random values), then a query token and one of the keys; the
  answer is that key's value. `train_retrieval_model` trains a small `Transformer` on it with the
  course's `Trainer` (objective `answer_cross_entropy`, data `RetrievalBatches`; cached with
  `llm_course.cache`), and `retrieval_accuracy_by_position` measures accuracy and the probability of the
  right value against the position of the answer in the context.
- **Calibration** (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the model's
  top-1 probability against how often it is right, in equal-width bins (`reliability_bins`),
  summarized by the expected calibration error (`expected_calibration_error`).
- **Tokenization artifacts**: how the chapter 02 tokenizer splits numbers and words
  (`number_splits`, `letters_in_tokens`).

Shapes: B batch, T sequence length, V vocabulary, P number of positions (pairs).
Left out: real long-context models and benchmarks, and multi-token answers.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llm_course import cache as course_cache
from llm_course.checkpoints import load_model, save_model
from llm_course.trainer import Trainer, TrainConfig
from llm_course.transformer import Transformer, TransformerConfig


# ---------------------------------------------------------------------------------------
# The synthetic retrieval task
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalTask:
    """Token layout of the key-value retrieval task: each fact "key k has value v" is one token.

    Ids: facts 0 .. n_keys n_values - 1 (fact (k, v) is k n_values + v), then the n_keys key
    tokens, then the n_values value tokens, then the query marker (the last id). An example is
    ``fact(k_0, v_0) ... fact(k_{P-1}, v_{P-1}) QUERY key(k_i)`` and its answer is ``value(v_i)``;
    i is the answer's position. One token per fact keeps the model small and its training short:
    with ``key value`` as two tokens a model must first learn to attach each value to the key
    before it, which takes far more steps than a CPU chapter can afford.
    """

    n_pairs: int = 24  # P: facts in a context (the longest context when training)
    n_keys: int = 24  # distinct keys (a context uses n_pairs of them, without repetition)
    n_values: int = 8  # distinct values (drawn with repetition)

    @property
    def n_facts(self) -> int:
        return self.n_keys * self.n_values

    @property
    def query_token(self) -> int:
        return self.n_facts + self.n_keys + self.n_values

    @property
    def vocab_size(self) -> int:
        return self.query_token + 1

    def seq_len(self, n_pairs: int | None = None) -> int:
        """Length of an example: one token per fact, the query marker and the key asked about."""
        return (self.n_pairs if n_pairs is None else n_pairs) + 2


def retrieval_prompt(keys: list[int], values: list[int], query_index: int, n_keys: int, n_values: int) -> tuple[torch.Tensor, int]:
    """The example for facts keys[j] -> values[j] asking for keys[query_index], and its answer.

    keys in 0 .. n_keys - 1, values in 0 .. n_values - 1. Returns (ids, target): the 1-D long
    tensor ``[k_0 n_values + v_0, ..., F + K + V, F + keys[query_index]]`` (F = n_keys n_values
    fact tokens, K = n_keys, V = n_values; F + K + V is the query marker) and the int
    F + K + values[query_index], the id of the answer's value token.
    """
    if len(keys) != len(values):
        raise ValueError(f"keys and values must have the same length, got {len(keys)} and {len(values)}")
    if not 0 <= query_index < len(keys):
        raise IndexError(f"query_index {query_index} is outside 0 .. {len(keys) - 1}")
    n_facts = n_keys * n_values
    facts = [k * n_values + v for k, v in zip(keys, values)]
    ids = facts + [n_facts + n_keys + n_values, n_facts + keys[query_index]]
    return torch.tensor(ids, dtype=torch.long), n_facts + n_keys + int(values[query_index])


def make_retrieval_batch(
    task: RetrievalTask,
    batch_size: int,
    generator: torch.Generator,
    n_pairs: int | None = None,
    answer_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of examples with `n_pairs` facts (default task.n_pairs): ids (B, T), targets (B,), positions (B,).

    Keys are a random choice of n_pairs distinct keys in random order, values are uniform; the
    answer positions are uniform over 0 .. n_pairs - 1 unless given (B,).
    """
    P = task.n_pairs if n_pairs is None else n_pairs
    if P > task.n_keys:
        raise ValueError(f"n_pairs ({P}) cannot exceed the number of distinct keys ({task.n_keys})")
    keys = torch.rand(batch_size, task.n_keys, generator=generator).argsort(dim=-1)[:, :P]  # (B, P) distinct
    values = torch.randint(0, task.n_values, (batch_size, P), generator=generator)  # (B, P)
    if answer_positions is None:
        answer_positions = torch.randint(0, P, (batch_size,), generator=generator)
    rows = torch.arange(batch_size)
    query = torch.full((batch_size, 1), task.query_token, dtype=torch.long)
    asked = task.n_facts + keys[rows, answer_positions][:, None]  # (B, 1): the key token
    ids = torch.cat([keys * task.n_values + values, query, asked], dim=1)  # (B, P + 2)
    return ids, task.n_facts + task.n_keys + values[rows, answer_positions], answer_positions


def make_retrieval_example(
    task: RetrievalTask, answer_position: int, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """One example whose answer sits at pair `answer_position`: (ids (T,), target)."""
    ids, targets, _ = make_retrieval_batch(task, 1, generator, answer_positions=torch.tensor([answer_position]))
    return ids[0], int(targets[0])


# ---------------------------------------------------------------------------------------
# Training the retrieval model (cached)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalTraining:
    """How the retrieval model is trained: a curriculum from short to full-length contexts, and where its answers sit."""

    task: RetrievalTask = RetrievalTask()
    d_model: int = 64  # width of the model
    n_layers: int = 1  # one attention layer can match the asked key against the facts
    n_heads: int = 4  # attention heads per layer
    position: str = "learned"  # position encoding (learned, as in GPT-2)
    steps: int = 1500  # optimizer steps
    batch_size: int = 64  # examples per step
    lr: float = 3e-3  # peak AdamW learning rate (linear warmup over 5% of the steps, then constant)
    min_pairs: int = 2  # the curriculum starts with contexts of this many pairs ...
    curriculum_steps: int = 600  # ... and reaches task.n_pairs here; after it lengths are uniform in min_pairs .. n_pairs
    middle_weight: float = 1.0  # how often the answer sits mid-context, relative to the two ends (1: uniform)
    seed: int = 0  # initialization and data

    def model_config(self) -> TransformerConfig:
        return TransformerConfig(
            vocab_size=self.task.vocab_size, context_length=self.task.seq_len(), d_model=self.d_model,
            n_layers=self.n_layers, n_heads=self.n_heads, position=self.position,
        )  # fmt: skip


def answer_position_weights(n_pairs: int, middle_weight: float) -> torch.Tensor:
    """Sampling weights (n_pairs,) of the answer's position: 1 at both ends, `middle_weight` in the middle, linear between."""
    if n_pairs == 1:
        return torch.ones(1)
    distance_from_middle = (torch.arange(n_pairs) / (n_pairs - 1) * 2 - 1).abs()  # 1 at the ends, 0 in the middle
    return middle_weight + (1 - middle_weight) * distance_from_middle


def _curriculum_pairs(cfg: RetrievalTraining, step: int, generator: torch.Generator) -> int:
    longest = cfg.min_pairs + (cfg.task.n_pairs - cfg.min_pairs) * min(1.0, step / max(1, cfg.curriculum_steps))
    return int(torch.randint(cfg.min_pairs, int(round(longest)) + 1, (1,), generator=generator))


@dataclass
class RetrievalBatches:
    """The retrieval model's training data, a data source of the `Trainer`: batch i has a curriculum
    length of contexts and answers placed by `answer_position_weights`, drawn from a generator seeded
    with (seed, i). Its state is the number of batches drawn, so a resumed run continues exactly."""

    cfg: RetrievalTraining
    drawn: int = 0  # batches handed out so far (the curriculum's step)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, T), targets (B,)): B examples of one context length, the answers of their queries."""
        cfg = self.cfg
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.drawn)
        n_pairs = _curriculum_pairs(cfg, self.drawn, generator)
        weights = answer_position_weights(n_pairs, cfg.middle_weight)
        positions = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=generator)  # (B,)
        ids, targets, _ = make_retrieval_batch(cfg.task, cfg.batch_size, generator, n_pairs, positions)
        self.drawn += 1
        return ids, targets

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = state["drawn"]


def answer_cross_entropy(model: Transformer, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """The retrieval model's objective: the cross-entropy of the answer alone, predicted after the query key."""
    ids, targets = batch  # (B, T), (B,)
    logits = model(ids)[:, -1]  # (B, V)
    return F.cross_entropy(logits.float(), targets), {}


def retrieval_train_config(cfg: RetrievalTraining) -> TrainConfig:
    """The `Trainer`'s settings: AdamW (PyTorch's fused kernel: for a model this small the optimizer's
    per-tensor overhead is a large part of a step; betas 0.9, 0.999, no weight decay), a linear warmup
    over the first 5% of the steps, then the peak rate to the end (a cosine down to min_lr_ratio 1),
    clipping at 1."""
    return TrainConfig(
        batch_size=cfg.batch_size, seq_len=cfg.task.seq_len(), max_steps=cfg.steps, lr=cfg.lr, min_lr_ratio=1.0,
        warmup_steps=max(1, cfg.steps // 20), weight_decay=0.0, beta2=0.999, grad_clip=1.0, eval_interval=0,
        spike_threshold=0.0, fused_adamw=True, seed=cfg.seed,
    )  # fmt: skip


def train_retrieval_model(cfg: RetrievalTraining = RetrievalTraining(), log: Callable[[str], None] | None = None):
    """Train a Transformer on the retrieval task with the course's `Trainer`; the loss is the
    cross-entropy of the answer only (`answer_cross_entropy`), the data `RetrievalBatches`.

    Returns (model, losses): the model in eval mode and the loss of every step.
    """
    model = Transformer(cfg.model_config(), generator=torch.Generator().manual_seed(cfg.seed))
    trainer = Trainer(model, retrieval_train_config(cfg), data=RetrievalBatches(cfg), objective=answer_cross_entropy,
                      log=log)  # fmt: skip
    losses = trainer.train()["loss"]
    if log is not None:
        log(f"{cfg.steps} steps: loss of the last 50 {sum(losses[-50:]) / len(losses[-50:]):.3f}")
    return model.eval(), losses


def retrieval_cache_dir(cfg: RetrievalTraining = RetrievalTraining(), cache: str | Path | None = None) -> Path:
    """$LLM_COURSE_CACHE (or ~/.cache/llm_course) / failures / retrieval-<key>: the key hashes the
    settings and the code of this module and of every llm_course module it imports (`llm_course.cache`)."""
    return course_cache.entry_dir("failures", "retrieval", cfg, __name__, cache)


def load_retrieval_model(
    cfg: RetrievalTraining = RetrievalTraining(), cache: str | Path | None = None, log: Callable[[str], None] | None = None
) -> tuple[Transformer, dict]:
    """The trained retrieval model and its info (losses, seconds): trained once, then read from the cache."""

    def build(tmp: Path) -> None:
        start = time.perf_counter()
        model, losses = train_retrieval_model(cfg, log)
        save_model(model, tmp)
        info = {"settings": dataclasses.asdict(cfg), "losses": losses, "seconds": time.perf_counter() - start}
        (tmp / "info.json").write_text(json.dumps(info))

    folder = course_cache.cached_entry("failures", "retrieval", cfg, __name__, build, cache)
    model = load_model(folder).eval()
    return model, json.loads((folder / "info.json").read_text())


# ---------------------------------------------------------------------------------------
# Accuracy against the answer's position
# ---------------------------------------------------------------------------------------


def accuracy_by_position(
    predictions: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor, n_positions: int
) -> torch.Tensor:
    """Fraction of correct predictions among the examples at each position: (n_positions,) float.

    predictions, targets, positions: (N,) ints. A position with no example gets NaN.
    """
    correct = (predictions == targets).double()  # (N,)
    totals = torch.zeros(n_positions, dtype=torch.float64).index_add_(0, positions, correct)
    counts = torch.zeros(n_positions, dtype=torch.float64).index_add_(0, positions, torch.ones_like(correct))
    return totals / counts  # 0 / 0 = NaN where a position has no example


@torch.no_grad()
def retrieval_accuracy_by_position(
    model: Transformer, task: RetrievalTask, n_per_position: int, generator: torch.Generator, batch_size: int = 512
) -> dict[str, torch.Tensor]:
    """Accuracy, its standard error and the mean probability of the right value at each answer position.

    `n_per_position` fresh examples of task.n_pairs pairs per position. Returns a dict of (P,)
    tensors: "accuracy", "stderr" (sqrt(a (1 - a) / n)), "prob_correct".
    """
    P = task.n_pairs
    positions = torch.arange(P).repeat(n_per_position)  # (N,)
    predictions, targets, probs = [], [], []
    for begin in range(0, len(positions), batch_size):
        chunk = positions[begin : begin + batch_size]
        ids, target, _ = make_retrieval_batch(task, len(chunk), generator, answer_positions=chunk)
        p = model(ids)[:, -1].float().softmax(dim=-1)  # (B, V)
        predictions.append(p.argmax(dim=-1))
        targets.append(target)
        probs.append(p.gather(1, target[:, None])[:, 0])
    predictions, targets, probs = torch.cat(predictions), torch.cat(targets), torch.cat(probs)
    accuracy = accuracy_by_position(predictions, targets, positions, P)
    prob_correct = torch.zeros(P, dtype=torch.float64).index_add_(0, positions, probs.double()) / n_per_position
    return {"accuracy": accuracy, "stderr": (accuracy * (1 - accuracy) / n_per_position).sqrt(), "prob_correct": prob_correct}


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------


def _bin_index(probs: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-width bins on [0, 1]: bin b holds b / n_bins <= p < (b + 1) / n_bins; p = 1 joins the last bin."""
    return (probs.double() * n_bins).floor().long().clamp(0, n_bins - 1)


def reliability_bins(probs: torch.Tensor, correct: torch.Tensor, n_bins: int = 10) -> tuple[torch.Tensor, ...]:
    """Per bin of the predicted probability: (mean confidence, accuracy, count), each (n_bins,).

    Empty bins have NaN confidence and accuracy and count 0.
    """
    index = _bin_index(probs, n_bins)
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(probs, dtype=torch.float64))
    confidence = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, probs.double()) / counts
    accuracy = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, correct.double()) / counts
    return confidence, accuracy, counts


def expected_calibration_error(probs: torch.Tensor, correct: torch.Tensor, n_bins: int = 10) -> float:
    """ECE = sum over bins b of (n_b / N) |accuracy_b - confidence_b| (equal-width bins, empty ones skipped).

    probs (N,): the probability the model gave its answer; correct (N,) bool: whether it was right.
    """
    confidence, accuracy, counts = reliability_bins(probs, correct, n_bins)
    full = counts > 0
    return float((counts[full] / counts.sum() * (accuracy[full] - confidence[full]).abs()).sum())


@torch.no_grad()
def next_token_predictions(model: Transformer, ids: torch.Tensor, context_length: int | None = None) -> dict[str, torch.Tensor]:
    """The model's top-1 next-token prediction at every position of `ids` (1-D), in disjoint windows.

    Returns (N,) tensors: "predicted", "target", "prob" (of the predicted token),
    "prob_target" (of the true next token) and "correct"; N = len(ids) - 1.
    """
    L = context_length or model.config.context_length
    out = {"predicted": [], "target": [], "prob": [], "prob_target": []}
    for begin in range(0, len(ids) - 1, L):
        x = ids[begin : begin + L + 1]
        p = model(x[None, :-1])[0].float().softmax(dim=-1)  # (T, V)
        prob, predicted = p.max(dim=-1)
        out["predicted"].append(predicted)
        out["target"].append(x[1:])
        out["prob"].append(prob)
        out["prob_target"].append(p.gather(1, x[1:, None])[:, 0])
    result = {k: torch.cat(v) for k, v in out.items()}
    result["correct"] = result["predicted"] == result["target"]
    return result


# ---------------------------------------------------------------------------------------
# Tokenization artifacts
# ---------------------------------------------------------------------------------------


def number_splits(tokenizer, number: str, contexts: tuple[str, ...] = ("{}", " {}", "x = {}", "({})", "{}.")) -> list[list[str]]:
    """How `number` is cut into tokens in each context: the token strings that cover its digits."""
    splits = []
    for context in contexts:
        text = context.format(number)
        start = text.index(number)
        pieces, offset = [], 0
        for i in tokenizer.encode_ordinary(text):
            piece = tokenizer.decode_bytes([i]).decode("utf-8", errors="replace")
            if offset + len(piece) > start and offset < start + len(number):
                pieces.append(piece)
            offset += len(piece)
        splits.append(pieces)
    return splits


def letters_in_tokens(tokenizer, word: str) -> list[tuple[str, int]]:
    """The tokens of `word` with their lengths in characters: what a model sees instead of letters."""
    return [(tokenizer.token_str(i), len(tokenizer.decode_bytes([i]).decode("utf-8", errors="replace")))
            for i in tokenizer.encode_ordinary(word)]  # fmt: skip
