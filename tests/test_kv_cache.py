"""Tests for llm_course.kv_cache: the cached forward pass equals the full one (MHA, GQA, GPT-2 and
Llama layouts, rows of different lengths), greedy decoding with the cache gives exactly the tokens
of decoding without it and of Hugging Face's generate(do_sample=False), the memory formula equals
the allocated tensors, and a full cache raises a clear error."""

import dataclasses

import pytest
import torch

from llm_course.attention import scaled_dot_product_attention
from llm_course.checkpoints import from_hf_state_dict, to_hf_config
from llm_course.generation import generate
from llm_course.kv_cache import CacheFullError, KVCache, cached_attention, kv_cache_bytes
from llm_course.transformer import Transformer, llama_tiny, seeds_70b, tiny

V = 101


def small(make, **changes):
    return dataclasses.replace(make(V), n_layers=2, context_length=48, **changes)


def model(make, **changes):
    torch.manual_seed(0)
    m = Transformer(small(make, **changes)).eval()
    with torch.no_grad():  # larger weights than the init: peaked, varied logits
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


MODELS = pytest.mark.parametrize("make", [tiny, llama_tiny], ids=["gpt2", "llama"])


# ----------------------------------------------------------------------------- the pure function
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_cached_attention_step_by_step_equals_full_attention(heads):
    H, H_kv = heads
    g = torch.Generator().manual_seed(0)
    B, T, D = 2, 9, 8
    q, k, v = torch.randn(B, H, T, D, generator=g), torch.randn(B, H_kv, T, D, generator=g), torch.randn(B, H_kv, T, D, generator=g)
    full = scaled_dot_product_attention(q, k, v, causal=True)
    k_cache, v_cache = torch.zeros(B, H_kv, 12, D), torch.zeros(B, H_kv, 12, D)
    outs, length = [], 0
    for chunk in (4, 1, 1, 3):  # a prefill of 4 tokens, then steps of 1 and a chunk of 3
        s = slice(length, length + chunk)
        outs.append(cached_attention(q[:, :, s], k[:, :, s], v[:, :, s], k_cache, v_cache, length))
        length += chunk
    torch.testing.assert_close(torch.cat(outs, dim=2), full)
    torch.testing.assert_close(k_cache[:, :, :T], k)
    with pytest.raises(CacheFullError, match="full"):
        cached_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], k_cache, v_cache, length)


