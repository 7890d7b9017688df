"""Generating text with a trained model, and measuring it with perplexity (chapter 08).

Implements
- `generate`: autoregressive decoding. Each step runs the model on the tokens so far,
  takes the logits of the last position and picks the next token with
  `llm_course.sampling.sample_next` (greedy, temperature, top-k, top-p, min-p, with an
  explicit `torch.Generator`), after the repetition, frequency and presence penalties; it
  stops after `max_new_tokens`, when every row has produced `eos_id`, or when the decoded
  text of every row contains one of the `stop` strings. With the same weights, greedy
  decoding gives the tokens of Hugging Face's `generate(do_sample=False)`
  (tests/test_generation.py). Beam search is in `llm_course.beam_search`.
- `token_nlls` and `perplexity`: the negative log-likelihood of every token of a text
  given the tokens before it, read through a sliding window of `context_length` tokens
  moved by `stride`, and exp(mean NLL), the perplexity. This is the strided evaluation of
  Hugging Face's "Perplexity of fixed-length models" guide, except that every token but the
  first is scored exactly once, also when windows do not overlap.
- `add_command`: ``python -m llm_course generate --checkpoint DIR --prompt TEXT ...``, where
  DIR holds a model written by `llm_course.checkpoints.save_model` and a tokenizer JSON
  written by `llm_course.tokenizer.Tokenizer.save`.

`generate(..., use_cache=True)` uses chapter 09's KV cache; without it every step recomputes
the whole window. Left out: batches of prompts of different lengths (padding).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from llm_course import sampling
from llm_course.sampling import check_sampling_settings, sample_next

TOKENIZER_NAME = "tokenizer.json"  # the tokenizer's file name in a checkpoint folder (others are searched)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with dropout off and no autograd, then restore the model's mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def next_token_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The logits of the token that follows each row of `tokens` (B, T): shape (B, V).

    The model sees at most its last `context_length` tokens; older ones are dropped.
    """
    window = tokens[:, -model.config.context_length :]  # (B, min(T, context_length))
    return model(window)[:, -1, :]  # (B, V)


class Decoder(Protocol):
    """What stop strings need from a tokenizer: ids -> text (`llm_course.tokenizer.Tokenizer` is one)."""

    def decode(self, ids: list[int]) -> str: ...


def check_stop(
    stop: Sequence[str] | None, tokenizer: Decoder | None = None, need_tokenizer: bool = True
) -> tuple[str, ...]:
    """The stop strings as a tuple (empty if None); clear errors for a bare str, empty strings, no tokenizer."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        raise TypeError(f"stop must be a list of strings, got the string {stop!r}: write stop=[{stop!r}]")
    stop = tuple(stop)
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")
    if stop and need_tokenizer and tokenizer is None:
        raise ValueError("stop strings are matched in the decoded text: pass the tokenizer too")
    return stop


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the first occurrence of any stop string: what a user is shown."""
    found = [text.find(s) for s in check_stop(stop, need_tokenizer=False)]
    return text[: min((i for i in found if i >= 0), default=len(text))]


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    use_cache: bool = False,
    *,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    stop: Sequence[str] | None = None,
    tokenizer: Decoder | None = None,
) -> torch.Tensor:
    """Continue each row of the prompt `idx` (B, T) by up to `max_new_tokens` tokens: (B, T + n).

    temperature, top_k, top_p and generator are those of `sample_next` (temperature 0 is
    greedy; the generator must be on the model's device). When `eos_id` is given, a row that
    has produced it is padded with `eos_id` from then on, and generation stops early once
    every row has. The model runs in eval mode without gradients; its previous mode is
    restored afterwards.
    `use_cache` keeps the keys and values in a `llm_course.kv_cache.KVCache` (chapter 09):
    each step feeds only the new token. The cache does not slide, so prompt + new tokens
    must fit in the model's context_length.

    Before sampling, `repetition_penalty` (Hugging Face's rule, over prompt and new tokens)
    and then `frequency_penalty` / `presence_penalty` (OpenAI's, over the new tokens only)
    change the logits; `min_p` filters after top-p. `stop` lists strings that end a row
    once its decoded new text (with `tokenizer.decode`) contains one: the match may span
    several tokens or end inside one, and the returned tokens include the one that
    completed it (cut the text with `truncate_at_stop`). With more than one row, finished
    rows are padded with `eos_id`, which must then be given.
    """
    check_sampling_settings(temperature, top_k, top_p, min_p, repetition_penalty)
    stop = check_stop(stop, tokenizer)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError(f"idx must be a (B, T) tensor of token ids, got {getattr(idx, 'shape', type(idx).__name__)}")
    model.check_inputs(idx[:, -model.config.context_length :])  # ids in range, at least one token
    if stop and idx.shape[0] > 1 and eos_id is None:
        raise ValueError("with stop strings and more than one row, pass eos_id: it pads the rows that stopped")
    tokens = idx.long()  # (B, T)
    prompt_length = tokens.shape[1]
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)  # (B,)
    cache = None
    if use_cache:
        from llm_course.kv_cache import KVCache

        size = min(tokens.shape[1] + max_new_tokens, model.config.context_length)  # a full cache raises CacheFullError
        cache = KVCache.for_model(model, tokens.shape[0], size)
    with _eval_mode(model):
        for _ in range(max_new_tokens):
            # One step: the logits of the next token. With a KV cache (chapter 09) the model
            # sees only the tokens the cache has not seen yet: the prompt, then one at a time.
            if cache is None:
                logits = next_token_logits(model, tokens)  # (B, V)
            else:
                logits = model(tokens[:, cache.length :], cache=cache)[:, -1, :]  # (B, V)
            if repetition_penalty is not None:
                logits = sampling.repetition_penalty(logits, tokens, repetition_penalty)
            if frequency_penalty or presence_penalty:
                new = tokens[:, prompt_length:]  # (B, n) the tokens generated so far
                logits = sampling.frequency_penalty(logits, new, frequency_penalty, presence_penalty)
            next_id = sample_next(logits, temperature, top_k, top_p, generator, min_p)  # (B,)
            if eos_id is not None:
                next_id = next_id.masked_fill(finished, eos_id)  # finished rows are padded with eos
                finished |= next_id == eos_id
            tokens = torch.cat([tokens, next_id[:, None]], dim=1)  # (B, T + 1)
            if stop:
                finished |= _contains_stop(tokens[:, prompt_length:], finished, stop, tokenizer)
            if (eos_id is not None or stop) and bool(finished.all()):
                break
    return tokens


