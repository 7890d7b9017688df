"""Tests for llm_course.attention, with torch.nn.functional.scaled_dot_product_attention and
torch.nn.MultiheadAttention as oracles."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from llm_course.attention import (
    MultiHeadAttention,
    alibi_bias,
    alibi_slopes,
    attention_flops,
    attention_weights,
    causal_mask,
    combine_masks,
    dropout,
    multi_head_attention,
    repeat_kv,
    scaled_dot_product_attention,
    sliding_window_mask,
)
from llm_course.rope import RotaryEmbedding

DEVICE = "cuda"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# bf16 keeps 8 significant bits: one unit in the last place of a value in [2, 4) is 0.016.
TOLERANCES = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def qkv(B, H, Tq, Tk, D, H_kv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    H_kv = H if H_kv is None else H_kv
    q = torch.randn(B, H, Tq, D, generator=g)
    k = torch.randn(B, H_kv, Tk, D, generator=g)
    v = torch.randn(B, H_kv, Tk, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_causal_mask_worked_examples():
    assert causal_mask(3).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # two new queries after two cached keys: they sit at positions 2 and 3
    assert causal_mask(2, 4).int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_attention_worked_example():
    # One query equally similar to two keys: the output is the mean of the two values.
    q = torch.tensor([[[[1.0, 0.0]]]])
    k = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    v = torch.tensor([[[[2.0, 0.0], [0.0, 4.0]]]])
    assert scaled_dot_product_attention(q, k, v).flatten().tolist() == [1.0, 2.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 4), (2, 4, 7, 7, 16), (3, 2, 5, 9, 8), (1, 8, 33, 33, 64)])
@pytest.mark.parametrize("kind", ["none", "causal", "bool", "float"])
def test_equals_torch_sdpa(shape, kind, dtype):
    B, H, Tq, Tk, D = shape
    q, k, v = qkv(B, H, Tq, Tk, D, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    mask, causal = None, False
    if kind == "causal":
        causal = True
    elif kind == "bool":
        mask = torch.rand(B, 1, Tq, Tk, generator=g) > 0.3
        mask[..., 0] = True  # no fully masked rows (their output differs between torch versions)
    elif kind == "float":
        mask = torch.randn(B, H, Tq, Tk, generator=g).to(dtype)
    ours = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
    if causal and Tq != Tk:
        # torch's is_causal aligns the mask top-left; ours puts the queries last (as with a cache)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(Tq, Tk))
    else:
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, **TOLERANCES[dtype])


def test_gradients_equal_torch_sdpa():
    mask = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(2)) > 0.4
    mask[..., 0] = True
    grads = []
    for attend in (scaled_dot_product_attention, F.scaled_dot_product_attention):
        q, k, v = (t.requires_grad_(True) for t in qkv(2, 4, 6, 6, 8, H_kv=2))
        if attend is F.scaled_dot_product_attention:
            out = attend(q, k, v, attn_mask=mask & causal_mask(6), enable_gqa=True)
        else:
            out = attend(q, k, v, mask=mask, causal=True)
        (out * torch.linspace(-1, 1, 8)).sum().backward()
        grads.append((q.grad, k.grad, v.grad))
    for ours, theirs, name in zip(*grads, "qkv"):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=f"gradient of {name} differs")


@pytest.mark.parametrize("H, H_kv", [(4, 2), (6, 1), (8, 8)])
def test_grouped_query_attention_equals_torch(H, H_kv):
    q, k, v = qkv(2, H, 10, 10, 8, H_kv=H_kv)
    ours = scaled_dot_product_attention(q, k, v, causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, **TOLERANCES[torch.float32])
    # GQA is MHA with each key/value head copied for its group of query heads
    expected = F.scaled_dot_product_attention(q, repeat_kv(k, H // H_kv), repeat_kv(v, H // H_kv), is_causal=True)
    torch.testing.assert_close(ours, expected, **TOLERANCES[torch.float32])


def test_causal_queries_are_the_last_positions():
    """Decoding with a cache: 3 new queries over 8 keys == the last 3 rows of full attention."""
    q, k, v = qkv(2, 3, 8, 8, 16)
    full = scaled_dot_product_attention(q, k, v, causal=True)
    last = scaled_dot_product_attention(q[:, :, -3:], k, v, causal=True)
    torch.testing.assert_close(last, full[:, :, -3:])
    theirs = F.scaled_dot_product_attention(q[:, :, -3:], k, v, attn_mask=causal_mask(3, 8))
    torch.testing.assert_close(last, theirs, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_give_zeros_not_nan(kind):
    q, k, v = qkv(1, 2, 4, 4, 8)
    q.requires_grad_(True)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2] = False  # query 2 may attend to nothing
    if kind == "float":
        mask = torch.zeros(4, 4).masked_fill(~mask, float("-inf"))
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert not out.isnan().any(), "a fully masked row produced NaN"
    assert out[:, :, 2].abs().max().item() == 0.0, "a fully masked row must output zeros"
    assert out[:, :, [0, 1, 3]].abs().sum() > 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all(), "NaN/inf gradient through a fully masked row"
    # more queries than keys with causal: the first queries see no key at all
    out = scaled_dot_product_attention(*qkv(1, 1, 5, 3, 4), causal=True)
    assert not out.isnan().any() and out[0, 0, :2].abs().max().item() == 0.0


@pytest.mark.parametrize("mask_kind", ["none", "bool"])
def test_float64_attention_keeps_float64_precision(mask_kind):
    """float64 inputs get a float64 softmax (not one rounded through float32), and a float64 result."""
    q, k, v = qkv(2, 2, 5, 5, 8, dtype=torch.float64, seed=3)
    mask = None if mask_kind == "none" else causal_mask(5)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    want = torch.softmax(scores, dim=-1) @ v  # all in float64
    got = scaled_dot_product_attention(q, k, v, mask=mask)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_weights_rows_sum_to_one_and_respect_the_mask():
    q, k, _ = qkv(2, 3, 6, 6, 8)
    w = attention_weights(q, k, causal=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 6))
    assert w.masked_select(~causal_mask(6)).abs().max().item() == 0.0, "a query attends to a later key"


def test_scaling_keeps_score_variance_near_one():
    """The claim behind dividing by sqrt(d_k): unit-variance q, k give Var(q.k) = d_k."""
    g = torch.Generator().manual_seed(0)
    D = 256
    q, k = torch.randn(20000, D, generator=g), torch.randn(20000, D, generator=g)
    raw = (q * k).sum(-1)
    assert raw.var().item() == pytest.approx(D, rel=0.05)
    assert (raw / math.sqrt(D)).var().item() == pytest.approx(1.0, rel=0.05)


def test_dropout_uses_the_generator():
    q, k, v = qkv(2, 2, 16, 16, 8)
    a = scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(3))
    b = scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(3))
    c = scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    x = dropout(torch.ones(100_000), 0.25, torch.Generator().manual_seed(0))
    assert (x == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert x.mean().item() == pytest.approx(1.0, abs=0.02)  # inverted dropout keeps the mean
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0)


def test_attention_flops_are_quadratic():
    small, large = attention_flops(512, 768, 12), attention_flops(1024, 768, 12)
    assert large["scores"] == 4 * small["scores"]
    assert large["projections"] == 2 * small["projections"]
    assert small["scores"] == 2 * 512 * 512 * 768
    assert small["projections"] == 8 * 512 * 768 * 768
    assert attention_flops(512, 768, 12, n_kv_heads=1)["projections"] < small["projections"]
    assert small["total"] == small["projections"] + small["scores"] + small["weighted_sum"]


def make_mha(d_model=32, n_heads=4, n_kv_heads=None, rope=None, bias=True, seed=0, use_fused=False):
    torch.manual_seed(seed)
    return MultiHeadAttention(d_model, n_heads, n_kv_heads, bias=bias, rope=rope, use_fused=use_fused).eval()


def test_mha_equals_torch_multihead_attention():
    ours = make_mha()
    theirs = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        theirs.out_proj.weight.copy_(ours.w_o.weight)
        theirs.out_proj.bias.copy_(ours.w_o.bias)
    x = torch.randn(3, 9, 32)
    blocked = ~causal_mask(9)  # nn.MultiheadAttention's boolean mask means True = blocked
    expected, _ = theirs(x, x, x, attn_mask=blocked, need_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("use_rope", [False, True])
def test_mha_fused_and_own_agree(n_kv_heads, use_rope):
    rope = RotaryEmbedding(8, 64) if use_rope else None
    own = make_mha(n_kv_heads=n_kv_heads, rope=rope)
    fused = make_mha(n_kv_heads=n_kv_heads, rope=rope, use_fused=True)
    fused.load_state_dict(own.state_dict())
    x = torch.randn(2, 12, 32)
    padding = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    padding[1, ..., 8:] = False  # the second sequence has 4 padding tokens at the end
    for mask in (None, padding):
        torch.testing.assert_close(fused(x, mask=mask), own(x, mask=mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused(x, causal=False), own(x, causal=False), atol=1e-5, rtol=1e-5)


def test_mha_shapes_and_parameter_counts():
    mha = make_mha(d_model=64, n_heads=8, n_kv_heads=2, bias=False)
    assert mha.d_head == 8
    # w_q and w_o: 64 x 64 each; w_k and w_v: 64 x (2 heads * 8)
    assert sum(p.numel() for p in mha.parameters()) == 2 * 64 * 64 + 2 * 64 * 16
    q, k, v = mha.project(torch.randn(3, 5, 64))
    assert q.shape == (3, 8, 5, 8) and k.shape == v.shape == (3, 2, 5, 8)
    assert mha(torch.randn(3, 5, 64)).shape == (3, 5, 64)


def test_mha_rejects_bad_head_counts():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"):
        MultiHeadAttention(32, 4, 3)
    with pytest.raises(ValueError, match="d_head=16"):
        MultiHeadAttention(32, 2, rope=RotaryEmbedding(8, 16))


def test_mha_rope_depends_on_relative_positions_only():
    mha = make_mha(rope=RotaryEmbedding(8, 64))
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(mha(x, positions=torch.arange(10)), mha(x))
    torch.testing.assert_close(mha(x, positions=torch.arange(10) + 37), mha(x), atol=1e-5, rtol=1e-4)


def test_mha_is_causal():
    mha = make_mha()
    x = torch.randn(1, 8, 32)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 3, 32)
    torch.testing.assert_close(mha(x)[:, :5], mha(y)[:, :5])


def test_mha_parts_allow_decoding_one_token_at_a_time():
    """What a KV cache will do: keys/values of earlier tokens + the new token's query."""
    mha = make_mha(n_kv_heads=2, rope=RotaryEmbedding(8, 64))
    x = torch.randn(2, 7, 32)
    full = mha(x)
    q, k, v = mha.project(x)
    q_last, _, _ = mha.project(x[:, -1:], positions=torch.tensor([6]))
    torch.testing.assert_close(q_last, q[:, :, -1:])
    out = mha.attend(q_last, k, v, mask=None, causal=True)  # (B, H, 1, D)
    out = mha.w_o(out.transpose(1, 2).flatten(2))
    torch.testing.assert_close(out, full[:, -1:], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_multi_head_attention_function_equals_the_module(n_kv_heads):
    mha = make_mha(n_kv_heads=n_kv_heads, bias=False)
    x = torch.randn(3, 9, 32)
    weights = (mha.w_q.weight, mha.w_k.weight, mha.w_v.weight, mha.w_o.weight)
    torch.testing.assert_close(multi_head_attention(x, *weights, n_heads=4), mha(x), atol=1e-6, rtol=1e-5)


def test_multi_head_attention_function_equals_torch_multihead_attention():
    torch.manual_seed(1)
    theirs = torch.nn.MultiheadAttention(24, 3, bias=False, batch_first=True).eval()
    w_q, w_k, w_v = theirs.in_proj_weight.detach().chunk(3)
    x = torch.randn(2, 7, 24)
    expected, _ = theirs(x, x, x, attn_mask=~causal_mask(7), need_weights=False)
    got = multi_head_attention(x, w_q, w_k, w_v, theirs.out_proj.weight.detach(), n_heads=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"not a multiple of n_heads \(5\)"):
        multi_head_attention(x, w_q, w_k, w_v, theirs.out_proj.weight, n_heads=5)


@pytest.mark.cuda
@needs_cuda
def test_attention_on_cuda_matches_cpu():
    q, k, v = qkv(2, 4, 64, 64, 32, H_kv=2)
    cpu = scaled_dot_product_attention(q, k, v, causal=True)
    gpu = scaled_dot_product_attention(*(t.to(DEVICE, torch.bfloat16) for t in (q, k, v)), causal=True)
    assert gpu.device.type == DEVICE
    torch.testing.assert_close(gpu.float().cpu(), cpu, atol=2e-2, rtol=2e-2)
    mha = make_mha(n_kv_heads=2, rope=RotaryEmbedding(8, 64))
    x = torch.randn(2, 16, 32)
    expected = mha(x)
    for use_fused in (False, True):
        mha_gpu = copy.deepcopy(mha).to(DEVICE, torch.bfloat16)
        mha_gpu.use_fused = use_fused
        got = mha_gpu(x.to(DEVICE, torch.bfloat16))
        torch.testing.assert_close(got.float().cpu(), expected, atol=3e-2, rtol=3e-2)


@pytest.mark.cuda
@needs_cuda
def test_multi_head_attention_function_on_cuda_matches_cpu():
    mha = make_mha(n_kv_heads=2, bias=False)
    weights = [mha.w_q.weight, mha.w_k.weight, mha.w_v.weight, mha.w_o.weight]
    x = torch.randn(2, 16, 32)
    expected = multi_head_attention(x, *weights, n_heads=4)
    got = multi_head_attention(x.to(DEVICE), *(w.to(DEVICE) for w in weights), n_heads=4)
    assert got.device.type == DEVICE
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# Long context: sliding windows and ALiBi
# ---------------------------------------------------------------------------------------


def brute_force_window(q_len, k_len, window):
    """The sliding-window mask by loops: query i sits at position k_len - q_len + i."""
    allowed = torch.zeros(q_len, k_len, dtype=torch.bool)
    for i in range(q_len):
        pos = k_len - q_len + i
        for j in range(k_len):
            allowed[i, j] = j <= pos and pos - j < window
    return allowed


@pytest.mark.parametrize(("q_len", "k_len"), [(1, 1), (6, 6), (3, 9), (1, 12), (12, 12)])
@pytest.mark.parametrize("window", [1, 2, 5, 100])
def test_sliding_window_mask_equals_brute_force(q_len, k_len, window):
    assert torch.equal(sliding_window_mask(q_len, k_len, window), brute_force_window(q_len, k_len, window))


def test_sliding_window_mask_rejects_an_empty_window():
    with pytest.raises(ValueError, match="at least one key"):
        sliding_window_mask(4, 4, 0)
    with pytest.raises(ValueError, match="at least one key"):
        MultiHeadAttention(32, 4, window=0)


def test_mha_window_equals_attention_over_the_window_only():
    """Every output row equals plain attention over just the `window` keys that row may see."""
    mha, window = make_mha(n_kv_heads=2, rope=RotaryEmbedding(8, 64)), 3
    mha.window = window
    x = torch.randn(2, 9, 32)
    out = mha(x)
    q, k, v = mha.project(x)
    for i in range(9):
        lo = max(0, i - window + 1)
        rows = scaled_dot_product_attention(q[:, :, i : i + 1], k[:, :, lo : i + 1], v[:, :, lo : i + 1])
        expected = mha.w_o(rows.transpose(1, 2).flatten(2))  # (B, 1, C)
        torch.testing.assert_close(out[:, i : i + 1], expected, atol=1e-6, rtol=1e-5)
    mha.window = 9  # a window as long as the sequence is plain causal attention
    mha_full = copy.deepcopy(mha)
    mha_full.window = None
    torch.testing.assert_close(mha(x), mha_full(x))


@pytest.mark.parametrize("n_heads", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 32, 48, 64])
def test_alibi_slopes_equal_hugging_face_bloom(n_heads):
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    torch.testing.assert_close(alibi_slopes(n_heads), bloom._get_alibi_slopes(n_heads, "cpu"), atol=0, rtol=1e-6)


