"""Length extrapolation: train at one length, evaluate at longer ones (chapters 03 and 04).

The experiment of Press et al. (2022), "Train Short, Test Long", at the course's scale: small
models that differ only in how they encode positions (sinusoidal, learned, RoPE, ALiBi) are
trained with the course's `Trainer` on windows of `train_len` tokens of the course corpus, then
scored on held-out windows 2 to 4 times longer. The RoPE model is also scored with its angles
rescaled at inference (position interpolation, NTK-aware, YaRN; `llm_course.rope`) and with a
sliding window of `train_len` keys (`llm_course.attention`), none of which needs training.

- `train_position_models(recipe)` trains the models once and caches them (with their
  tokenizer and training curves) in the course's cache (`llm_course.cache`, kind
  "long_context"); the key covers the recipe, the corpus and the code this module imports, so
  an edit trains new models instead of reusing stale ones.
- `variant(model, ...)` is the same weights with another RoPE scaling or attention window.
- `loss_by_position(model, tokens, seq_len)` is the mean next-token loss at each position of
  non-overlapping windows: the curve that shows where a model stops working.

Left out: fine-tuning after interpolation (Chen et al. fine-tune for 1000 steps; here the scaling
is applied zero-shot) and lengths a large model would use (thousands of tokens).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_course import cache as course_cache
from llm_course.checkpoints import load_model, save_model
from llm_course.data import load_corpus
from llm_course.losses import cross_entropy
from llm_course.tokenizer import Tokenizer
from llm_course.trainer import TrainConfig, Trainer, encode_split
from llm_course.transformer import Transformer, TransformerConfig

END_OF_TEXT = "<|endoftext|>"
# The sinusoidal table's root-mean-square is 1/sqrt(2); this brings it to the embeddings' 0.02.
SINUSOIDAL_SCALE = 0.02 * math.sqrt(2)


@dataclass(frozen=True)
class ExtrapolationRecipe:
    """The models of the extrapolation experiment: one per position scheme, all else equal."""

    positions: tuple[str, ...] = ("sinusoidal", "learned", "rope", "alibi")  # TransformerConfig.position
    train_len: int = 64  # L: the length of every training window
    max_len: int = 256  # the longest evaluation window (the models' context_length)
    vocab_size: int = 512  # a small BPE vocabulary trained on the corpus (the last id is <|endoftext|>)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    steps: int = 200  # optimizer steps per model
    batch_size: int = 16
    lr: float = 3e-3
    corpus: str | None = None  # None: the course's default corpus
    val_fraction: float = 0.1
    seed: int = 0

    def model_config(self, position: str) -> TransformerConfig:
        """Every model has room for `max_len` positions; only the first `train_len` are trained.

        The sinusoidal table is scaled to the token embeddings' size (`SINUSOIDAL_SCALE`):
        at its paper values it is 35 times larger, and the model stays at the unigram loss.
        """
        return TransformerConfig(
            vocab_size=self.vocab_size, context_length=self.max_len, d_model=self.d_model,
            n_layers=self.n_layers, n_heads=self.n_heads, position=position, sinusoidal_scale=SINUSOIDAL_SCALE,
        )  # fmt: skip

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            batch_size=self.batch_size, seq_len=self.train_len, max_steps=self.steps, lr=self.lr,
            warmup_steps=max(1, self.steps // 10), eval_interval=0, eval_batches=4, seed=self.seed,
        )  # fmt: skip


def recipe_settings(recipe: ExtrapolationRecipe, text: str) -> dict:
    """What the cached models depend on besides the code (`llm_course.cache` hashes that): the recipe
    and the corpus text."""
    return {"recipe": dataclasses.asdict(recipe), "corpus_sha256": course_cache.fingerprint(text.encode("utf-8"))}


def _train_all(recipe: ExtrapolationRecipe, text: str, out: Path, log) -> None:
    """Train the tokenizer and one model per position scheme; write them and info.json to `out`."""
    start = time.perf_counter()
    train_text = text[: int(len(text) * (1 - recipe.val_fraction))]
    tokenizer = Tokenizer.train(train_text, recipe.vocab_size - 1, special_tokens=[END_OF_TEXT])
    train_tokens, val_tokens = encode_split(text, tokenizer, recipe.val_fraction)
    tokenizer.save(out / "tokenizer.json")
    torch.save(val_tokens, out / "val_tokens.pt")
    info = {"recipe": dataclasses.asdict(recipe), "train_tokens": len(train_tokens), "models": {}}
    for position in recipe.positions:
        model_start = time.perf_counter()
        model = Transformer(recipe.model_config(position), generator=torch.Generator().manual_seed(recipe.seed))
        trainer = Trainer(model, recipe.train_config(), train_tokens, val_tokens, log=None)
        trainer.train()
        save_model(model, out / position)
        info["models"][position] = {
            "train_loss": trainer.history["loss"],
            "val_loss": trainer.val_history["loss"][-1],
            "seconds": time.perf_counter() - model_start,
        }
        if log is not None:
            log(f"{position}: validation loss at length {recipe.train_len}: {info['models'][position]['val_loss']:.3f}")
    info["seconds"] = time.perf_counter() - start
    (out / "info.json").write_text(json.dumps(info) + "\n")


def train_position_models(
    recipe: ExtrapolationRecipe | None = None, cache: str | Path | None = None, log=print
) -> tuple[dict[str, Transformer], Tokenizer, torch.Tensor, dict]:
    """({position: model}, tokenizer, validation token ids, info) for `recipe`, trained once.

    The first call trains (about a CPU minute for the default recipe) and writes the cache;
    later calls read it. The models are on the CPU, in eval mode. `info` holds each model's
    training curve, final validation loss at the training length, and the seconds it took.
    """
    recipe = ExtrapolationRecipe() if recipe is None else recipe
    if recipe.train_len > recipe.max_len:
        raise ValueError(f"train_len ({recipe.train_len}) must not exceed max_len ({recipe.max_len})")
    text = load_corpus(recipe.corpus)

    def build(tmp: Path) -> None:
        if log is not None:
            log(f"training the extrapolation models once; they will be cached in {tmp.parent}")
        _train_all(recipe, text, tmp, log)

    settings = recipe_settings(recipe, text)
    final = course_cache.cached_entry("long_context", "extrapolation", settings, __name__, build, cache)
    models = {p: load_model(final / p).eval() for p in recipe.positions}
    tokenizer = Tokenizer.load(final / "tokenizer.json")
    val_tokens = torch.load(final / "val_tokens.pt")
    return models, tokenizer, val_tokens, json.loads((final / "info.json").read_text())


def variant(
    model: Transformer,
    rope_scaling: str = "none",
    factor: float = 1.0,
    original_context: int | None = None,
    attention_window: int | None = None,
) -> Transformer:
    """The same weights with another RoPE scaling and/or attention window (nothing is trained).

    The RoPE tables and ALiBi slopes are buffers computed from the config, not weights, so
    the state dict of the trained model loads as it is.
    """
    config = dataclasses.replace(
        model.config, rope_scaling=rope_scaling, rope_scaling_factor=factor,
        rope_original_context=original_context, attention_window=attention_window,
    )  # fmt: skip
    copy = Transformer(config).to(next(model.parameters()).device)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


@torch.no_grad()
def loss_by_position(
    model: Transformer, tokens: torch.Tensor, seq_len: int, n_windows: int | None = None, batch_size: int = 16
) -> torch.Tensor:
    """Mean next-token loss at each position of non-overlapping windows of `seq_len` + 1 tokens: (seq_len,).

    Window w predicts tokens[w (T+1) + 1 : (w + 1)(T + 1)] from the T tokens before; entry t is
    the loss of predicting the token after position t, averaged over `n_windows` windows (all
    that fit if None). Every window starts at position 0, so position t is the same distance
    from the start in every window.
    """
    available = len(tokens) // (seq_len + 1)
    n_windows = available if n_windows is None else n_windows
    if not 1 <= n_windows <= available:
        raise ValueError(f"{len(tokens)} tokens hold {available} windows of {seq_len} + 1, asked for {n_windows}")
    windows = tokens[: n_windows * (seq_len + 1)].view(n_windows, seq_len + 1)  # (N, T + 1)
    device = next(model.parameters()).device
    model.eval()
    total = torch.zeros(seq_len, device=device)
    for start in range(0, n_windows, batch_size):
        batch = windows[start : start + batch_size].to(device)  # (B, T + 1)
        logits = model(batch[:, :-1])  # (B, T, V)
        losses = cross_entropy(logits, batch[:, 1:], reduction="none")  # (B, T)
        total += losses.sum(0)
    return (total / n_windows).cpu()