def _contains_stop(
    new: torch.Tensor, finished: torch.Tensor, stop: tuple[str, ...], tokenizer: Decoder
) -> torch.Tensor:
    """(B,) bool: the rows not finished yet whose new tokens (B, n) decode to text containing a stop string.

    The whole new text is searched, not only its last token: a stop string may begin in one
    token and end in the next, and a token may run past its end ("\n\nThe" for "\n\n").
    """
    hits = []
    for row, done in zip(new.tolist(), finished.tolist()):
        text = "" if done else tokenizer.decode(row)
        hits.append(any(s in text for s in stop))
    return torch.tensor(hits, device=new.device)


# ---------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------


def _as_ids(model: nn.Module, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    device = next(model.parameters(), torch.empty(0)).device  # the model's device (CPU if it has no parameters)
    ids = torch.as_tensor(ids, device=device)
    if ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"ids must be a 1-D sequence of integer token ids, got shape {tuple(ids.shape)}, {ids.dtype}")
    if ids.numel() < 2:
        raise ValueError(f"perplexity needs at least 2 tokens (the first one is never predicted), got {ids.numel()}")
    return ids.long()


def token_nlls(
    model: nn.Module,
    ids: torch.Tensor | Sequence[int],
    context_length: int | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """-log p(ids[t] | the tokens before it) for t = 1 .. N-1, by a sliding window: shape (N-1,), float32.

    Windows of `context_length` tokens (default: the model's) start every `stride` tokens
    (default: context_length, windows that do not overlap). Each window scores only the
    tokens no earlier window scored, so every token is scored once, with at least
    context_length - stride tokens of context once the first window is passed.
    """
    ids = _as_ids(model, ids)
    context_length = context_length or model.config.context_length
    stride = stride or context_length
    if not 1 <= context_length <= model.config.context_length:
        raise ValueError(f"context_length must be in [1, {model.config.context_length}], got {context_length}")
    if not 1 <= stride <= context_length:
        raise ValueError(f"stride must be in [1, context_length = {context_length}], got {stride}")
    n_targets = ids.numel() - 1  # the token at position t + 1 is predicted at position t
    nlls = []
    scored = 0  # predictions at positions 0 .. scored - 1 are done
    with _eval_mode(model):
        for begin in range(0, n_targets, stride):
            end = min(begin + context_length, n_targets)  # predict from positions begin .. end - 1
            logits = model(ids[None, begin:end])[0]  # (T, V)
            log_probs = F.log_softmax(logits.float(), dim=-1)  # (T, V)
            targets = ids[begin + 1 : end + 1]  # (T,)
            nll = -log_probs.gather(-1, targets[:, None]).squeeze(-1)  # (T,)
            nlls.append(nll[scored - begin :])  # only the positions not scored yet
            scored = end
            if end == n_targets:
                break
    return torch.cat(nlls)


def perplexity(
    model: nn.Module,
    ids: torch.Tensor | Sequence[int],
    context_length: int | None = None,
    stride: int | None = None,
) -> float:
    """exp(mean negative log-likelihood per token) of the text `ids` (N,), read as in `token_nlls`.

    A model that spreads its probability evenly over V tokens has perplexity V; a perfect
    one has perplexity 1.
    """
    return math.exp(token_nlls(model, ids, context_length, stride).mean().item())


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def find_tokenizer(directory: str | Path) -> Path:
    """The tokenizer JSON of a checkpoint folder: tokenizer.json, or the one llm_course-bpe JSON file."""
    from llm_course.tokenizer import FORMAT_NAME

    directory = Path(directory)
    if (directory / TOKENIZER_NAME).is_file():
        return directory / TOKENIZER_NAME
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT_NAME:
                found.append(path)
        except (ValueError, UnicodeDecodeError, AttributeError):
            continue
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"checkpoint folder {str(directory)!r} has no tokenizer: save one there with "
            f"Tokenizer.save('{directory / TOKENIZER_NAME}'), or pass --tokenizer PATH"
        )
    raise ValueError(
        f"checkpoint folder {str(directory)!r} holds several tokenizers ({', '.join(p.name for p in found)}): "
        "pass --tokenizer PATH to choose one"
    )


