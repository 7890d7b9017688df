"""Chapter 09's speed-ups and savings, measured in one run, each against its target.

  kv-cache       generate(use_cache=True) vs recomputing the whole prefix each step, 256 new tokens
                 (target: >= 5x on CPU)
  vs-hf          the course's cached greedy decoding vs Hugging Face GPT2LMHeadModel.generate
                 (do_sample=False), same config and weights (target: not slower, ratio >= 1)
  speculative    speculative_generate with the course's draft/target pair vs the target's own
                 cached decoding, sampling at temperature 1 (target: >= 1.5x on CPU)
  batching       continuous vs static batching, tokens/s on a mixed workload (target: >= 2x)
  int8 / int4    memory of the linear layers vs fp32 (int8: ~4x) and validation perplexity
                 (int8 within 1%, int4 group-wise within 5%)

The draft/target pair and the quantized model are byte-level models trained here on the
course's default corpus; they are kept in the course's cache (`llm_course.cache`, under bench/;
--cache-dir for another folder) and reused until their settings, data or code change. Every timing
is the median of --reps repetitions (the order of the compared runs alternates).

    python bench/bench_inference.py                  # CPU, one thread
    python bench/bench_inference.py --threads 2 --reps 7
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from llm_course import cache
from llm_course.batching import continuous_batching, mixed_workload, static_batching
from llm_course.checkpoints import from_hf_state_dict, load_model, save_model, to_hf_config
from llm_course.data import default_corpus, train_val_split
from llm_course.generation import generate, perplexity
from llm_course.quantization import QuantizedLinear, quantize_model
from llm_course.speculative import speculative_generate
from llm_course.trainer import TrainConfig, Trainer
from llm_course.transformer import Transformer, tiny
from llm_course.utils import set_seed

# The llm_course code that trains and saves the benchmark's models: part of their cache key.
TRAINED_BY = ("llm_course.trainer", "llm_course.transformer", "llm_course.checkpoints")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per measurement")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--cache-dir", type=Path, default=None, help="default: $LLM_COURSE_CACHE or ~/.cache/llm_course")
    p.add_argument("--train-steps", type=int, default=400, help="training steps of the target (the draft: half)")
    return p.parse_args()


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_pair(a, b, reps: int) -> tuple[float, float]:
    """Median times of a and b, run alternately so slow drifts of the machine hit both."""
    ta, tb = [], []
    for i in range(reps):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def trained_pair(args, train_ids):
    """The course's draft/target pair, trained once and cached (`llm_course.cache`)."""
    configs = {
        "target": dataclasses.replace(tiny(256), n_layers=6, d_model=256, n_heads=8, n_kv_heads=8, context_length=512),
        "draft": dataclasses.replace(tiny(256), n_layers=1, d_model=64, n_heads=2, n_kv_heads=2, context_length=512),
    }
    models = {}
    for name, config in configs.items():
        steps = args.train_steps if name == "target" else args.train_steps // 2
        settings = TrainConfig(batch_size=16, seq_len=64, max_steps=steps, lr=2e-3, warmup_steps=30, eval_interval=0)

        def build(folder: Path, config=config, settings=settings, name=name) -> None:
            print(f"training the {name} ({settings.max_steps} steps, cached in {folder.parent}) ...", flush=True)
            model = Transformer(config, generator=torch.Generator().manual_seed(0))
            Trainer(model, settings, train_ids, log=None).train()
            save_model(model, folder)

        key = {"model": config, "train": settings, "data": train_ids, "init_seed": 0}
        folder = cache.cached_entry("bench", f"inference-{name}", key, TRAINED_BY, build, args.cache_dir)
        models[name] = load_model(folder).eval()
    return models["target"], models["draft"]


