"""Tokenizer benchmark: training time and encoding throughput, as ratios measured in one run.

Training: our incremental BPE trainer against Hugging Face `tokenizers` (Rust) and
against the naive trainer that recounts every pair after every merge, for
vocabularies of 1,000 and 5,000 on the default corpus.
Encoding: our tokenizer (pure Python, cold and warm chunk cache) against tiktoken
(Rust) built from the same ranks, on the corpus and on unseen Python source.

Targets (issue 2): training within 10x of `tokenizers`, encoding within 10x of tiktoken.
Run:  python bench/bench_tokenizer.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # compare single-threaded: our trainer uses one core

from llm_course import bpe  # noqa: E402
from llm_course.data import default_corpus, stdlib_source_corpus  # noqa: E402
from llm_course.tokenizer import Tokenizer  # noqa: E402


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hf_train(text: str, vocab_size: int) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=0,
    )
    tok.train_from_iterator([text], trainer=trainer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the slow naive trainer at 5,000")
    args = parser.parse_args()
    corpus = default_corpus()
    mb = len(corpus.encode("utf-8")) / 1e6
    print(f"corpus: {mb:.2f} MB; tokenizers threads: {os.environ['RAYON_NUM_THREADS']}\n")

    print("training          ours (s)   tokenizers (s)   naive (s)   ours/tokenizers   naive/ours")
    for vocab_size in (1000, 5000):
        ours = timed(lambda: bpe.train_bpe(corpus, vocab_size))
        hf = timed(lambda: hf_train(corpus, vocab_size))
        if args.quick and vocab_size > 1000:
            naive_text, naive = "skipped", float("nan")
        else:
            naive = timed(lambda: bpe.train_bpe_naive(corpus, vocab_size), repeats=1)
            naive_text = f"{naive:9.2f}"
        print(
            f"vocab {vocab_size:5}      {ours:8.3f}   {hf:14.3f}   {naive_text:>9}   "
            f"{ours / hf:15.2f}   {naive / ours:10.1f}"
        )

    tok = Tokenizer.train(corpus, 5000)
    oracle = tok.to_tiktoken()
    unseen = stdlib_source_corpus(max_bytes=5_000_000)
    print("\nencoding (MB/s)       ours cold   ours warm   tiktoken   tiktoken/ours(cold)   tiktoken/ours(warm)")
    for name, text in [("corpus", corpus), ("stdlib source", unseen)]:
        size = len(text.encode("utf-8")) / 1e6
        cold = timed(lambda: Tokenizer(tok.merges).encode_ordinary(text))
        tok.encode_ordinary(text)  # fill the cache
        warm = timed(lambda: tok.encode_ordinary(text))
        tik = timed(lambda: oracle.encode_ordinary(text))
        assert tok.encode_ordinary(text) == oracle.encode_ordinary(text)
        print(
            f"{name:20} {size / cold:10.2f} {size / warm:11.2f} {size / tik:10.2f} "
            f"{cold / tik:21.2f} {warm / tik:21.2f}"
        )


if __name__ == "__main__":
    main()
