"""Supervised fine-tuning (SFT): instruction data, a chat template, the loss on the response (chapter 11).

- `make_instructions(n, words, seed)`: a small, seeded, synthetic instruction set. Each example
  asks for one of a few string operations on words taken from the corpus (the CPython
  documentation), e.g. "Last word: list tuple dict" -> "dict", "Repeat twice: yield" ->
  "yield yield". The answers are exact, so "did the model follow the instruction" is an exact
  match; `split_words` keeps the words of the held-out examples out of the training ones.
- The chat template: "<|user|>" instruction "<|assistant|>" " " response "<|endoftext|>", with
  `<|user|>` and `<|assistant|>` added to the tokenizer as special tokens (`add_chat_tokens`)
  and the model's embedding grown to match (`resize_token_embeddings`, tied head kept tied).
- `encode_example` -> (input ids, targets, response mask); `masked_sft_loss`: cross-entropy on
  the response tokens only (the prompt is given, not predicted); `collate` pads a batch.
- `sft_objective` and `instruction_batches`: SFT as an objective of the course's one training
  loop (`trainer.Trainer`) and its data source; `sft_train(model, examples, ...)` runs them:
  AdamW on whatever parameters require gradients (all of them: full fine-tuning; only adapters
  after `lora.apply_lora`: LoRA; adapters on an int4 base after `quantization.quantize_model`:
  QLoRA).
- Two measurements around it: `few_shot_prompt` builds a k-shot prompt in the chat template
  (k solved training examples of the query's task, then the query), which `score_responses`
  scores (loss on the response, and greedy exact match from one forward pass), to set prompting
  the base model against fine-tuning it (Brown et al., 2020); `pretraining_loss` is chapter 06's
  validation loss, to see what fine-tuning forgot of the pretraining text.

Left out: multi-turn conversations and system prompts, packing several examples per row,
and real (human-written) instruction data.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llm_course.generation import generate
from llm_course.losses import cross_entropy
from llm_course.shuffled_batches import ShuffledBatches
from llm_course.tokenizer import Tokenizer
from llm_course.trainer import TrainConfig, Trainer, eval_batches

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|endoftext|>"

# The tasks: name -> (instruction prefix, number of words, answer from the words).
TASKS = {
    "last": ("Last word:", 3, lambda w: w[-1]),
    "first": ("First word:", 3, lambda w: w[0]),
    "repeat": ("Repeat twice:", 1, lambda w: f"{w[0]} {w[0]}"),
    "swap": ("Swap:", 2, lambda w: f"{w[1]} {w[0]}"),
}


@dataclass(frozen=True)
class Example:
    """One instruction and its exact answer."""

    task: str  # a key of TASKS
    instruction: str  # what the user writes
    response: str  # what the assistant should answer


def corpus_words(text: str, n: int = 400, min_len: int = 3) -> list[str]:
    """The `n` most frequent lowercase words (letters only, at least `min_len`) of `text`, sorted."""
    counts = Counter(w for w in re.findall(r"\b[a-z]+\b", text) if len(w) >= min_len)
    return sorted(w for w, _ in counts.most_common(n))


def split_words(words: list[str], held_out: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle `words` with `seed` and split them into (train words, held-out words)."""
    shuffled = sorted(words)
    random.Random(seed).shuffle(shuffled)
    k = int(len(shuffled) * held_out)
    return shuffled[k:], shuffled[:k]


