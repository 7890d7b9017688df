"""Training throughput: the course's trainer against Hugging Face, and the speed-up ladder on a GPU.

Part 1 (any device) times one optimizer step, in tokens per second, of
  ours-fused  llm_course.trainer.Trainer.train_step on the course's Transformer with PyTorch's
              fused attention kernel: the course's cross_entropy, AdamW, clipping, schedule and
              spike checks (one host sync per step to read the loss and gradient norm)
  hf-sdpa     a plain loop around transformers.GPT2LMHeadModel (attn_implementation="sdpa"):
              its own loss (labels=...), torch.optim.AdamW, clip_grad_norm_, a LambdaLR schedule,
              loss.item() every step
  ours-own    the course's trainer with the course's own attention function
  hf-eager    GPT2LMHeadModel with attn_implementation="eager"
with the same GPT-2-style configuration, the same batches (the default corpus, tokenized by the
course's BPE), the same optimizer hyperparameters, parameter groups, clipping and precision
(bf16 autocast on CUDA, fp32 on CPU). Each repetition times every variant once, in rotating
order, so slow drifts of a shared machine hit all of them alike; the script prints the median
tokens/s and the ratios ours / theirs.

Part 2 (--ladder) climbs the ladder of speed-ups one technique at a time on the course's
trainer: fp32 -> + TF32 matmuls -> + bf16 autocast -> + fused attention -> + torch.compile -> + fused AdamW,
printing tokens/s and model FLOPs utilization (MFU, against the GPU's dense bf16 peak) of each
rung. On CUDA it uses GPT-2 small (124M parameters, context 1024, vocabulary 50304) on random
token ids; elsewhere a small model, and torch.compile only with --compile-on-cpu.

    python bench/bench_trainer.py                           # part 1 on CPU (6 layers, 256 wide)
    python bench/bench_trainer.py --ladder                  # + the small ladder on CPU
    python bench/bench_trainer.py --device cuda --layers 12 --d-model 768 --heads 12 --seq 1024 \\
        --batch 16 --vocab 8192 --ladder                   # on a GPU: part 1 at GPT-2 small size + the ladder
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from llm_course.checkpoints import to_hf_config
from llm_course.data import default_corpus
from llm_course.optim import decay_groups, warmup_cosine_scheduler
from llm_course.tokenizer import Tokenizer
from llm_course.trainer import TokenBatches, Trainer, TrainConfig, encode_split, palm_flops_per_token, peak_flops
from llm_course.transformer import Transformer, TransformerConfig, gpt2_small
from llm_course.utils import get_device, set_seed
from timing import synchronize  # bench/timing.py


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary trained on the default corpus")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per variant")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per repetition")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--ladder", action="store_true", help="also run the ladder of speed-ups (part 2)")
    p.add_argument("--ladder-batch", type=int, default=None, help="micro-batch of the ladder (default: 16 on CUDA)")
    p.add_argument("--ladder-steps", type=int, default=None, help="timed steps per rung (default: 20 on CUDA, 6 on CPU)")
    p.add_argument("--compile-on-cpu", action="store_true", help="include the torch.compile rungs on CPU")
    p.add_argument("--skip-compare", action="store_true", help="skip part 1")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def train_config(args, **overrides) -> TrainConfig:
    settings = dict(batch_size=args.batch, seq_len=args.seq, max_steps=10_000, lr=6e-4, warmup_steps=10,
                    weight_decay=0.1, grad_clip=1.0, eval_interval=0)  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


class HFLoop:
    """The usual training loop around GPT2LMHeadModel, with the trainer's optimizer settings."""

    def __init__(self, config: TransformerConfig, train: TrainConfig, tokens, device, attn: str):
        from transformers import GPT2LMHeadModel

        self.model = GPT2LMHeadModel(to_hf_config(config, attn_implementation=attn)).to(device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            decay_groups(self.model, train.weight_decay), lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps
        )
        self.scheduler = warmup_cosine_scheduler(self.optimizer, train.warmup_steps, train.max_steps, train.min_lr_ratio)
        self.data = TokenBatches(tokens, train.batch_size, train.seq_len, train.seed)
        self.device, self.clip = device, train.grad_clip
        self.bf16 = device.type == "cuda"

    def train_step(self) -> float:
        x, _ = self.data.next_batch()
        x = x.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model(input_ids=x, labels=x).loss  # shifts the labels inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def compare(args, device: torch.device) -> None:
    text = default_corpus()
    tokenizer = Tokenizer.train(text[: int(len(text) * 0.9)], args.vocab)
    tokens, _ = encode_split(text, tokenizer)
    config = TransformerConfig(vocab_size=tokenizer.n_vocab, context_length=args.seq, d_model=args.d_model,
                               n_layers=args.layers, n_heads=args.heads)  # fmt: skip
    train = train_config(args, precision="auto")
    variants = {}
    for name, fused in [("ours-fused", True), ("ours-own", False)]:
        model = Transformer(dataclasses.replace(config, use_fused_attention=fused), torch.Generator().manual_seed(0))
        variants[name] = Trainer(model.to(device), train, tokens, log=None)
    variants["hf-sdpa"] = HFLoop(config, train, tokens, device, "sdpa")
    variants["hf-eager"] = HFLoop(config, train, tokens, device, "eager")
    n_params = sum(p.numel() for p in variants["ours-fused"].model.parameters())
    print(
        f"part 1: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, vocab {tokenizer.n_vocab}, "
        f"{n_params / 1e6:.1f}M parameters; batch {args.batch} x {args.seq} tokens; "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'} on {device}, {torch.get_num_threads()} threads"
    )
    for v in variants.values():
        for _ in range(args.warmup):
            v.train_step()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                variants[name].train_step()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    speed = {name: train.tokens_per_step / statistics.median(t) for name, t in times.items()}
    for name in names:
        print(f"  {name:10s} {speed[name]:12,.0f} tokens/s   ({statistics.median(times[name]) * 1e3:8.1f} ms/step)")
    print(f"  ratio ours-fused / hf-sdpa: {speed['ours-fused'] / speed['hf-sdpa']:.2f}")
    print(f"  ratio ours-own / hf-eager:  {speed['ours-own'] / speed['hf-eager']:.2f}")