def linear_bytes(model: nn.Module) -> int:
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != "lm_head":
            total += m.weight.nbytes
        elif isinstance(m, QuantizedLinear):
            total += m.qweight.nbytes + m.scale.nbytes
    return total


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    set_seed(0)
    results = []  # (name, value, target, passed, detail)

    train_text, val_text = train_val_split(default_corpus(), 0.1)
    train_ids = torch.tensor(list(train_text.encode()), dtype=torch.long)
    val_ids = torch.tensor(list(val_text.encode()), dtype=torch.long)
    target, draft = trained_pair(args, train_ids)
    prompt = val_ids[None, :16]
    n = args.new_tokens

    # 1. KV cache vs recomputation, and 2. the course's cached decoding vs Hugging Face's.
    gpt = dataclasses.replace(tiny(256), n_layers=4, d_model=256, n_heads=4, n_kv_heads=4, context_length=512)
    hf_cls = __import__("transformers").GPT2LMHeadModel
    torch.manual_seed(0)
    hf = hf_cls(to_hf_config(gpt, attn_implementation="sdpa")).eval()
    ours = from_hf_state_dict(hf.state_dict(), hf.config).eval()
    ours_fused = copy.deepcopy(ours)
    for block in ours_fused.blocks:
        block.attn.use_fused = True
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(generate(ours, ids, 32, temperature=0, use_cache=True), generate(ours, ids, 32, temperature=0))

    def hf_generate():
        with torch.no_grad():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                               min_new_tokens=n, eos_token_id=None, pad_token_id=0)  # fmt: skip

    assert torch.equal(generate(ours, ids, n, temperature=0, use_cache=True), hf_generate())
    t_cache, t_full = timed_pair(
        lambda: generate(ours, ids, n, temperature=0, use_cache=True),
        lambda: generate(ours, ids, n, temperature=0),
        args.reps,
    )
    ratio = t_full / t_cache
    results.append(("kv-cache vs recompute", ratio, ">= 5", ratio >= 5, f"{n} tokens: {t_full:.2f} s -> {t_cache:.2f} s"))
    t_ours, t_hf = timed_pair(lambda: generate(ours_fused, ids, n, temperature=0, use_cache=True), hf_generate, args.reps)
    ratio = t_hf / t_ours
    results.append(("cached greedy vs HF generate", ratio, ">= 1", ratio >= 1, f"ours {t_ours:.2f} s (fused attention), HF {t_hf:.2f} s"))
    t_own = median_time(lambda: generate(ours, ids, n, temperature=0, use_cache=True), args.reps)
    results.append(("  (course's own attention)", t_hf / t_own, "info", True, f"ours {t_own:.2f} s"))

    # 3. Speculative decoding with the trained pair, sampling at temperature 1 (greedy decoding of
    #    these small models falls into loops that both models predict, which would flatter it).
    spec_new = min(n, target.config.context_length - prompt.shape[1] - 8)
    out, _ = speculative_generate(target, draft, prompt, spec_new, gamma=4, temperature=0)
    assert torch.equal(out, generate(target, prompt, spec_new, temperature=0, use_cache=True))
    best = None
    g = torch.Generator().manual_seed(0)
    for gamma in (2, 3, 4, 5):
        _, stats = speculative_generate(target, draft, prompt, spec_new, gamma=gamma, generator=g)
        t_spec, t_plain = timed_pair(
            lambda: speculative_generate(target, draft, prompt, spec_new, gamma=gamma, generator=g),
            lambda: generate(target, prompt, spec_new, temperature=1.0, generator=g, use_cache=True),
            args.reps,
        )
        row = (t_plain / t_spec, gamma, stats.acceptance_rate, stats.tokens_per_pass)
        best = row if best is None or row[0] > best[0] else best
    ratio, gamma, alpha, tpp = best
    results.append(("speculative vs target alone", ratio, ">= 1.5", ratio >= 1.5,
                    f"best gamma {gamma}: alpha {alpha:.2f}, {tpp:.2f} tokens per target pass"))  # fmt: skip

    # 4. Continuous vs static batching on a mixed workload, served by the target.
    requests = mixed_workload(64, 256, prompt_range=(4, 48), output_range=(4, 128), seed=0)
    static = continuous = None
    static_tps, continuous_tps = [], []
    for _ in range(max(1, args.reps // 2)):
        static = static_batching(target, requests, batch_size=8)
        continuous = continuous_batching(target, requests, batch_size=8)
        static_tps.append(static.tokens_per_second)
        continuous_tps.append(continuous.tokens_per_second)
    assert static.outputs == continuous.outputs
    ratio = statistics.median(continuous_tps) / statistics.median(static_tps)
    results.append(("continuous vs static batching", ratio, ">= 2", ratio >= 2,
                    f"{statistics.median(static_tps):.0f} -> {statistics.median(continuous_tps):.0f} tokens/s"))  # fmt: skip

    # 5. Quantization: memory and perplexity of the trained target.
    sample = val_ids[:20_000]
    base_ppl, base_bytes = perplexity(target, sample), linear_bytes(target)
    for bits, group_size, limit in ((8, None, 0.01), (4, 32, 0.05)):
        model = quantize_model(copy.deepcopy(target), bits, group_size)
        ppl = perplexity(model, sample)
        change = ppl / base_ppl - 1
        saved = base_bytes / linear_bytes(model)
        label = f"int{bits} " + ("per channel" if group_size is None else f"groups of {group_size}")
        results.append((f"{label}: memory ÷", saved, "info", True, f"linear layers {base_bytes:,} -> {linear_bytes(model):,} bytes"))
        results.append((f"{label}: perplexity change", change, f"<= {limit:.0%}", change <= limit,
                        f"{base_ppl:.3f} -> {ppl:.3f}"))  # fmt: skip

    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), median of {args.reps}")
    print(f"{'measure':36s} {'value':>8s} {'target':>8s}  result  detail")
    for name, value, goal, ok, detail in results:
        shown = f"{value:+.2%}" if "perplexity" in name else f"{value:.2f}"
        verdict = "" if goal == "info" else ("PASS" if ok else "FAIL")
        print(f"{name:36s} {shown:>8s} {goal:>8s}  {verdict:6s}  {detail}")


if __name__ == "__main__":
    main()