# ----------------------------------------------------------------------------- the model with a cache
@MODELS
@pytest.mark.parametrize("kv_heads", [None, 1], ids=["mha_or_gqa", "mqa"])
def test_cached_forward_equals_full_forward(make, kv_heads):
    changes = {} if kv_heads is None else {"n_kv_heads": kv_heads}
    m = model(make, **changes)
    idx = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(idx)
        cache = KVCache.for_model(m, 3, 24)
        pieces = [m(idx[:, :7], cache=cache)]  # prefill
        for t in range(7, 20):  # decode
            pieces.append(m(idx[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.length == 20


@MODELS
def test_rows_of_different_lengths(make):
    """A shared cache whose rows hold different numbers of tokens (continuous batching)."""
    m = model(make)
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, V, (1, 9), generator=g), torch.randint(0, V, (1, 4), generator=g)
    with torch.no_grad():
        cache = KVCache.for_model(m, 2, 16)
        m(a[:, :6], cache=cache.rows(0))  # row 0: prefill of 6 tokens
        m(b[:, :2], cache=cache.rows(1))  # row 1: prefill of 2 tokens, into the same memory
        assert cache.lengths.tolist() == [6, 2]
        step = m(torch.cat([a[:, 6:7], b[:, 2:3]]), cache=cache)[:, -1]  # one step for both rows at once
        torch.testing.assert_close(step[0], m(a[:, :7])[0, -1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(step[1], m(b[:, :3])[0, -1], atol=1e-5, rtol=1e-4)
        cache.rows(1).reset()
        assert cache.lengths.tolist() == [7, 0]


@MODELS
def test_greedy_with_cache_equals_without(make):
    m = model(make)
    idx = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(generate(m, idx, 40, temperature=0, use_cache=True), generate(m, idx, 40, temperature=0))


@MODELS
def test_sampling_with_cache_equals_without(make):
    m = model(make)
    idx = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(4))
    with_cache = generate(m, idx, 30, 0.9, top_k=20, generator=torch.Generator().manual_seed(5), use_cache=True)
    without = generate(m, idx, 30, 0.9, top_k=20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(with_cache, without)


@MODELS
def test_greedy_with_cache_equals_hugging_face(make):
    transformers = pytest.importorskip("transformers")
    config = small(make)
    torch.manual_seed(0)
    cls = transformers.GPT2LMHeadModel if config.norm == "layernorm" else transformers.LlamaForCausalLM
    hf = cls(to_hf_config(config, attn_implementation="eager", initializer_range=0.2)).eval()
    ours = from_hf_state_dict(hf.state_dict(), hf.config)
    idx = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=30,
                               eos_token_id=None, pad_token_id=0)  # fmt: skip
    assert torch.equal(generate(ours, idx, 30, temperature=0, use_cache=True), expected)


# ----------------------------------------------------------------------------- memory and errors
def test_memory_formula_equals_allocated_tensors():
    for dtype in (torch.float32, torch.bfloat16):
        cache = KVCache(n_layers=3, batch_size=2, n_kv_heads=2, d_head=16, max_seq_len=40, dtype=dtype)
        assert cache.nbytes == kv_cache_bytes(3, 2, 16, 40, batch=2, dtype=dtype)
    m = model(llama_tiny)  # 2 KV heads of 4 query heads: half the cache of multi-head attention
    c = m.config
    assert KVCache.for_model(m, 1).nbytes == kv_cache_bytes(c.n_layers, c.n_kv_heads, c.d_head, c.context_length, 1, torch.float32)


def test_seventy_b_cache_size():
    c = seeds_70b()  # 80 layers, 8 KV heads of 128: 2 * 80 * 8 * 128 * 2 bytes = 320 KiB per token in fp16
    assert kv_cache_bytes(c.n_layers, c.n_kv_heads, c.d_head, 1, 1, torch.float16) == 327_680
    assert kv_cache_bytes(c.n_layers, c.n_heads, c.d_head, 1, 1, torch.float16) == 8 * 327_680


def test_full_cache_raises_a_clear_error():
    m = model(tiny)
    cache = KVCache.for_model(m, 1, 10)
    with torch.no_grad():
        m(torch.zeros(1, 8, dtype=torch.long), cache=cache)
        with pytest.raises(CacheFullError, match=r"holds 8 of at most 10 tokens and cannot take 3 more"):
            m(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    assert cache.length == 8  # nothing was written
    with pytest.raises(ValueError, match="context_length"):
        KVCache.for_model(m, 1, 1000)


def test_crop_drops_the_last_tokens():
    m = model(tiny)
    idx = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cache = KVCache.for_model(m, 1, 16)
        m(idx[:, :10], cache=cache)
        cache.crop(7)
        torch.testing.assert_close(m(idx[:, 7:12], cache=cache), m(idx)[:, 7:12], atol=1e-5, rtol=1e-4)


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the calls that copy a tensor's values to Python (on a GPU, each one waits for the device)."""

    READS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("make", [tiny, llama_tiny])
def test_a_decode_step_reads_nothing_from_the_device(make):
    """The cache keeps its lengths beside the device copy, in host memory: a decode step decides where
    to write and what to mask without reading a tensor (it used to read about 4 values per layer)."""
    m = model(make)
    cache = KVCache.for_model(m, 3, 40)
    with torch.no_grad():
        for row, length in enumerate((5, 9, 2)):  # ragged rows: the masked path too
            m(torch.randint(0, V, (1, length)), cache=cache.rows(row))
        tokens = torch.randint(0, V, (3, 1))
        with HostReads() as reads:
            for _ in range(6):
                tokens = m(tokens, cache=cache)[:, -1:].argmax(-1)  # (3, 1)
    assert reads.calls == []
    assert cache.lengths.tolist() == [11, 15, 8] and cache.host_lengths[-1].tolist() == [11, 15, 8]
    # Equal rows take the one-slice path; greedy generation reads only the prompt's check, once.
    with HostReads() as reads:
        generate(m, torch.randint(0, V, (2, 4)), 12, temperature=0, use_cache=True)
    assert reads.calls == ["tolist"]


def test_host_lengths_follow_the_device_lengths():
    m = model(tiny)
    cache = KVCache.for_model(m, 2, 30)
    with torch.no_grad():
        m(torch.randint(0, V, (2, 7)), cache=cache)
        m(torch.randint(0, V, (1, 3)), cache=cache.rows(1))
        assert cache.host_lengths.tolist() == cache.layer_lengths.tolist() == [[7, 10]] * m.config.n_layers
        cache.crop(8)
        assert cache.host_lengths.tolist() == cache.layer_lengths.tolist() == [[7, 8]] * m.config.n_layers
        cache.rows(0).reset()
        assert cache.host_lengths[-1].tolist() == cache.lengths.tolist() == [0, 8]
        with pytest.raises(ValueError, match="different numbers of tokens"):
            cache.length