def ladder(args, device: torch.device) -> None:
    cuda = device.type == "cuda"
    if cuda:
        config = gpt2_small(vocab_size=50304)  # GPT-2's 50257, padded to a multiple of 64 as nanoGPT does
        batch, seq, steps = args.ladder_batch or 16, 1024, args.ladder_steps or 20
    else:
        config = TransformerConfig(vocab_size=4096, context_length=128, d_model=128, n_layers=4, n_heads=4)
        batch, seq, steps = args.ladder_batch or 8, 128, args.ladder_steps or 6
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, config.vocab_size, (batch * seq * (steps + 20) * 2,), generator=g)
    rungs = [
        ("fp32", dict(precision="fp32"), False),
        ("+ TF32 matmuls", dict(precision="tf32"), False),  # the same as fp32 on a CPU
        ("+ bf16 autocast", dict(precision="bf16"), False),
        ("+ fused attention", dict(precision="bf16"), True),
        ("+ torch.compile", dict(precision="bf16", compile=True), True),
        ("+ fused AdamW", dict(precision="bf16", compile=True, fused_adamw=True), True),
    ]
    peak = peak_flops(device)
    fpt = palm_flops_per_token(config, seq)
    print(
        f"\npart 2, the ladder: {sum(p.numel() for p in Transformer(config).parameters()) / 1e6:.0f}M parameters, "
        f"batch {batch} x {seq}, {fpt / 1e6:.1f} MFLOP per token (6N + 12LTC), on {device}"
        + (f" ({torch.cuda.get_device_name(device)}, peak {peak / 1e12:.0f} TFLOP/s bf16)" if cuda and peak else "")
    )
    previous = None
    for name, overrides, fused_attention in rungs:
        if overrides.get("compile") and not cuda and not args.compile_on_cpu:
            if not overrides.get("fused_adamw"):
                print(f"  {name:20s} skipped on CPU (pass --compile-on-cpu)")
                continue
            overrides = {**overrides, "compile": False}  # the next rung, without compile
        set_seed(args.seed)
        model = Transformer(dataclasses.replace(config, use_fused_attention=fused_attention)).to(device)
        trainer = Trainer(model, train_config(args, batch_size=batch, seq_len=seq, **overrides), tokens, log=None)
        start = time.perf_counter()
        for _ in range(3):  # compiles on the first step
            trainer.train_step()
        synchronize(device)
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        synchronize(device)
        tps = steps * trainer.config.tokens_per_step / (time.perf_counter() - start)
        mfu = trainer.mfu(tps)
        gain = f"x{tps / previous:.2f}" if previous else ""
        shown = f"MFU {mfu:6.1%}" if mfu is not None else f"{tps * fpt / 1e9:7.1f} GFLOP/s"
        print(f"  {name:20s} {tps:12,.0f} tokens/s  {shown}  {gain:>6s}   (first 3 steps {warm:.1f} s)")
        previous = tps
        del trainer, model
        if cuda:
            torch.cuda.empty_cache()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    set_seed(args.seed)
    if not args.skip_compare:
        compare(args, device)
    if args.ladder:
        ladder(args, device)


if __name__ == "__main__":
    main()
