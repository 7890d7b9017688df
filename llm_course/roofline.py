"""The roofline model: why decoding is memory-bound and prefill is not (chapter 09).

A kernel that performs F floating-point operations while moving Q bytes between memory and
the processor has an *arithmetic intensity* I = F / Q (FLOPs per byte). A machine with a
peak compute rate P (FLOP/s) and a memory bandwidth W (bytes/s) can then run it at most at

    attainable(I) = min(P, I * W)                                   (Williams et al., 2009)

Below the *ridge point* I* = P / W the memory is the bottleneck; above it, the arithmetic.
A transformer's forward pass over T new tokens at batch B reads every weight once, whatever
B and T: its FLOPs grow with B T, its weight bytes do not, so its intensity grows with B T.
A prefill (T = prompt length) is far above the ridge; a decode step (T = 1) at batch B has
an intensity of about B FLOPs per byte in 16-bit weights (2 FLOPs per weight per token, 2
bytes per weight), far below a GPU's ridge of a few hundred.

Implements
- `forward_flops(config, n_new, n_cached, batch)`: the matrix-product FLOPs of one forward
  pass of `Transformer(config)` over n_new tokens per row, with n_cached tokens already in
  the KV cache (what `torch.utils.flop_counter.FlopCounterMode` counts; the tests check it);
- `forward_bytes(...)`: the bytes that pass must move at the least: every weight read once,
  the KV cache read once and its new entries written once, the logits written once;
- `arithmetic_intensity`, `attainable_flops`, `ridge_point`, `roofline_seconds`: the model;
- `measure_bandwidth`, `measure_matmul_flops`: this machine's W (a large tensor copy) and P
  (a large float32 matmul), each in a few hundred milliseconds;
- `time_forward`: the measured time of such a pass of a real model with a real `KVCache`.

Left out: activations between kernels (assumed to stay in caches, as fused kernels keep them),
element-wise FLOPs (norms, softmax, activations: a few percent), caches that hold the
weights of a model small enough to fit in them (the book's tiny model, on a CPU), and
mixture-of-experts layers (which experts a batch reads depends on the routing).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from llm_course.kv_cache import KVCache
from llm_course.transformer import TransformerConfig, parameter_breakdown


def _check_pass(config: TransformerConfig, n_new: int, n_cached: int, batch: int) -> None:
    if config.n_experts > 0:
        raise ValueError("the roofline formulas cover dense models only; this config has n_experts > 0")
    if n_new < 1 or batch < 1 or n_cached < 0:
        raise ValueError(f"need n_new >= 1, batch >= 1 and n_cached >= 0, got {n_new}, {batch}, {n_cached}")


def forward_flops(config: TransformerConfig, n_new: int, n_cached: int = 0, batch: int = 1) -> dict[str, int]:
    """Matmul FLOPs (a multiply-add is 2) of one forward pass over n_new tokens per row, batch rows,
    with n_cached tokens per row already in the KV cache.

    Per layer, with T = n_new, S = n_cached + n_new keys, C = d_model, D = d_head, F = d_ff:
      projections  2 B T C (2 H D + 2 H_kv D)   q, k, v and the output
      attention    4 B H T S D                  q k^T and the weighted sum of v (full T x S, masked)
      ffn          2 B T C F x 2 (x 3 for SwiGLU)
    plus the output head, 2 B T C V (the model computes logits for every new position).
    """
    _check_pass(config, n_new, n_cached, batch)
    c = config
    tokens, keys = batch * n_new, n_cached + n_new
    q_size, kv_size = c.n_heads * c.d_head, c.n_kv_heads * c.d_head
    ffn_mats = 3 if c.activation == "swiglu" else 2
    flops = {
        "projections": c.n_layers * 2 * tokens * c.d_model * (2 * q_size + 2 * kv_size),
        "attention": c.n_layers * 4 * tokens * c.n_heads * keys * c.d_head,
        "ffn": c.n_layers * 2 * tokens * c.d_model * c.d_ff * ffn_mats,
        "head": 2 * tokens * c.d_model * c.vocab_size,
    }
    flops["total"] = sum(flops.values())
    return flops


def weight_count(config: TransformerConfig, n_new: int = 1, batch: int = 1) -> int:
    """Parameters one forward pass reads: every block, the final norm and the head in full; of the
    input embedding tables only the batch x n_new rows looked up (none more when the head is tied
    to the token embedding: it reads the whole table anyway)."""
    parts = parameter_breakdown(config)
    rows = batch * n_new * config.d_model  # one row per looked-up token, per table
    token = parts["token_embedding"] if config.tie_embeddings else min(rows, parts["token_embedding"])
    position = min(rows, parts["position_embedding"])
    head = 0 if config.tie_embeddings else parts["lm_head"]
    return parts["attention"] + parts["ffn"] + parts["norms"] + token + position + head


def forward_bytes(
    config: TransformerConfig, n_new: int, n_cached: int = 0, batch: int = 1, bytes_per_value: int = 2
) -> dict[str, int]:
    """The least memory traffic (bytes) of the same pass as `forward_flops`, all values stored in
    `bytes_per_value` bytes (2 for bfloat16 serving, 4 for the course's float32 models):

      weights   `weight_count` parameters, each read once
      kv_read   2 L B H_kv (n_cached + n_new) D values: every cached key and value read once
      kv_write  2 L B H_kv n_new D values: the new keys and values written once
      logits    B n_new V values written once
    """
    _check_pass(config, n_new, n_cached, batch)
    c = config
    per_token_kv = 2 * c.n_layers * c.n_kv_heads * c.d_head  # values per token (keys and values)
    moved = {
        "weights": weight_count(c, n_new, batch),
        "kv_read": per_token_kv * batch * (n_cached + n_new),
        "kv_write": per_token_kv * batch * n_new,
        "logits": batch * n_new * c.vocab_size,
    }
    moved = {k: v * bytes_per_value for k, v in moved.items()}
    moved["total"] = sum(moved.values())
    return moved


def arithmetic_intensity(
    config: TransformerConfig, n_new: int, n_cached: int = 0, batch: int = 1, bytes_per_value: int = 2
) -> float:
    """FLOPs per byte of one forward pass: `forward_flops` / `forward_bytes`. A prefill of T tokens
    is (n_new=T, n_cached=0); a decode step after T tokens is (n_new=1, n_cached=T)."""
    flops = forward_flops(config, n_new, n_cached, batch)["total"]
    return flops / forward_bytes(config, n_new, n_cached, batch, bytes_per_value)["total"]


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOPs/byte) at which memory and compute take equally long: P / W."""
    return peak_flops / bandwidth


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline: min(P, I W) FLOP/s for a kernel of intensity I (FLOPs/byte)."""
    if intensity <= 0 or peak_flops <= 0 or bandwidth <= 0:
        raise ValueError(f"intensity, peak and bandwidth must be positive, got {intensity}, {peak_flops}, {bandwidth}")
    return min(peak_flops, intensity * bandwidth)


def roofline_seconds(flops: float, n_bytes: float, peak_flops: float, bandwidth: float) -> float:
    """The least time of a pass on the roofline: max(F / P, Q / W), whichever resource binds."""
    return max(flops / peak_flops, n_bytes / bandwidth)


# ---------------------------------------------------------------------------------------
# Measuring the machine
# ---------------------------------------------------------------------------------------


def _timed(fn, device: torch.device, reps: int) -> list[float]:
    """Seconds of each of `reps` calls of `fn` after one warm-up call (CUDA synchronized around each)."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _best_seconds(fn, device: torch.device, reps: int) -> float:
    """The fastest of `reps` timed calls after one warm-up (the peak, as STREAM reports it)."""
    return min(_timed(fn, device, reps))


def measure_bandwidth(device: torch.device | str, n_bytes: int = 2**26, reps: int = 5) -> float:
    """Memory bandwidth in bytes/s: copy an n_bytes float32 tensor into another (n_bytes read and
    n_bytes written). n_bytes must be far larger than the caches (the default, 64 MiB, is on most machines)."""
    device = torch.device(device)
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _best_seconds(lambda: dst.copy_(src), device, reps)


def measure_matmul_flops(
    device: torch.device | str, n: int = 1024, reps: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """Matmul FLOP rate in FLOP/s: an (n, n) @ (n, n) product, 2 n^3 FLOPs."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g, device=device, dtype=dtype)
    return 2 * n**3 / _best_seconds(lambda: a @ b, device, reps)


@torch.no_grad()
def time_forward(model: nn.Module, n_new: int, n_cached: int = 0, batch: int = 1, reps: int = 5) -> float:
    """Median seconds of `model(ids, cache=cache)` over n_new random tokens per row, batch rows,
    with n_cached tokens already in a `KVCache` (filled before timing, cropped back each time)."""
    if n_cached + n_new > model.config.context_length:
        raise ValueError(f"{n_cached} + {n_new} tokens exceed the context length {model.config.context_length}")
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, n_cached + n_new), generator=g).to(device)  # (B, S)
    cache = KVCache.for_model(model, batch, n_cached + n_new)
    if n_cached:
        model(ids[:, :n_cached], cache=cache)

    def step():
        cache.crop(n_cached)  # forget the previous repetition's new tokens
        model(ids[:, n_cached:], cache=cache)

    return statistics.median(_timed(step, device, reps))
