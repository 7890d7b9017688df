"""Time a LoRA fine-tuning step against a full fine-tuning step, and measure their peak memory.

The same model (`transformer.tiny`-shaped by default, wider with --d-model / --layers) takes
AdamW steps on random tokens in three ways:
  full    every parameter trained (weights, their gradients and AdamW's two moments)
  lora    rank-r adapters on the chosen linear layers (`lora.apply_lora`), the rest frozen
  qlora   the same adapters on a base quantized to int4 (`quantization.quantize_model`)
Each repetition times one step of each (the order rotates). The script prints median step
times, peak memory (CUDA: torch.cuda.max_memory_allocated over building the model and two steps,
one model at a time, weights, activations and AdamW state included; CPU: the bytes of weights +
gradients + optimizer state, counted from the tensors), and the ratios to full.

    python bench/bench_lora.py                                  # CPU, tiny model
    python bench/bench_lora.py --device cuda --d-model 1024 --layers 12 --batch 16 --seq 512
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llm_course.lora import apply_lora, count_trainable
from llm_course.quantization import quantize_model, weight_bytes
from llm_course.transformer import Transformer, TransformerConfig
from llm_course.utils import get_device, set_seed


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--targets", default="w_q,w_k,w_v,w_o,w1,w2", help="names of the adapted linear layers")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--device", default=None)
    return p.parse_args()


def build(args, mode: str, device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    cfg = TransformerConfig(vocab_size=args.vocab, context_length=args.seq, d_model=args.d_model,
                            n_layers=args.layers, n_heads=args.heads)  # fmt: skip
    model = Transformer(cfg, generator=torch.Generator().manual_seed(0)).to(device)
    if mode == "qlora":
        quantize_model(model, bits=4, group_size=32)
    if mode != "full":
        apply_lora(model, tuple(args.targets.split(",")), r=args.r, alpha=2 * args.r)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def step(model, opt, idx) -> None:
    logits = model(idx[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def state_bytes(model, opt) -> int:
    """Weights and buffers + gradients + optimizer state."""
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    moments = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return weight_bytes(model) + grads + moments


def main() -> None:
    args = parse_args()
    device = get_device(args.device)
    set_seed(0)
    modes = ["full", "lora", "qlora"]
    idx = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)
    peak = {}
    for m in modes:  # memory, one model at a time: everything it allocates, weights included
        if device.type == "cuda":
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        model, opt = build(args, m, device)
        step(model, opt, idx)
        step(model, opt, idx)  # the second step holds AdamW's state and the gradients together
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak[m] = torch.cuda.max_memory_allocated() - start
        else:
            peak[m] = state_bytes(model, opt)
        del model, opt
    models = {m: build(args, m, device) for m in modes}
    times = {m: [] for m in modes}
    for m in modes:  # warm-up
        step(*models[m], idx)
    for rep in range(args.reps):
        for m in modes[rep % 3 :] + modes[: rep % 3]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(*models[m], idx)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[m].append(time.perf_counter() - t0)
    what = "peak CUDA memory" if device.type == "cuda" else "weights + grads + AdamW state"
    print(f"device {device}, d_model {args.d_model}, {args.layers} layers, batch {args.batch} x {args.seq}, r {args.r}")
    print(f"{'mode':6} {'trainable':>11} {'step ms':>9} {'x full':>7} {what + ' MiB':>34} {'x full':>7}")
    for m in modes:
        trainable, _ = count_trainable(models[m][0])
        t = statistics.median(times[m])
        print(f"{m:6} {trainable:11,d} {1e3 * t:9.1f} {t / statistics.median(times['full']):7.2f} "
              f"{peak[m] / 2**20:34.1f} {peak[m] / peak['full']:7.2f}")


if __name__ == "__main__":
    main()
