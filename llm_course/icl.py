"""In-context learning, induction heads, and how a metric can make an ability "emerge" (chapter 15).

Implements
- a synthetic task that can only be solved from the prompt (`MappingTask`): every sequence draws a
  fresh random mapping from `n_keys` keys to answers of `answer_len` value tokens, then shows
  examples ``key answer key answer ...``; a query is a key whose answer the model must produce.
  Nothing about a mapping survives from one sequence to the next, so whatever the model knows about
  a query it read in the prompt. `MappingBatches` feeds fresh sequences to the course's `Trainer`;
  `make_prompts` builds evaluation prompts with `n` examples and a query;
- `score_answers`: the per-token log-likelihood of an answer (a smooth metric) and its exact match
  (a sharp one: every token right under greedy decoding), and `icl_curve`, both against the number
  of examples; `ideal_curve`, what a perfect in-context learner scores;
- `attention_patterns` (every layer's attention weights, recomputed from the module's own
  projections), `induction_score` (Olsson et al., 2022, "In-context Learning and Induction Heads":
  the attention from a token to the token after its previous occurrence), `repeated_random_tokens`
  to measure it, and `ablate_heads`, which zeroes chosen heads' outputs;
- `train_icl_model`: a small `Transformer` trained with `llm_course.trainer.Trainer`, with
  snapshots of its weights at chosen steps, cached on disk (`load_icl_run`, `llm_course.cache`);
- `shell_volume_fraction`: the share of a unit n-ball's volume within eps of its surface,
  1 - (1 - eps)^n, for the "high-dimensional shell" claim of the seeds.

Shapes: B batch, T sequence length, H heads, V vocabulary, m answer tokens.
Left out: natural-language tasks, large models, and the learning-rate/data mix that makes real
models' in-context learning; the mechanism here is the one Olsson et al. found in small models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange

from llm_course.attention import attention_weights
from llm_course.cache import cached_entry
from llm_course.checkpoints import load_model, save_model
from llm_course.trainer import TrainConfig, Trainer
from llm_course.transformer import Transformer, TransformerConfig


# ---------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MappingTask:
    """Token layout of the in-context mapping task.

    Ids: keys 0 .. K - 1, value tokens K .. K + V - 1, and BOS = K + V (the last id). A sequence
    is ``BOS k_1 a_1 k_2 a_2 ...`` where each answer a_i is `answer_len` value tokens, the
    answer the sequence's own random mapping gives key k_i. Keys are drawn with replacement, so
    a key can come back, with the same answer: that repetition is all there is to learn.
    """

    n_keys: int = 4  # K: keys of a mapping
    n_values: int = 8  # V: value tokens an answer is made of
    answer_len: int = 2  # m: value tokens per answer (m > 1 makes exact match a sharp metric)
    n_examples: int = 10  # examples per training sequence (sets the model's context length)

    def __post_init__(self):
        for name in ("n_keys", "n_values", "answer_len", "n_examples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    @property
    def bos(self) -> int:
        return self.n_keys + self.n_values

    @property
    def vocab_size(self) -> int:
        return self.n_keys + self.n_values + 1

    def seq_len(self, n_examples: int | None = None) -> int:
        """Tokens of a sequence of `n_examples` examples (default: a training sequence)."""
        n = self.n_examples if n_examples is None else n_examples
        return 1 + n * (1 + self.answer_len)


def _check_count(name: str, value, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def random_mappings(task: MappingTask, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """B fresh mappings: answers (B, K, m), the value-token ids of each key's answer."""
    return task.n_keys + torch.randint(0, task.n_values, (batch_size, task.n_keys, task.answer_len), generator=generator)


