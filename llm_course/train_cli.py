"""``python -m llm_course train``: pretrain a model preset with the course's `Trainer`.

One process::

    python -m llm_course train --preset tiny --steps 300 --out runs/train

N processes on one machine, data parallel (chapter 13)::

    torchrun --standalone --nproc_per_node=N -m llm_course train --parallel ddp ...   # or fsdp

Under torchrun every rank builds the same model, reads its own rows of each global batch
(`TokenBatches` with rank and world size), and the model is wrapped by
`distributed.wrap_model`: DDP, or FSDP2 with one unit per block. Checkpoints are then
sharded (`torch.distributed.checkpoint`) and resume on any number of ranks; only rank 0
prints. A worker that torchrun restarts after a failure (``--max-restarts``, with a c10d
rendezvous such as ``--standalone``) resumes from the newest checkpoint by itself. Each
checkpoint folder holds the weights, the model config and the tokenizer:
``python -m llm_course generate --checkpoint OUT/step_N`` samples from it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from llm_course import distributed as D
from llm_course import transformer
from llm_course.data import load_corpus
from llm_course.trainer import PRECISIONS, TrainConfig, Trainer, encode_split
from llm_course.utils import get_device, set_seed

PRESETS = ("tiny", "llama_tiny", "gpt2_small")  # functions of llm_course.transformer that take a vocabulary size


def _restarted() -> bool:
    """True in a worker that torchrun started again after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def _start_processes(args: argparse.Namespace) -> torch.device:
    """Join torchrun's process group if there is one; this rank's device."""
    under_torchrun = "WORLD_SIZE" in os.environ
    if args.parallel != "none" and not under_torchrun:
        raise ValueError(f"--parallel {args.parallel} needs several processes: start the run with torchrun")
    if not under_torchrun:
        return get_device(args.device)
    device = D.setup_from_env(args.backend)
    if D.rank_and_world()[1] > 1 and args.parallel == "none":
        raise ValueError("under torchrun with several ranks, pass --parallel ddp or fsdp (none would train copies)")
    return device


def _tokenizer(args: argparse.Namespace, text: str, out: Path, resuming: bool):
    """The run's tokenizer: out/tokenizer.json when resuming, else --tokenizer or one trained by rank 0."""
    from llm_course.tokenizer import Tokenizer

    saved = out / "tokenizer.json"
    if not resuming and D.rank_and_world()[0] == 0:
        if args.tokenizer:
            tokenizer = Tokenizer.load(args.tokenizer)
        else:
            train_text = text[: int(len(text) * (1 - args.val_fraction))]
            tokenizer = Tokenizer.train(train_text, args.vocab_size - 1, special_tokens=["<|endoftext|>"])
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(saved)  # every checkpoint copies it
    D.barrier()  # the other ranks read what rank 0 wrote
    return Tokenizer.load(saved)


def _run(args: argparse.Namespace) -> int:
    if args.pretrained:
        from llm_course.pretrained import load_pretrained, pretrained_dir

        load_pretrained(args.pretrained, progress=not args.no_progress)
        print(f"the pretrained model {args.pretrained!r} is in {pretrained_dir(args.pretrained)}")
        return 0
    device = _start_processes(args)
    try:
        return _train(args, device)
    finally:
        if D.in_process_group():
            D.dist.destroy_process_group()


