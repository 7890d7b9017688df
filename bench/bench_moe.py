"""Time the course's MoE layer against a dense FFN with the same active parameters.

The dense FFN is a SwiGLU of hidden size k F; the MoE layer has E SwiGLU experts of hidden
size F, k per token, so both spend the same matrix-product FLOPs per token (the MoE adds
its router, 2 C E). Three layers are timed on the same tokens:
  dense         llm_course.ffn.SwiGLU(C, k F)
  moe           llm_course.moe.MoE(C, F, E, k): a loop over the experts, gather and index_add
  hf-mixtral    Hugging Face's MixtralSparseMoeBlock with the same weights (its default experts
                implementation), a reference point for the loop
The outputs of moe and hf-mixtral are checked to agree. Each repetition times every layer
once (the order rotates, so slow drifts of the machine hit all alike): a forward pass
without gradients, and a forward + backward pass of a sum of squares. The script prints
median times, tokens per second, and the ratios moe / dense (1 would mean the routing is
free) and moe / hf-mixtral.

    python bench/bench_moe.py                              # CPU, C 512, 8 experts of 704, k 2
    python bench/bench_moe.py --device cuda --dtype bfloat16 --tokens 16384 --d-model 1024
"""

from __future__ import annotations

import argparse

import torch

from llm_course.ffn import SwiGLU
from llm_course.moe import MoE, ffn_flops_per_token, moe_flops_per_token
from llm_course.utils import get_device, set_seed
from timing import interleaved_medians, time_forward, time_forward_backward  # bench/timing.py


def time_forward_backward_sq(layer, x, device) -> float:
    """Forward, sum of squares of the output, backward."""
    return time_forward_backward(layer, x, lambda y: y.float().pow(2).sum(), device)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=704, help="hidden size of one expert (the dense FFN gets k times it)")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per call (batch x sequence)")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per layer")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--no-hf", action="store_true", help="skip Hugging Face's Mixtral block")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def mixtral_block(moe: MoE, d_model: int, d_ff: int):
    """Hugging Face's MixtralSparseMoeBlock holding `moe`'s weights."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(hidden_size=d_model, intermediate_size=d_ff, num_local_experts=moe.n_experts,
                           num_experts_per_tok=moe.k, experts_implementation="grouped_mm")  # fmt: skip
    block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.copy_(moe.router.weight)
        block.experts.gate_up_proj.copy_(
            torch.stack([torch.cat([e.w1.weight, e.w3.weight]) for e in moe.experts])
        )  # (E, 2F, C)
        block.experts.down_proj.copy_(torch.stack([e.w2.weight for e in moe.experts]))  # (E, C, F)
    return block


def main() -> None:
    args = parse_args()
    device = get_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    set_seed(args.seed)
    C, Fh, E, k = args.d_model, args.d_ff, args.experts, args.k
    moe = MoE(C, Fh, E, k)
    layers = {"dense": SwiGLU(C, k * Fh), "moe": moe}
    if not args.no_hf:
        layers["hf-mixtral"] = mixtral_block(moe, C, Fh)
    for layer in layers.values():
        layer.to(device=device, dtype=dtype).train()

    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(1, args.tokens, C, generator=generator).to(device=device, dtype=dtype)
    if "hf-mixtral" in layers:
        with torch.no_grad():
            diff = (layers["moe"](x).float() - layers["hf-mixtral"](x).float()).abs().max().item()
        print(f"max |moe - hf-mixtral| = {diff:.2e}")
    with torch.no_grad():
        layers["moe"](x)
        counts = torch.bincount(layers["moe"].router_logits.topk(k, dim=-1).indices.flatten(), minlength=E)
    print(f"tokens per expert in this batch: {counts.tolist()} (k N / E = {k * args.tokens // E})")
    flops_dense, flops_moe = ffn_flops_per_token(C, k * Fh), moe_flops_per_token(C, Fh, E, k)
    print(
        f"\ntorch {torch.__version__}, device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}\n"
        f"C {C}, expert d_ff {Fh}, E {E}, k {k}; dense d_ff {k * Fh}; {args.tokens} tokens per call; "
        f"{args.reps} reps after {args.warmup} warm-up\n"
        f"forward FLOPs per token: dense {flops_dense:,}, moe {flops_moe:,} (ratio {flops_moe / flops_dense:.3f}); "
        f"parameters: dense {sum(p.numel() for p in layers['dense'].parameters()):,}, "
        f"moe {sum(p.numel() for p in moe.parameters()):,}"
    )
    measures = {
        "fwd": lambda m: time_forward(m, x, device),
        "fwd+bwd": lambda m: time_forward_backward_sq(m, x, device),
    }
    median = interleaved_medians(layers, measures, args.warmup, args.reps)
    print(f"\n{'layer':<12}{'forward ms':>12}{'tokens/s':>12}{'fwd+bwd ms':>12}{'tokens/s':>12}")
    for name in layers:
        fwd, step = median[(name, "fwd")], median[(name, "fwd+bwd")]
        print(f"{name:<12}{fwd * 1e3:>12.2f}{args.tokens / fwd:>12,.0f}{step * 1e3:>12.2f}{args.tokens / step:>12,.0f}")
    print("\nratio of times (above 1: slower than the baseline)")
    for ours, theirs in (("moe", "dense"), ("moe", "hf-mixtral")):
        if theirs in layers:
            fwd = median[(ours, "fwd")] / median[(theirs, "fwd")]
            step = median[(ours, "fwd+bwd")] / median[(theirs, "fwd+bwd")]
            print(f"{ours + ' / ' + theirs:<20} forward {fwd:.3f}   fwd+bwd {step:.3f}")


if __name__ == "__main__":
    main()