def make_sequences(
    task: MappingTask, batch_size: int, n_examples: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B sequences of `n_examples` examples: ids (B, 1 + n (1 + m)), their mappings (B, K, m), keys (B, n)."""
    _check_count("batch_size", batch_size, 1)
    _check_count("n_examples", n_examples)
    mapping = random_mappings(task, batch_size, generator)  # (B, K, m)
    keys = torch.randint(0, task.n_keys, (batch_size, n_examples), generator=generator)  # (B, n)
    answers = mapping.gather(1, keys[..., None].expand(-1, -1, task.answer_len))  # (B, n, m)
    pairs = torch.cat([keys[..., None], answers], dim=-1).flatten(1)  # (B, n (1 + m))
    bos = torch.full((batch_size, 1), task.bos, dtype=torch.long)
    return torch.cat([bos, pairs], dim=1), mapping, keys


def make_prompts(
    task: MappingTask,
    batch_size: int,
    n_examples: int,
    generator: torch.Generator,
    query: Literal["any", "seen"] = "any",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluation prompts: ``BOS k_1 a_1 ... k_n a_n q`` (B, 2 + n (1 + m)), answers (B, m), seen (B,).

    `query="any"`: q is any of the K keys, so it may not be in the prompt (then no model can know
    its answer). `query="seen"`: q is the key of a random example of the prompt (needs n >= 1).
    `seen` says whether q appears among the examples.
    """
    if query not in ("any", "seen"):
        raise ValueError(f'query must be "any" or "seen", got {query!r}')
    if query == "seen" and n_examples < 1:
        raise ValueError('query="seen" needs at least one example in the prompt (n_examples >= 1)')
    ids, mapping, keys = make_sequences(task, batch_size, n_examples, generator)
    if query == "any":
        q = torch.randint(0, task.n_keys, (batch_size,), generator=generator)  # (B,)
    else:
        q = keys[torch.arange(batch_size), torch.randint(0, n_examples, (batch_size,), generator=generator)]
    answers = mapping[torch.arange(batch_size), q]  # (B, m)
    seen = (keys == q[:, None]).any(dim=1)  # (B,)
    return torch.cat([ids, q[:, None]], dim=1), answers, seen


# ---------------------------------------------------------------------------------------
# Scoring answers: a smooth metric and a sharp one
# ---------------------------------------------------------------------------------------


def score_answers(model, prompts: torch.Tensor, answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-likelihood and exact match of the answers (B, m) after the prompts (B, T).

    The model reads the prompt followed by the answer's first m - 1 tokens (teacher forcing); the
    logits at the last m positions predict the m answer tokens. Returns
    - log_likelihood (B,) float: the mean over the m tokens of log p(answer token | everything before);
    - exact_match (B,) bool: every answer token is the model's most likely token there, which is
      exactly when greedy decoding would write the whole answer.
    """
    if prompts.dim() != 2 or answers.dim() != 2 or prompts.shape[0] != answers.shape[0]:
        raise ValueError(
            "prompts must be (B, T) and answers (B, m) with the same B, "
            f"got {tuple(prompts.shape)} and {tuple(answers.shape)}"
        )
    if answers.shape[1] < 1:
        raise ValueError("answers must have at least one token")
    m = answers.shape[1]
    ids = torch.cat([prompts, answers[:, :-1]], dim=1)  # (B, T + m - 1)
    logits = model(ids)[:, -m:].float()  # (B, m, V): position T - 1 + j predicts answer token j
    log_probs = logits.log_softmax(dim=-1)
    token_ll = log_probs.gather(-1, answers[..., None].long())[..., 0]  # (B, m)
    exact = (logits.argmax(dim=-1) == answers).all(dim=1)  # (B,)
    return token_ll.mean(dim=1), exact


@torch.no_grad()
def icl_curve(
    model,
    task: MappingTask,
    n_examples: Sequence[int],
    n_prompts: int,
    generator: torch.Generator,
    query: Literal["any", "seen"] = "any",
    batch_size: int = 500,
) -> dict[str, torch.Tensor]:
    """In-context learning against the number of examples: (len(n_examples),) float64 tensors.

    For each n, `n_prompts` fresh prompts (`make_prompts`). "exact_match": share of answers exactly
    right; "log_likelihood": mean per-token log-likelihood of the answer; "seen": share of queries
    that were in the prompt.
    """
    _check_count("n_prompts", n_prompts, 1)
    was_training = model.training
    model.eval()
    out = {k: [] for k in ("exact_match", "log_likelihood", "seen")}
    for n in n_examples:
        sums = dict.fromkeys(out, 0.0)
        for start in range(0, n_prompts, batch_size):
            b = min(batch_size, n_prompts - start)
            prompts, answers, seen = make_prompts(task, b, n, generator, query)
            prompts, answers = prompts.to(_device(model)), answers.to(_device(model))
            ll, exact = score_answers(model, prompts, answers)
            sums["exact_match"] += exact.double().sum().item()
            sums["log_likelihood"] += ll.double().sum().item()
            sums["seen"] += seen.double().sum().item()
        for k in out:
            out[k].append(sums[k] / n_prompts)
    model.train(was_training)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def ideal_curve(
    task: MappingTask, n_examples: Sequence[int], query: Literal["any", "seen"] = "any"
) -> dict[str, torch.Tensor]:
    """What a perfect in-context learner scores: right on every key it has seen, uniform on the others.

    With n examples a given key is among them with probability 1 - (1 - 1/K)^n; an unseen key's
    answer is a uniform guess, exact with probability V^-m and log-likelihood -log V per token.
    """
    n = torch.tensor(list(n_examples), dtype=torch.float64)
    seen = 1 - (1 - 1 / task.n_keys) ** n if query == "any" else torch.ones_like(n)
    guess = float(task.n_values) ** -task.answer_len
    return {
        "seen": seen,
        "exact_match": seen + (1 - seen) * guess,
        "log_likelihood": -(1 - seen) * math.log(task.n_values),
    }


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------
# Attention patterns, induction heads, ablation
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def attention_patterns(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """The attention weights of every layer and head on ids (B, T): (L, B, H, T, T).

    Each attention module's input is caught with a forward pre-hook, and its weights are
    recomputed from the module's own projections (`MultiHeadAttention.project`, RoPE included)
    with the causal mask, as its forward computes them (without dropout, in eval mode).
    """
    caught: list[torch.Tensor] = []

    def catch(module, args, kwargs):
        x = args[0]
        positions = args[1] if len(args) > 1 else kwargs.get("positions")
        mask = args[2] if len(args) > 2 else kwargs.get("mask")
        q, k, _ = module.project(x, positions)  # (B, H, T, D), (B, H_kv, T, D)
        caught.append(attention_weights(q, k, mask=mask, causal=True).float())  # (B, H, T, T)

    handles = [block.attn.register_forward_pre_hook(catch, with_kwargs=True) for block in model.blocks]
    try:
        model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(caught)  # (L, B, H, T, T)


def induction_score(attention: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """How much each head attends like an induction head: (H,) in [0, 1].

    attention (B, H, T, T): weights from query position i (rows) to key position j (columns);
    tokens (B, T). For every position i whose token occurred before, let j be its most recent
    earlier occurrence; an induction head attends from i to j + 1, the token that followed it
    (and so predicts it comes next). The score of a head is its attention weight on j + 1,
    averaged over all such (b, i). Positions whose token is new do not count.
    """
    if attention.dim() != 4 or tokens.dim() != 2 or attention.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"attention must be (B, H, T, T) and tokens (B, T), got {tuple(attention.shape)} and {tuple(tokens.shape)}"
        )
    B, H, T, T2 = attention.shape
    if T != T2 or tokens.shape[1] != T:
        raise ValueError(
            "attention (B, H, T, T) and tokens (B, T) must share T, "
            f"got {tuple(attention.shape)} and {tuple(tokens.shape)}"
        )
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, T, T): same[b, i, j] = tokens i and j are equal
    earlier = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(diagonal=-1)  # j < i
    candidates = same & earlier  # (B, T, T)
    has_previous = candidates.any(dim=-1)  # (B, T)
    if not has_previous.any():
        raise ValueError("no token repeats in `tokens`: the induction score needs repeated tokens")
    column = torch.arange(T, device=tokens.device)
    previous = torch.where(candidates, column, -1).amax(dim=-1)  # (B, T): most recent earlier occurrence
    target = (previous + 1).clamp(max=T - 1)  # (B, T): the token after it (j + 1 <= i since j < i)
    weight = attention.gather(-1, target[:, None, :, None].expand(B, H, T, 1))[..., 0]  # (B, H, T)
    mask = has_previous[:, None, :].to(weight.dtype)  # (B, 1, T)
    return (weight * mask).sum(dim=(0, 2)) / mask.sum(dim=(0, 2))


def repeated_random_tokens(
    batch_size: int, length: int, vocab: Sequence[int] | torch.Tensor, generator: torch.Generator, bos: int | None = None
) -> torch.Tensor:
    """Sequences of `length` distinct random tokens from `vocab`, repeated once: (B, [1 +] 2 length).

    The first half has no repeats, so in the second half every token's previous occurrence is
    exactly `length` positions back, and an induction head attends to the one after it. `bos`,
    if given, is put in front.
    """
    vocab = torch.as_tensor(vocab, dtype=torch.long).flatten()
    _check_count("batch_size", batch_size, 1)
    if not 1 <= length <= len(vocab):
        raise ValueError(f"length must be in 1 .. {len(vocab)} (distinct tokens of vocab), got {length}")
    order = torch.rand(batch_size, len(vocab), generator=generator).argsort(dim=-1)[:, :length]  # (B, L)
    half = vocab[order]  # (B, L)
    parts = [half, half]
    if bos is not None:
        parts.insert(0, torch.full((batch_size, 1), bos, dtype=torch.long))
    return torch.cat(parts, dim=1)


@contextlib.contextmanager
def ablate_heads(model: Transformer, heads: Sequence[tuple[int, int]]) -> Iterator[Transformer]:
    """Within the block, the outputs of `heads` [(layer, head), ...] are zeroed: those heads write nothing.

    A forward pre-hook on each layer's output projection w_o zeroes the head's D columns of its
    input (the concatenated head outputs), so w_o's bias still applies. The model is unchanged after.
    """
    n_layers, n_heads = len(model.blocks), model.config.n_heads
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"head (layer {layer}, head {head}) is outside the model's {n_layers} layers x {n_heads} heads")
        by_layer.setdefault(layer, []).append(head)
    d_head = model.config.d_head

    def make_hook(zeroed: list[int]):
        def hook(module, args):
            x = rearrange(args[0], "b t (h d) -> b t h d", d=d_head).clone()  # (B, T, H, D)
            x[:, :, zeroed] = 0
            return (rearrange(x, "b t h d -> b t (h d)"),) + tuple(args[1:])

        return hook

    handles = [model.blocks[layer].attn.w_o.register_forward_pre_hook(make_hook(hs)) for layer, hs in by_layer.items()]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------
# Training (with the course's Trainer), snapshots, cache
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ICLRun:
    """One training run on the mapping task: the model's shape, the schedule, and the snapshot steps."""

    task: MappingTask = MappingTask()
    d_model: int = 32  # width
    n_layers: int = 2  # an induction head needs two layers: one to look back a token, one to match
    n_heads: int = 2  # attention heads per layer
    position: str = "rope"  # relative positions make a previous-token head easy to learn
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # sequences per step
    lr: float = 1e-2  # peak learning rate (warmup, then cosine)
    seed: int = 0  # initialization and data
    snapshots: tuple[int, ...] = field(default=(50, 100, 200, 300, 400, 600, 800))  # steps whose weights are kept

    def __post_init__(self):
        bad = [s for s in self.snapshots if not 0 < s <= self.steps]
        if bad:
            raise ValueError(f"snapshot steps must be in 1 .. steps ({self.steps}), got {bad}")

    def model_config(self) -> TransformerConfig:
        return TransformerConfig(
            vocab_size=self.task.vocab_size, context_length=self.task.seq_len() - 1, d_model=self.d_model,
            n_layers=self.n_layers, n_heads=self.n_heads, position=self.position,
        )  # fmt: skip

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            batch_size=self.batch_size, seq_len=self.task.seq_len() - 1, max_steps=self.steps, lr=self.lr,
            warmup_steps=max(1, self.steps // 20), weight_decay=0.0, eval_interval=0, seed=self.seed,
        )  # fmt: skip

    def name(self) -> str:
        return f"L{self.n_layers}-d{self.d_model}-h{self.n_heads}-{self.position}-s{self.seed}"


class MappingBatches:
    """The trainer's data source: batches (x, y) of fresh sequences, y shifted by one, each (B, T - 1).

    Batch i is drawn from a generator seeded with (seed, i), so the position in the data is one
    integer (`state_dict`), as the trainer's checkpoints and exact resume need.
    """

    def __init__(self, task: MappingTask, batch_size: int, seed: int = 0):
        self.task, self.batch_size, self.seed = task, _check_count("batch_size", batch_size, 1), seed
        self.index = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.index)
        self.index += 1
        ids, _, _ = make_sequences(self.task, self.batch_size, self.task.n_examples, generator)  # (B, T)
        return ids[:, :-1], ids[:, 1:]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.index = state["seed"], state["index"]


def train_icl_model(run: ICLRun, log: Callable[[str], None] | None = None) -> tuple[Transformer, dict[int, dict], dict]:
    """Train `run` with the course's `Trainer` (next-token cross-entropy) on fresh mappings.

    Returns (model in eval mode, {step: state_dict} at the snapshot steps and the last step,
    info with the loss history and the seconds taken).
    """
    start = time.perf_counter()
    model = Transformer(run.model_config(), generator=torch.Generator().manual_seed(run.seed))
    data = MappingBatches(run.task, run.batch_size, run.seed)
    trainer = Trainer(model, run.train_config(), data=data, log=log)
    snapshots = {}
    for step in sorted(set(run.snapshots) | {run.steps}):
        trainer.train(until_step=step)
        snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    info = {"run": dataclasses.asdict(run), "loss": trainer.history["loss"], "seconds": time.perf_counter() - start,
            "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    return model.eval(), snapshots, info


def load_icl_run(
    run: ICLRun, cache: str | Path | None = None, log: Callable[[str], None] | None = None
) -> tuple[Transformer, dict[int, Transformer], dict]:
    """(final model, {step: model at that step}, info) of `run`: trained once, then read from the cache.

    The entry (`llm_course.cache`, kind "icl") is keyed by the run's settings and the code of this
    module and everything it imports; it holds one model folder per snapshot and info.json.
    """

    def build(folder: Path) -> None:
        model, snapshots, info = train_icl_model(run, log)
        for step, state in snapshots.items():
            model.load_state_dict(state)
            save_model(model, folder / f"step{step}")
        (folder / "info.json").write_text(json.dumps(info))

    folder = cached_entry("icl", run.name(), run, "llm_course.icl", build, cache)
    info = json.loads((folder / "info.json").read_text())
    steps = sorted(set(run.snapshots) | {run.steps})
    models = {step: load_model(folder / f"step{step}").eval() for step in steps}
    return models[run.steps], models, info


# ---------------------------------------------------------------------------------------
# The high-dimensional shell
# ---------------------------------------------------------------------------------------


def shell_volume_fraction(n, eps):
    """Share of the unit n-ball's volume within `eps` of its surface: 1 - (1 - eps)^n, exactly.

    The ball of radius 1 - eps is the unit ball scaled by 1 - eps, and volume in n dimensions
    scales as the n-th power. Computed as -expm1(n log1p(-eps)), accurate for tiny eps too.
    Works on numbers and tensors (float64).
    """
    n = torch.as_tensor(n, dtype=torch.float64)
    eps = torch.as_tensor(eps, dtype=torch.float64)
    if (n < 1).any():
        raise ValueError("the dimension n must be at least 1")
    if ((eps < 0) | (eps > 1)).any():
        raise ValueError("eps must be in [0, 1]")
    return -torch.expm1(n * torch.log1p(-eps))