def test_alibi_slopes_of_the_paper():
    # Press et al. (2022), §3: 8 heads get 1/2, 1/4, ..., 1/256.
    assert alibi_slopes(8).tolist() == [2.0**-k for k in range(1, 9)]
    torch.testing.assert_close(alibi_slopes(16)[:3], torch.tensor([2**-0.5, 2.0**-1, 2**-1.5]))


@pytest.mark.parametrize("n_heads", [4, 6])
def test_alibi_attention_equals_hugging_face_bloom(n_heads):
    """BLOOM adds m_h * j (the key's position) instead of -m_h (i - j): the two differ by m_h i in
    each row, which the softmax ignores, so the causal attention weights must be equal."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    B, T, D = 2, 10, 8
    q, k, _ = qkv(B, n_heads, T, T, D)
    hf = bloom.build_alibi_tensor(torch.ones(B, T), n_heads, torch.float32).view(B, n_heads, 1, T)
    ours = alibi_bias(alibi_slopes(n_heads), T)  # (H, T, T)
    expected = attention_weights(q, k, mask=hf, causal=True)
    torch.testing.assert_close(attention_weights(q, k, mask=ours, causal=True), expected, atol=1e-6, rtol=1e-5)
    # worked example: head 0 of 4 has slope 1/4; the key 3 tokens back costs 3/4
    assert alibi_bias(alibi_slopes(4), 5)[0, 4, 1].item() == -0.75


def test_mha_alibi_depends_on_distances_only():
    mha = make_mha()
    mha_alibi = make_mha()
    mha_alibi.load_state_dict(mha.state_dict())
    mha_alibi.register_buffer("alibi_slopes", alibi_slopes(4), persistent=False)
    x = torch.randn(2, 10, 32)
    assert not torch.allclose(mha_alibi(x), mha(x), atol=1e-3)
    torch.testing.assert_close(mha_alibi(x, positions=torch.arange(10) + 50), mha_alibi(x))
    # the bias is what the scores get: attention weights with alibi_bias as a float mask
    q, k, v = mha.project(x)
    expected = scaled_dot_product_attention(q, k, v, mask=alibi_bias(alibi_slopes(4), 10), causal=True)
    torch.testing.assert_close(mha_alibi(x), mha.w_o(expected.transpose(1, 2).flatten(2)), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(alibi=True), dict(window=4), dict(alibi=True, window=3)])
def test_mha_alibi_and_window_fused_and_own_agree(options):
    torch.manual_seed(0)
    own = MultiHeadAttention(32, 4, 2, **options)
    fused = MultiHeadAttention(32, 4, 2, use_fused=True, **options)
    fused.load_state_dict(own.state_dict())
    x = torch.randn(2, 12, 32)
    padding = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    padding[1, ..., 8:] = False
    for mask in (None, padding):
        torch.testing.assert_close(fused(x, mask=mask), own(x, mask=mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(alibi=True), dict(window=3), dict(alibi=True, window=4)])
def test_mha_alibi_and_window_decode_with_a_kv_cache(options):
    """Token-by-token decoding through a KV cache gives the full forward pass's outputs."""
    from llm_course.kv_cache import KVCache

    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, 2, **options)
    x = torch.randn(2, 8, 32)
    full = mha(x)
    cache = KVCache(1, 2, 2, 8, 8, dtype=x.dtype)
    outs = [mha(x[:, :3], positions=cache.positions(3), cache=cache.layers[0])]
    for t in range(3, 8):
        outs.append(mha(x[:, t : t + 1], positions=cache.positions(1), cache=cache.layers[0]))
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_combine_masks():
    allowed = torch.tensor([[True, False], [True, True]])
    bias = torch.tensor([[0.0, -1.0], [-2.0, 0.0]])
    assert combine_masks(None, None) is None and combine_masks(allowed, None) is allowed
    assert torch.equal(combine_masks(allowed, allowed.T), allowed & allowed.T)
    expected = torch.tensor([[0.0, float("-inf")], [-2.0, 0.0]])
    assert torch.equal(combine_masks(allowed, bias), expected) and torch.equal(combine_masks(bias, allowed), expected)
    assert torch.equal(combine_masks(bias, bias), 2 * bias)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("use_fused", [False, True])
def test_alibi_and_window_on_cuda_match_cpu(use_fused):
    """The slopes buffer and the masks follow the module to the GPU (float32 there: exact comparison)."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, 2, alibi=True, window=5, use_fused=use_fused).eval()
    x = torch.randn(2, 16, 32)
    expected = mha(x)
    mha_gpu = copy.deepcopy(mha).to(DEVICE)
    assert mha_gpu.alibi_slopes.device.type == DEVICE
    torch.testing.assert_close(mha_gpu(x.to(DEVICE)).cpu(), expected, atol=1e-4, rtol=1e-4)
