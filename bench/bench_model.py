"""Time the course's GPT against Hugging Face's GPT2LMHeadModel, same config, same weights.

Four models are built from one set of random weights:
  ours-fused   llm_course.transformer.Transformer, PyTorch's fused attention kernel
  hf-sdpa      transformers.GPT2LMHeadModel, attn_implementation="sdpa" (its default)
  ours-own     Transformer with the course's own scaled_dot_product_attention
  hf-eager     GPT2LMHeadModel, attn_implementation="eager"
The logits are checked to agree, then each repetition times every model once (the order
rotates from one repetition to the next, so slow drifts of the machine hit all models
alike): a forward pass without gradients, and a forward + backward pass of the
cross-entropy loss. The script prints median times and the ratios ours / theirs.

    python bench/bench_model.py                      # 6 layers, 384 wide, batch 8 x 256, CPU
    python bench/bench_model.py --device cuda --dtype bfloat16 --layers 12 --d-model 768
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2LMHeadModel

from llm_course.checkpoints import from_hf_state_dict, to_hf_config
from llm_course.transformer import Transformer, TransformerConfig
from llm_course.utils import get_device, set_seed
from timing import interleaved_medians, time_forward, time_forward_backward  # bench/timing.py


def time_forward_backward_lm(model, idx, device) -> float:
    """Forward, next-token cross-entropy, backward."""

    def loss(logits):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), idx[:, 1:].flatten())

    return time_forward_backward(model, idx, loss, device)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--vocab", type=int, default=8192, help="vocabulary size (50257 for GPT-2's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


class HFLogits(torch.nn.Module):
    """GPT2LMHeadModel returning plain logits, so both models do the same work per call."""

    def __init__(self, model: GPT2LMHeadModel):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=idx, use_cache=False).logits


def main() -> None:
    args = parse_args()
    device = get_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    set_seed(args.seed)
    config = TransformerConfig(
        vocab_size=args.vocab, context_length=max(1024, args.seq), d_model=args.d_model,
        n_layers=args.layers, n_heads=args.heads, dropout=0.0,
    )  # fmt: skip

    hf_models = {}
    state_dict = None
    for impl in ("sdpa", "eager"):
        hf = GPT2LMHeadModel(to_hf_config(config, attn_implementation=impl))
        if state_dict is None:
            state_dict = hf.state_dict()
        hf.load_state_dict(state_dict)
        hf_models[impl] = HFLogits(hf.to(device=device, dtype=dtype))
    ours_own = from_hf_state_dict(state_dict, hf_models["sdpa"].model.config).to(device=device, dtype=dtype)
    ours_fused = Transformer(dataclasses.replace(ours_own.config, use_fused_attention=True))
    ours_fused.load_state_dict(ours_own.state_dict())
    ours_fused.to(device=device, dtype=dtype)
    models = {
        "ours-fused": ours_fused, "hf-sdpa": hf_models["sdpa"], "ours-own": ours_own, "hf-eager": hf_models["eager"]
    }  # fmt: skip
    for model in models.values():
        model.train()  # dropout is 0; train mode is what a training step runs in

    generator = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator).to(device)
    with torch.no_grad():
        reference = models["hf-eager"](idx).float()
        for name, model in models.items():
            diff = (model(idx).float() - reference).abs().max().item()
            print(f"max |logits - hf-eager logits| {name:>10}: {diff:.2e}")

    n_params = sum(p.numel() for p in ours_own.parameters())
    print(
        f"\ntorch {torch.__version__}, transformers {transformers.__version__}, device {device}, dtype {args.dtype}, "
        f"threads {torch.get_num_threads()}\nmodel: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, "
        f"vocab {args.vocab} ({n_params / 1e6:.1f}M parameters); batch {args.batch} x {args.seq} tokens; "
        f"{args.reps} reps after {args.warmup} warm-up"
    )
    measures = {
        "fwd": lambda m: time_forward(m, idx, device),
        "fwd+bwd": lambda m: time_forward_backward_lm(m, idx, device),
    }
    median = interleaved_medians(models, measures, args.warmup, args.reps)
    median = {key: seconds * 1e3 for key, seconds in median.items()}  # ms
    print(f"\n{'model':<12}{'forward ms':>12}{'fwd+bwd ms':>12}")
    for name in models:
        print(f"{name:<12}{median[(name, 'fwd')]:>12.1f}{median[(name, 'fwd+bwd')]:>12.1f}")
    print("\nratio ours / theirs (below 1: ours is faster)")
    for ours, theirs in (("ours-fused", "hf-sdpa"), ("ours-own", "hf-eager"), ("ours-fused", "hf-eager")):
        fwd = median[(ours, "fwd")] / median[(theirs, "fwd")]
        step = median[(ours, "fwd+bwd")] / median[(theirs, "fwd+bwd")]
        print(f"{ours + ' / ' + theirs:<24} forward {fwd:.3f}   fwd+bwd {step:.3f}")


if __name__ == "__main__":
    main()