def make_instructions(n: int, words: list[str], seed: int = 0, tasks: tuple[str, ...] = tuple(TASKS)) -> list[Example]:
    """`n` examples, tasks in turn, words drawn (distinct within an example) from `words` with `seed`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        prefix, k, answer = TASKS[task]
        picked = rng.sample(words, k)
        out.append(Example(task, f"{prefix} {' '.join(picked)}", answer(picked)))
    return out


# --------------------------------------------------------------------------- template and tokens
def add_chat_tokens(tokenizer: Tokenizer) -> dict[str, int]:
    """Give `tokenizer` the special tokens <|user|> and <|assistant|> (ids after the last one); returns them.

    Idempotent: tokens it already has keep their ids."""
    new = [t for t in (USER, ASSISTANT) if t not in tokenizer.special_tokens]
    first = tokenizer.n_vocab
    tokenizer.add_special_tokens({t: first + i for i, t in enumerate(new)})
    return {t: tokenizer.special_tokens[t] for t in (USER, ASSISTANT)}


@torch.no_grad()
def resize_token_embeddings(model: nn.Module, new_vocab: int, init_from: dict[int, list[int]] | None = None) -> nn.Module:
    """Grow (in place) the token embedding and output head of a `Transformer` to `new_vocab` ids.

    The old rows are kept; each new row starts at the mean of the old ones (a neutral token), or,
    for a new id listed in `init_from` ({new id: [old ids]}), at the mean of those rows. A tied
    head stays tied to the new embedding."""
    emb = model.token_embedding
    old_vocab, d_model = emb.weight.shape
    if new_vocab < old_vocab:
        raise ValueError(f"new_vocab ({new_vocab}) is smaller than the current vocabulary ({old_vocab})")
    tied = model.lm_head.weight is emb.weight
    weight = torch.empty(new_vocab, d_model, dtype=emb.weight.dtype, device=emb.weight.device)
    weight[:old_vocab] = emb.weight
    weight[old_vocab:] = emb.weight.mean(dim=0)
    for new_id, old_ids in (init_from or {}).items():
        weight[new_id] = emb.weight[old_ids].mean(dim=0)
    emb.weight = nn.Parameter(weight)
    emb.vocab_size = new_vocab
    if tied:
        model.lm_head.weight = emb.weight
    else:
        head = torch.empty(new_vocab, d_model, dtype=weight.dtype, device=weight.device)
        head[:old_vocab] = model.lm_head.weight
        head[old_vocab:] = model.lm_head.weight.mean(dim=0)
        model.lm_head.weight = nn.Parameter(head)
    model.lm_head.out_features = new_vocab
    model.config.vocab_size = new_vocab
    return model


# The text each new special token starts from: its embedding is the mean of these tokens' embeddings,
# so a model that has never seen <|assistant|> starts by reading it roughly as "Answer:".
MARKER_TEXT = {USER: "Question:", ASSISTANT: " Answer:"}


def prepare_chat_model(model: nn.Module, tokenizer: Tokenizer) -> dict[str, int]:
    """Add the chat tokens to `tokenizer` and grow `model` to match (both in place); returns their ids.

    The new embedding rows start from the embeddings of `MARKER_TEXT`, so that LoRA, which does
    not train embeddings, can work with them."""
    ids = add_chat_tokens(tokenizer)
    init = {ids[t]: tokenizer.encode(MARKER_TEXT[t]) for t in (USER, ASSISTANT)}
    resize_token_embeddings(model, tokenizer.n_vocab, init_from=init)
    return ids


def format_prompt(instruction: str) -> str:
    """The text the model sees before it answers: <|user|>instruction<|assistant|>."""
    return f"{USER}{instruction}{ASSISTANT}"


def format_chat(example: Example) -> str:
    """The whole example as text: <|user|>instruction<|assistant|> response<|endoftext|>.

    The response starts with a space so that its words are the same tokens as in the instruction
    (BPE makes " dict" and "dict" two different tokens)."""
    return f"{format_prompt(example.instruction)} {example.response}{END}"


def parse_chat(text: str) -> Example:
    """The inverse of `format_chat` (task unknown: "")."""
    match = re.fullmatch(re.escape(USER) + r"(.*?)" + re.escape(ASSISTANT) + r" (.*?)" + re.escape(END), text, re.S)
    if match is None:
        raise ValueError(f"not a chat-formatted example: {text!r}")
    return Example("", match.group(1), match.group(2))


def encode_example(
    example: Example, tokenizer: Tokenizer, prompt: str | None = None
) -> tuple[list[int], list[int], list[bool]]:
    """(inputs, targets, response_mask) for next-token training, each of length L - 1 for L tokens.

    targets[t] is token t + 1; response_mask[t] is True where that target belongs to the response
    (its end token included), so the loss learns to answer and to stop, not to predict prompts.
    `prompt` is the text before the response (default `format_prompt(example.instruction)`; a
    `few_shot_prompt` puts solved examples before it)."""
    prompt_text = format_prompt(example.instruction) if prompt is None else prompt
    prompt = tokenizer.encode(prompt_text, allowed_special="all")
    answer = tokenizer.encode(" " + example.response) + [tokenizer.special_tokens[END]]
    tokens = prompt + answer
    mask = [t + 1 >= len(prompt) for t in range(len(tokens) - 1)]
    return tokens[:-1], tokens[1:], mask


def collate(encoded: list[tuple[list[int], list[int], list[bool]]], pad_id: int = 0):
    """Right-pad a batch: (inputs (B, T) long, targets (B, T) long, response_mask (B, T) bool)."""
    T = max(len(x) for x, _, _ in encoded)
    inputs = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    targets = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(encoded), T, dtype=torch.bool)
    for i, (x, y, m) in enumerate(encoded):
        inputs[i, : len(x)], targets[i, : len(y)], mask[i, : len(m)] = torch.tensor(x), torch.tensor(y), torch.tensor(m)
    return inputs, targets, mask


def masked_sft_loss(logits: torch.Tensor, targets: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the response positions: logits (B, T, V), targets (B, T), mask (B, T) bool.

    The average runs over all response tokens of the batch (a long answer weighs more than a
    short one), the convention of Hugging Face's trainers; prompt and padding positions count 0."""
    return cross_entropy(logits, torch.where(response_mask.bool(), targets, -100), ignore_index=-100)


