"""``python -m llm_course tokenize``: train a BPE tokenizer on a corpus, or encode text with one."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llm_course.data import load_corpus
from llm_course.tokenizer import Tokenizer


def _run(args: argparse.Namespace) -> int:
    if args.load:
        tok = Tokenizer.load(args.load)
    else:
        text = load_corpus(args.corpus)
        start = time.perf_counter()
        tok = Tokenizer.train(text, args.vocab_size, special_tokens=args.special)
        print(f"trained {tok} on {len(text):,} characters in {time.perf_counter() - start:.2f} s")
    if args.save:
        print(f"saved to {tok.save(args.save)}")
    if args.text is not None:
        ids = tok.encode(args.text, allowed_special="all")
        print(ids)
        print([tok.token_str(i) for i in ids])
    return 0


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        help="train a BPE tokenizer, save it, encode text",
        description="Train a byte-level BPE tokenizer (or load one) and optionally encode some text.",
    )
    parser.add_argument("--corpus", type=Path, default=None, help="text file or folder (default: the CPython docs)")
    parser.add_argument("--vocab-size", type=int, default=5000, help="vocabulary size (default: 5000)")
    parser.add_argument("--special", action="append", default=[], help="a special token, e.g. '<|endoftext|>'")
    parser.add_argument("--load", type=Path, help="load a tokenizer JSON instead of training")
    parser.add_argument("--save", type=Path, help="write the tokenizer JSON here")
    parser.add_argument("--text", help="encode this text and print the ids and tokens")
    parser.set_defaults(func=_run)
