"""The course's own small pretrained model: trained once on the default corpus, then cached (chapter 06).

Later chapters (generation, the KV cache, fine-tuning, alignment, failure modes) need a model
that has learned something. `load_pretrained("tiny")` returns one, with its tokenizer: the
first call trains it (a few CPU minutes) and writes it to the cache; every later call, in any
process, reads it back in a fraction of a second.

- The model is an entry of the course's cache (`llm_course.cache`): `$LLM_COURSE_CACHE` or
  `~/.cache/llm_course`, under `pretrained/<name>-<key>`, where the key hashes the recipe, the
  corpus and the code of this module and of every `llm_course` module it imports, transitively:
  a change to any of them trains a new model instead of reusing a stale one. The cache's lock
  makes a second process wait for the first one's training, and its atomic rename means a crash
  never leaves a half-written model that looks finished.
- Each entry holds model.safetensors + llm_course_config.json (`checkpoints.load_model`),
  tokenizer.json (`Tokenizer.load`), info.json (the recipe, the loss curves, the time taken) and
  the cache's cache.json (what the key was made of).

Left out: downloading anything (nothing is), and removing old entries (they are a few MB each).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llm_course import cache as course_cache
from llm_course.checkpoints import load_model, save_model
from llm_course.data import load_corpus
from llm_course.tokenizer import Tokenizer
from llm_course.trainer import TrainConfig, Trainer, encode_split
from llm_course.transformer import Transformer, TransformerConfig, tiny

END_OF_TEXT = "<|endoftext|>"



@dataclass
class Recipe:
    """How a cached model is made: tokenizer, model, training, data."""

    name: str  # the name load_pretrained knows it by
    vocab_size: int  # ids of the tokenizer: vocab_size - 1 learned tokens and <|endoftext|> (the last id)
    model: TransformerConfig  # the model (its vocab_size must equal the tokenizer's)
    train: TrainConfig  # the training run
    corpus: str | None = None  # a text file or folder; None: the default corpus (the CPython docs)
    val_fraction: float = 0.1  # held-out tail of the corpus for the validation loss
    checkpoint_interval: int = 50  # checkpoints during training, for rollbacks (deleted at the end)
    note: str = field(default="", compare=False)  # what the model is for


def tiny_recipe() -> Recipe:
    """The course's small GPT: `transformer.tiny` (4 layers, 128 wide, context 128) with a 4096-token
    BPE vocabulary, trained for 300 steps of 16 x 128 tokens (about 6 passes over the ~100k
    training tokens of the CPython docs). A few CPU minutes."""
    vocab_size = 4096
    return Recipe(
        name="tiny",
        vocab_size=vocab_size,
        model=tiny(vocab_size),
        train=TrainConfig(batch_size=16, seq_len=128, max_steps=300, lr=2e-3, warmup_steps=30, eval_interval=50,
                          eval_batches=6, weight_decay=0.1, grad_clip=1.0, seed=0),  # fmt: skip
        note="the course's small model: 4 layers, 128 wide, trained on the CPython documentation",
    )


RECIPES = {"tiny": tiny_recipe}


def _recipe(recipe: str | Recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"no pretrained model called {recipe!r}; the course has {sorted(RECIPES)}")
    return RECIPES[recipe]()


def recipe_settings(recipe: str | Recipe, text: str | None = None) -> dict:
    """What a cached model depends on besides the code: the recipe (not its note) and the corpus text."""
    r = _recipe(recipe)
    text = load_corpus(r.corpus) if text is None else text
    return {
        "recipe": {k: v for k, v in dataclasses.asdict(r).items() if k != "note"},
        "corpus_sha256": course_cache.fingerprint(text.encode("utf-8")),
    }


def recipe_key(recipe: str | Recipe, text: str | None = None) -> str:
    """16 hex digits that change with the recipe, the corpus text and the code (`llm_course.cache`)."""
    return course_cache.cache_key(recipe_settings(recipe, text), __name__)


def pretrained_dir(recipe: str | Recipe = "tiny", cache: str | Path | None = None) -> Path:
    """The cache folder of a recipe's model (which may not exist yet)."""
    r = _recipe(recipe)
    return course_cache.entry_dir("pretrained", r.name, recipe_settings(r), __name__, cache)


def train_recipe(
    recipe: Recipe, out: Path, device: torch.device | str = "cpu", progress: bool = False, log=print
) -> dict:
    """Train `recipe` from scratch and write the model, tokenizer and info.json to `out`; returns the info."""
    start = time.perf_counter()
    text = load_corpus(recipe.corpus)
    c = recipe.train
    train_text = text[: int(len(text) * (1 - recipe.val_fraction))]
    tokenizer = Tokenizer.train(train_text, recipe.vocab_size - 1, special_tokens=[END_OF_TEXT])
    if tokenizer.n_vocab != recipe.model.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.n_vocab} ids but the model expects {recipe.model.vocab_size}")
    train_tokens, val_tokens = encode_split(text, tokenizer, recipe.val_fraction)
    model = Transformer(recipe.model, generator=torch.Generator().manual_seed(c.seed)).to(device)
    config = dataclasses.replace(c, checkpoint_interval=recipe.checkpoint_interval)
    trainer = Trainer(model, config, train_tokens, val_tokens, out_dir=out / "checkpoints", log=log, progress=progress)
    trainer.train()
    shutil.rmtree(out / "checkpoints")
    save_model(model.cpu(), out)
    tokenizer.save(out / "tokenizer.json")
    info = {
        "name": recipe.name, "note": recipe.note, "recipe": dataclasses.asdict(recipe),
        "train_tokens": len(train_tokens), "val_tokens": len(val_tokens),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - start, "device": str(device), "torch": torch.__version__,
        "final_val_loss": trainer.val_history["loss"][-1],
        "history": trainer.history, "val_history": trainer.val_history, "events": trainer.events,
    }  # fmt: skip
    (out / "info.json").write_text(json.dumps(info) + "\n")
    return info


def load_pretrained(
    name: str | Recipe = "tiny",
    device: torch.device | str | None = None,
    cache: str | Path | None = None,
    train_device: torch.device | str = "cpu",
    progress: bool = False,
    log=print,
) -> tuple[Transformer, Tokenizer]:
    """(model, tokenizer) of the course's pretrained model `name` (or a `Recipe`), in eval mode,
    on `device` (None: the CPU).

    Trained on `train_device` the first time (and written to the cache), read from the cache
    afterwards. `log` receives the training's lines (None: silent).
    """
    recipe = _recipe(name)

    def build(tmp: Path) -> None:
        if log is not None:
            log(f"training the pretrained model {recipe.name!r} once; it will be cached in {tmp.parent}")
        train_recipe(recipe, tmp, train_device, progress, log)

    final = course_cache.cached_entry("pretrained", recipe.name, recipe_settings(recipe), __name__, build, cache)
    model = load_model(final, device if device is not None else "cpu").eval()
    return model, Tokenizer.load(final / "tokenizer.json")


def pretrained_info(name: str | Recipe = "tiny", cache: str | Path | None = None) -> dict:
    """The info.json of a cached model (training curves, time, losses); trains it first if needed."""
    final = pretrained_dir(name, cache)
    if not course_cache.is_complete(final):
        load_pretrained(name, cache=cache)
    return json.loads((final / "info.json").read_text())