def load_checkpoint(directory: str | Path, device: torch.device | str = "cpu", tokenizer: str | Path | None = None):
    """(model, tokenizer) from a folder written by `save_model` plus `Tokenizer.save`; clear errors if not."""
    from llm_course.checkpoints import CONFIG_NAME, WEIGHTS_NAME, load_model
    from llm_course.tokenizer import Tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(directory)!r} does not exist")
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint folder {str(directory)!r} has no {' and no '.join(missing)}: "
            "write the model there with llm_course.checkpoints.save_model(model, folder)"
        )
    tok = Tokenizer.load(tokenizer if tokenizer is not None else find_tokenizer(directory))
    model = load_model(directory, device=device).eval()
    if tok.n_vocab > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.n_vocab} ids but the model only {model.config.vocab_size}: "
            "they were not trained together"
        )
    return model, tok


def _run(args: argparse.Namespace) -> int:
    from llm_course.beam_search import beam_search, check_beam_settings
    from llm_course.utils import get_device

    check_sampling_settings(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    stop = check_stop(args.stop, need_tokenizer=False)
    sampling_flags = {"--temperature": args.temperature != 1.0, "--top-k": args.top_k, "--top-p": args.top_p,
                      "--min-p": args.min_p, "--repetition-penalty": args.repetition_penalty,
                      "--frequency-penalty": args.frequency_penalty, "--presence-penalty": args.presence_penalty,
                      "--stop": stop}
    if args.num_beams > 1:
        check_beam_settings(args.num_beams, args.max_new_tokens, args.length_penalty)
        given = [flag for flag, value in sampling_flags.items() if value]
        if given:
            raise ValueError(f"--num-beams searches deterministically: {', '.join(given)} only apply to sampling")
    device = get_device(args.device)
    model, tok = load_checkpoint(args.checkpoint, device, args.tokenizer)
    prompt = tok.encode(args.prompt, allowed_special="all")
    if not prompt:
        raise ValueError("the prompt is empty: give at least one character with --prompt")
    eos_id = tok.special_tokens.get(args.eos) if args.eos else None
    if args.eos and eos_id is None:
        raise ValueError(f"--eos {args.eos!r} is not a special token of this tokenizer ({sorted(tok.special_tokens)})")
    idx = torch.tensor([prompt], device=device)  # (1, T)
    if args.num_beams > 1:
        out = beam_search(model, idx, args.max_new_tokens, args.num_beams, args.length_penalty, eos_id=eos_id)
    else:
        generator = torch.Generator(device=device).manual_seed(args.seed)
        out = generate(
            model, idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p, generator, eos_id=eos_id,
            min_p=args.min_p, repetition_penalty=args.repetition_penalty,
            frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
            stop=stop, tokenizer=tok,
        )
    new_text = truncate_at_stop(tok.decode(out[0, len(prompt):].tolist()), stop)
    print(args.prompt + new_text)
    return 0


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a saved model",
        description=(
            "Continue a prompt with a model saved by llm_course.checkpoints.save_model; the folder must also hold "
            "its tokenizer (Tokenizer.save, as tokenizer.json). Sampling: penalties -> temperature -> top-k -> "
            "top-p -> min-p, temperature 0 is greedy; --num-beams N runs beam search instead."
        ),
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="folder with the model and its tokenizer")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default: 100)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most probable tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample from the nucleus of probability p")
    parser.add_argument("--min-p", type=float, default=None,
                        help="drop tokens below min_p x the most probable token's probability")
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help="divide the positive logits (multiply the negative ones) of tokens already seen")
    parser.add_argument("--frequency-penalty", type=float, default=0.0,
                        help="subtract this x the count of each token generated so far (default: 0)")
    parser.add_argument("--presence-penalty", type=float, default=0.0,
                        help="subtract this from each token generated at least once (default: 0)")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="end once the new text contains TEXT (repeatable); TEXT is not printed")
    parser.add_argument("--num-beams", type=int, default=1,
                        help="beam search with this many beams instead of sampling (default: 1, sampling)")
    parser.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam search: divide a finished beam's log-probability by length**this (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's generator (default: 0)")
    parser.add_argument("--eos", default=None, help="stop at this special token, e.g. '<|endoftext|>'")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer JSON, if not in the folder")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.set_defaults(func=_run)