def _train(args: argparse.Namespace, device: torch.device) -> int:
    """Train (or resume) the run `args` describes on this rank's `device`."""
    rank, world = D.rank_and_world()
    main = rank == 0
    say = print if main else (lambda *a, **k: None)
    set_seed(args.seed)
    out = Path(args.out)
    text = load_corpus(args.corpus)
    progress, log = main and not args.no_progress, print if main else None
    has_checkpoints = any(out.glob("step_*/trainer.json"))
    resuming = args.resume or (_restarted() and has_checkpoints)
    if not resuming and has_checkpoints:
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue that run, or another --out")
    tokenizer = _tokenizer(args, text, out, resuming)
    train_tokens, val_tokens = encode_split(text, tokenizer, args.val_fraction)
    if resuming:
        trainer = Trainer.resume(out, train_tokens, val_tokens, device=device, parallel=args.parallel,
                                 progress=progress, log=log)  # fmt: skip
        say(f"resumed {out} at step {trainer.step} of {trainer.config.max_steps} on {world} x {device}")
    else:
        model_config = getattr(transformer, args.preset)(tokenizer.n_vocab)
        model_config.use_fused_attention = args.fused_attention
        seq_len = args.seq_len or model_config.context_length
        config = TrainConfig(
            batch_size=args.batch_size, seq_len=seq_len, grad_accum=args.grad_accum, max_steps=args.steps,
            lr=args.lr, warmup_steps=args.warmup if args.warmup is not None else max(1, args.steps // 10),
            weight_decay=args.weight_decay, grad_clip=args.grad_clip, eval_interval=args.eval_interval,
            checkpoint_interval=args.checkpoint_interval, precision=args.precision, compile=args.compile,
            fused_adamw=args.fused_adamw, seed=args.seed,
        )  # fmt: skip
        generator = torch.Generator().manual_seed(args.seed)  # the same initial weights on every rank
        model = D.wrap_model(transformer.Transformer(model_config, generator=generator).to(device), args.parallel)
        trainer = Trainer(model, config, train_tokens, val_tokens, out_dir=out, progress=progress, log=log)
        n = transformer.count_parameters(model_config)
        say(
            f"training {args.preset} ({n:,} parameters) on {len(train_tokens):,} tokens "
            f"({len(val_tokens):,} held out) for {config.max_steps} steps of {world * config.tokens_per_step:,} "
            f"tokens on {world} x {device}" + (f" ({args.parallel})" if args.parallel != "none" else "")
        )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    speeds = trainer.history["tokens_per_s"]
    speed = world * statistics.median(speeds[len(speeds) // 2 :]) if speeds else 0.0  # all ranks, warmed up
    mfu = trainer.mfu(speed / world)
    say(f"done in {seconds:.1f} s, {speed:,.0f} tokens/s" + (f", MFU {mfu:.1%}" if mfu is not None else ""))
    last = trainer.checkpoints()[-1][1]
    if trainer.val_history["loss"]:
        say(f"validation loss {trainer.val_history['loss'][-1]:.4f}; checkpoint in {last}")
    if args.sample is not None and main:
        from llm_course.checkpoints import load_model
        from llm_course.trainer import sample_text

        model = load_model(last, device)  # the whole model, also when training sharded it
        sample = sample_text(model, tokenizer, args.sample, 80, generator=torch.Generator().manual_seed(args.seed))
        print(f"sample: {args.sample}{sample}")
    return 0


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pretrain a model preset on a corpus, with checkpoints and resume (also under torchrun)",
        description="Pretrain a GPT-style model on the default corpus (the CPython docs) or any text, "
        "writing checkpoints to --out; --resume continues a stopped run exactly. Under torchrun, "
        "--parallel ddp or fsdp trains data parallel on every rank.",
    )
    parser.add_argument("--preset", default="tiny", choices=PRESETS, help="model (default: tiny)")
    parser.add_argument("--corpus", type=Path, default=None, help="text file or folder (default: the CPython docs)")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer JSON to use instead of training one")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary of a new tokenizer (default: 4096)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail of the corpus (default: 0.1)")
    parser.add_argument("--out", default="runs/train", help="checkpoint folder (default: runs/train)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch and rank (default: 16)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default: 1)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the context length)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    parser.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 10%% of --steps)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="decoupled weight decay (default: 0.1)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 for none (default: 1.0)")
    parser.add_argument("--eval-interval", type=int, default=100, help="steps between validations (default: 100)")
    parser.add_argument("--checkpoint-interval", type=int, default=100, help="steps between checkpoints (default: 100)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available; "
                        "under torchrun: cuda:LOCAL_RANK with nccl, cpu with gloo)")  # fmt: skip
    parser.add_argument("--parallel", default="none", choices=D.PARALLEL, help="data parallelism under torchrun: "
                        "ddp (a full copy per rank) or fsdp (FSDP2, sharded per block) (default: none)")  # fmt: skip
    parser.add_argument("--backend", default=None, choices=("gloo", "nccl"), help="torch.distributed backend "
                        "(default: nccl with CUDA, else gloo)")  # fmt: skip
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: bf16 on CUDA; tf32: fp32 "
                        "with TF32 matmuls on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model and loss")
    parser.add_argument("--fused-attention", action="store_true", help="PyTorch's fused attention kernel")
    parser.add_argument("--fused-adamw", action="store_true", help="PyTorch's fused AdamW instead of the course's")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--sample", default=None, help="print a continuation of this prompt at the end")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--pretrained", metavar="NAME", help="train, or find in the cache, the course's model NAME (tiny)")
    parser.set_defaults(func=_run)