# --------------------------------------------------------------------------- training and evaluation
def sft_objective(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """SFT as an objective of the course's `Trainer`: `masked_sft_loss` of the model on a batch of
    `collate` (inputs (B, T), targets (B, T), response_mask (B, T)); no other metrics."""
    inputs, targets, mask = batch
    return masked_sft_loss(model(inputs), targets, mask), {}  # logits (B, T, V)


def instruction_batches(examples: list[Example], tokenizer: Tokenizer, batch_size: int, seed: int = 0) -> ShuffledBatches:
    """SFT's data source: the encoded `examples` in a seeded order, `batch_size` at a time, padded by `collate`."""
    return ShuffledBatches([encode_example(e, tokenizer) for e in examples], batch_size, collate, seed)


@dataclass
class SFTResult:
    """What `sft_train` measured."""

    losses: list[float]  # the training loss at every step
    seconds: float  # wall-clock time of the steps
    trainable: int  # parameters the optimizer updated
    trainer: Trainer  # the trainer that ran it (history, learning rates, optimizer state)


def sft_train(
    model: nn.Module,
    examples: list[Example],
    tokenizer: Tokenizer,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    warmup_steps: int = 0,
    min_lr_ratio: float = 1.0,
) -> SFTResult:
    """Fine-tune `model` in place on `examples`: the course's `Trainer` with `sft_objective` on
    `instruction_batches`, AdamW on the parameters that require gradients.

    Full fine-tuning, LoRA and QLoRA differ only in which parameters those are (see the module
    docstring). The schedule is the trainer's `optim.warmup_cosine`: `warmup_steps`, then a cosine
    down to `min_lr_ratio` * lr; the defaults (no warmup, ratio 1) keep the rate constant, as the
    chapter's short runs always did. No gradient clipping; AdamW's betas (0.9, 0.999)."""
    encoded = instruction_batches(examples, tokenizer, batch_size, seed)
    config = TrainConfig(
        batch_size=encoded.batch_size, seq_len=max(len(x) for x, _, _ in encoded.items), max_steps=steps, lr=lr,
        warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
        weight_decay=weight_decay, beta2=0.999, grad_clip=0.0, spike_threshold=0.0, eval_interval=0, seed=seed,
    )  # fmt: skip
    trainer = Trainer(model, config, data=encoded, objective=sft_objective, log=None)
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return SFTResult(history["loss"], seconds, trainable, trainer)


@dataclass
class ResponseScores:
    """What `score_responses` measured, one entry per example."""

    nll: torch.Tensor  # (N,) float: the summed loss over the response tokens (nats)
    tokens: torch.Tensor  # (N,) long: the number of response tokens (the end token included)
    greedy_exact: torch.Tensor  # (N,) bool: every response token is the most likely one at its position

    @property
    def loss(self) -> float:
        """Nats per response token, over all examples (`response_loss`)."""
        return (self.nll.sum() / self.tokens.sum()).item()

    @property
    def exact(self) -> float:
        """The fraction of examples that greedy decoding answers token for token."""
        return self.greedy_exact.float().mean().item()


@torch.no_grad()
def score_responses(
    model: nn.Module,
    examples: list[Example],
    tokenizer: Tokenizer,
    prompts: Sequence[str] | None = None,
    batch_size: int = 64,
) -> ResponseScores:
    """The loss of `model` on each example's response given its prompt, and whether greedy decoding
    would write that response, from one forward pass per batch (no generation).

    Greedy decoding picks the most likely token at each step; it writes the response, end token
    included, exactly when at every response position (the right answer so far being the input)
    the most likely token is the response's. That is `exact_match` token for token: `exact_match`
    also counts an answer spelled with other tokens that decode to the same text, so it can only
    be higher. `prompts` (one per example) replaces the template's prompt, e.g. with
    `few_shot_prompts`."""
    if prompts is not None and len(prompts) != len(examples):
        raise ValueError(f"give one prompt per example: {len(prompts)} prompts for {len(examples)} examples")
    device = next(model.parameters()).device
    model.eval()
    nll, tokens, exact = [], [], []
    for i in range(0, len(examples), batch_size):
        encoded = [encode_example(e, tokenizer, None if prompts is None else prompts[i + j])
                   for j, e in enumerate(examples[i : i + batch_size])]  # fmt: skip
        inputs, targets, mask = (t.to(device) for t in collate(encoded))  # (b, T) each
        rows = mask.nonzero()[:, 0]  # (n,): the example of each response position
        logits = model.lm_head(model.features(inputs)[mask])  # (n, V): the head only where the loss counts
        per_token = cross_entropy(logits, targets[mask], reduction="none")  # (n,)
        wrong = (logits.argmax(dim=-1) != targets[mask]).float()  # (n,)
        nll.append(torch.zeros(len(encoded), device=device).index_add_(0, rows, per_token))
        tokens.append(mask.sum(dim=1))
        exact.append(torch.zeros(len(encoded), device=device).index_add_(0, rows, wrong) == 0)
    return ResponseScores(torch.cat(nll).cpu(), torch.cat(tokens).cpu(), torch.cat(exact).cpu())


def response_loss(
    model: nn.Module,
    examples: list[Example],
    tokenizer: Tokenizer,
    batch_size: int = 64,
    prompts: Sequence[str] | None = None,
) -> float:
    """The mean masked loss (nats per response token) of `model` on `examples` (`score_responses`)."""
    return score_responses(model, examples, tokenizer, prompts, batch_size).loss


def answers(model: nn.Module, tokenizer: Tokenizer, instructions: list[str], max_new_tokens: int = 12) -> list[str]:
    """The model's greedy answers to `instructions` (each stops at <|endoftext|>)."""
    return complete(model, tokenizer, [format_prompt(i) for i in instructions], max_new_tokens)


@torch.no_grad()
def complete(model: nn.Module, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int = 12) -> list[str]:
    """Greedy continuations of the texts `prompts` (special tokens allowed), each cut at <|endoftext|>.

    Prompts of equal length are generated together as one batch (no padding needed). A prompt
    whose tokens and `max_new_tokens` do not fit the model's context is an error: the model
    would silently lose its start."""
    device = next(model.parameters()).device
    end = tokenizer.special_tokens[END]
    context = model.config.context_length
    prompts = [tokenizer.encode(p, allowed_special="all") for p in prompts]
    for i, p in enumerate(prompts):
        if len(p) + max_new_tokens > context:
            raise ValueError(f"prompt {i} has {len(p)} tokens: with max_new_tokens={max_new_tokens} it does not "
                             f"fit the model's context of {context} tokens")  # fmt: skip
    out: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for length, rows in by_length.items():
        idx = torch.tensor([prompts[i] for i in rows], device=device)  # (B, T)
        gen = generate(model, idx, max_new_tokens, temperature=0.0, eos_id=end)[:, length:]  # (B, n)
        for i, ids in zip(rows, gen.tolist()):
            out[i] = tokenizer.decode(ids[: ids.index(end)] if end in ids else ids)
    return out


def exact_match(model: nn.Module, examples: list[Example], tokenizer: Tokenizer) -> float:
    """The fraction of `examples` whose greedy answer equals the response exactly (outer spaces stripped)."""
    got = answers(model, tokenizer, [e.instruction for e in examples])
    return sum(g.strip() == e.response for g, e in zip(got, examples)) / len(examples)


# --------------------------------------------------------------------------- few-shot prompting and forgetting
def few_shot_prompt(query: Example, pool: Sequence[Example], k: int, seed: int = 0) -> str:
    """The k-shot prompt for `query`: k solved examples of its task from `pool`, each as `format_chat`
    writes it, then `format_prompt(query.instruction)`; the model's continuation is its answer.

    The demonstrations are the first k of the pool's examples of `query.task`, shuffled with
    `seed`: one seed gives each k the first k of the same order, so a larger k only adds examples.
    An example whose instruction is the query's is never used (its response is the answer asked
    for). Errors: k not an int >= 0, a query without a known task, fewer than k examples to use."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k (the number of examples in the prompt) must be an int >= 0, got {k!r}")
    if query.task not in TASKS:
        raise ValueError(f"the query's task must be one of {sorted(TASKS)} to pick examples of it, got {query.task!r}")
    usable = [e for e in pool if e.task == query.task and e.instruction != query.instruction]
    if k > len(usable):
        raise ValueError(f"k={k} examples asked for, but the pool has only {len(usable)} of task {query.task!r} "
                         f"other than the query")  # fmt: skip
    random.Random(seed).shuffle(usable)
    return "".join(format_chat(e) for e in usable[:k]) + format_prompt(query.instruction)


def few_shot_prompts(queries: Sequence[Example], pool: Sequence[Example], k: int, seed: int = 0) -> list[str]:
    """`few_shot_prompt` of each query, the i-th shuffled with seed + i (each query its own examples)."""
    return [few_shot_prompt(q, pool, k, seed + i) for i, q in enumerate(queries)]


def pretraining_loss(
    model: nn.Module,
    tokens: torch.Tensor,
    seq_len: int | None = None,
    batch_size: int = 16,
    vocab_size: int | None = None,
) -> float:
    """The pretraining objective on held-out text, measured as chapter 06's trainer measures its
    validation loss: next-token cross-entropy (nats per token) over consecutive windows of `seq_len`
    tokens (default: the model's context) from the start of the 1-D `tokens`, cut into batches of
    `batch_size` windows (`trainer.eval_batches`), the mean of each batch's mean.

    Every whole window is used; a last, shorter batch weighs as much as a full one, as in the
    trainer. Measured before and after fine-tuning, its rise is what the model forgot of its
    pretraining text. `vocab_size` keeps only the logits of the first `vocab_size` ids in the
    softmax: with the ids the text never contains left out (special tokens added after it, or an
    end token), the loss no longer counts the probability the model gives them."""
    return pretraining_losses(model, tokens, [vocab_size], seq_len, batch_size)[0]


@torch.no_grad()
def pretraining_losses(
    model: nn.Module,
    tokens: torch.Tensor,
    vocab_sizes: Sequence[int | None],
    seq_len: int | None = None,
    batch_size: int = 16,
) -> list[float]:
    """`pretraining_loss` for each of `vocab_sizes` (None: the whole vocabulary), from one forward pass."""
    seq_len = model.config.context_length if seq_len is None else seq_len
    if seq_len > model.config.context_length:
        raise ValueError(f"seq_len {seq_len} exceeds the model's context_length {model.config.context_length}")
    for v in vocab_sizes:
        if v is not None and not 0 < v <= model.config.vocab_size:
            raise ValueError(f"vocab_size must be in [1, {model.config.vocab_size}] (the model's), got {v}")
        if v is not None and int(tokens.max()) >= v:
            raise ValueError(f"the tokens hold id {int(tokens.max())}, outside the first vocab_size={v} ids")
    device = next(model.parameters()).device
    model.eval()
    losses = []  # one row per batch: its mean loss for each vocabulary size
    for x, y in eval_batches(tokens, batch_size, seq_len, n_batches=len(tokens)):  # x, y: (b, seq_len)
        logits, y = model(x.to(device)), y.to(device)  # logits (b, seq_len, V)
        losses.append([cross_entropy(logits[..., :v], y).item() for v in vocab_sizes])
    return [sum(column) / len(column) for column in zip(*losses)]
