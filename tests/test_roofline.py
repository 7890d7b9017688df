"""The roofline formulas against counting: FlopCounterMode for the FLOPs, the model's and the
cache's own tensors for the bytes, and the limits the formulas must reach."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llm_course.kv_cache import KVCache
from llm_course.roofline import (
    arithmetic_intensity,
    attainable_flops,
    forward_bytes,
    forward_flops,
    measure_bandwidth,
    measure_matmul_flops,
    ridge_point,
    roofline_seconds,
    time_forward,
)
from llm_course.transformer import Transformer, llama2_7b, llama_tiny, mixtral_8x7b, seeds_70b, tiny

CONFIGS = {"gpt-style, tied": tiny(97), "llama-style, GQA, SwiGLU, untied": llama_tiny(101)}
PASSES = [(12, 0, 1), (7, 0, 3), (1, 9, 1), (1, 20, 4), (3, 5, 2)]  # (n_new, n_cached, batch)


def run_pass(model, n_new, n_cached, batch):
    """The model's pass over n_new tokens after n_cached cached ones: (counted FLOPs, cache, logits)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, n_cached + n_new), generator=g)
    cache = KVCache.for_model(model, batch, n_cached + n_new)
    with torch.no_grad():
        if n_cached:
            model(ids[:, :n_cached], cache=cache)
        counter = FlopCounterMode(display=False)
        with counter:
            logits = model(ids[:, n_cached:], cache=cache)
    return counter.get_total_flops(), cache, logits


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("n_new,n_cached,batch", PASSES)
def test_flops_match_flop_counter(name, n_new, n_cached, batch):
    model = Transformer(CONFIGS[name]).eval()
    counted, _, _ = run_pass(model, n_new, n_cached, batch)
    assert forward_flops(model.config, n_new, n_cached, batch)["total"] == counted


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("n_new,n_cached,batch", PASSES)
def test_bytes_match_the_tensors(name, n_new, n_cached, batch):
    """Weights from the parameters the pass uses, KV from the cache's tensors, logits from the output."""
    model = Transformer(CONFIGS[name]).eval()  # float32: 4 bytes per value
    _, cache, logits = run_pass(model, n_new, n_cached, batch)
    used = {id(p): p for m in [*model.blocks, model.final_norm, model.lm_head] for p in m.parameters()}
    weights = sum(p.nbytes for p in used.values())  # a tied head counts the embedding table once
    lookups = batch * n_new * model.config.d_model * 4  # one row per token from each input table
    if not model.config.tie_embeddings:
        weights += lookups
    if model.position_embedding is not None:
        weights += lookups
    end = n_cached + n_new
    kv_read = cache.keys[..., :end, :].nbytes + cache.values[..., :end, :].nbytes
    kv_write = cache.keys[..., n_cached:end, :].nbytes + cache.values[..., n_cached:end, :].nbytes
    expected = {"weights": weights, "kv_read": kv_read, "kv_write": kv_write, "logits": logits.nbytes}
    got = forward_bytes(model.config, n_new, n_cached, batch, bytes_per_value=4)
    assert got == {**expected, "total": sum(expected.values())}


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_decode_intensity_is_about_the_batch_size(batch):
    """2 FLOPs per weight per token over 2 bytes per weight: B FLOPs/byte in 16 bits, B / 2 in 32."""
    config = llama2_7b()
    assert arithmetic_intensity(config, 1, 16, batch, bytes_per_value=2) == pytest.approx(batch, rel=0.03)
    assert arithmetic_intensity(config, 1, 16, batch, bytes_per_value=4) == pytest.approx(batch / 2, rel=0.03)


def test_prefill_is_far_above_decode_and_a_gpu_ridge():
    config = llama2_7b()
    h100_ridge = 989e12 / 3.35e12  # dense bf16 FLOP/s over HBM3 bytes/s, the datasheet's figures
    assert arithmetic_intensity(config, 1024, 0, 1) > h100_ridge > 100 * arithmetic_intensity(config, 1, 1024, 1)


@pytest.mark.parametrize("config,groups", [(llama2_7b(), 1), (seeds_70b(), 8)])
def test_long_context_decode_tends_to_the_gqa_group_size(config, groups):
    """With the cache dominating, a decode step does 4 H D FLOPs per cached token per layer and
    reads 2 H_kv D values of 2 bytes: its intensity tends to H / H_kv, whatever the batch."""
    for batch in (1, 64):
        assert arithmetic_intensity(config, 1, 10**8, batch) == pytest.approx(groups, rel=0.01)


def test_roofline_functions():
    peak, bandwidth = 100e9, 10e9
    assert ridge_point(peak, bandwidth) == 10
    assert attainable_flops(1.0, peak, bandwidth) == 10e9  # memory-bound: I W
    assert attainable_flops(10.0, peak, bandwidth) == peak  # at the ridge both limits meet
    assert attainable_flops(1000.0, peak, bandwidth) == peak
    assert roofline_seconds(1e9, 1e9, peak, bandwidth) == pytest.approx(0.1)  # bytes bind
    assert roofline_seconds(1e12, 1e9, peak, bandwidth) == pytest.approx(10.0)  # FLOPs bind
    with pytest.raises(ValueError, match="positive"):
        attainable_flops(0.0, peak, bandwidth)


def test_bad_passes_are_refused():
    with pytest.raises(ValueError, match="dense models only"):
        forward_flops(mixtral_8x7b(), 1)
    with pytest.raises(ValueError, match="n_new >= 1"):
        forward_bytes(tiny(10), 0)
    with pytest.raises(ValueError, match="exceed the context length"):
        time_forward(Transformer(tiny(10)), 100, 100)


def test_measurements_are_plausible():
    bandwidth = measure_bandwidth("cpu", n_bytes=2**24, reps=2)
    flops = measure_matmul_flops("cpu", n=256, reps=2)
    assert 1e8 < bandwidth < 1e13 and 1e8 < flops < 1e14 and math.isfinite(bandwidth / flops)
    seconds = time_forward(Transformer(tiny(50)), 4, 8, batch=2, reps=2)
    assert 0 < seconds < 5
