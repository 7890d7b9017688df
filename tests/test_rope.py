"""Tests for llm_course.rope: against Hugging Face's Llama RoPE, Meta's complex-number form,
and the relative-position property."""

import math

import pytest
import torch

from llm_course.embeddings import inverse_frequencies
from llm_course.rope import (
    RopeScaling,
    RotaryEmbedding,
    apply_rope,
    apply_rope_interleaved,
    interleaved_to_half_order,
    ntk_scaled_base,
    permute_interleaved_to_half,
    rope_cache,
    rope_score,
    rotate_half,
    scaled_inverse_frequencies,
    yarn_ramp,
)


def test_cache_shape_and_position_zero():
    cos, sin = rope_cache(8, 16)
    assert cos.shape == sin.shape == (16, 8)
    assert cos[0].tolist() == [1.0] * 8 and sin[0].tolist() == [0.0] * 8
    torch.testing.assert_close(cos[:, :4], cos[:, 4:])  # half layout: column j pairs with j + D/2
    x = torch.randn(2, 3, 1, 8)
    torch.testing.assert_close(apply_rope(x, cos, sin), x)  # position 0 is not rotated


def test_rotate_half_worked_example():
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]


@pytest.mark.parametrize("batch_positions", [False, True])
def test_equals_hugging_face_llama(batch_positions):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    B, H, T, D, base = 2, 3, 11, 16, 500000.0
    config = LlamaConfig(
        hidden_size=H * D, num_attention_heads=H, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": base},
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)
    if batch_positions:
        positions = torch.stack([torch.arange(T) + 5, torch.randperm(40, generator=g)[:T]])  # (B, T)
    else:
        positions = torch.arange(T)
    hf_cos, hf_sin = llama.LlamaRotaryEmbedding(config)(q, positions.expand(B, T))
    hf_q, hf_k = llama.apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    cos, sin = rope_cache(D, 64, base)
    torch.testing.assert_close(apply_rope(q, cos, sin, positions), hf_q, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(apply_rope(k, cos, sin, positions), hf_k, atol=1e-6, rtol=1e-6)


def test_preserves_norms():
    cos, sin = rope_cache(32, 100)
    x = torch.randn(2, 4, 100, 32)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_relative_position_property():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(64, generator=g), torch.randn(64, generator=g)
    for offset in (0, 3, 17):
        scores = [rope_score(q, k, n + offset, n).item() for n in (0, 5, 100, 1000)]
        assert max(scores) - min(scores) < 1e-9, f"offset {offset}: {scores}"
    assert abs(rope_score(q, k, 3, 0).item() - rope_score(q, k, 17, 0).item()) > 1e-3  # offset matters
    assert rope_score(q, k, 0, 0).item() == pytest.approx(torch.dot(q, k).item(), abs=1e-5)


def test_interleaved_equals_meta_complex_form():
    """Meta's Llama code: view pairs (2i, 2i+1) as complex numbers, multiply by e^{i m w}."""
    B, H, T, D = 2, 3, 9, 8
    x = torch.randn(B, H, T, D)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, D, 2).float() / D))
    angles = torch.outer(torch.arange(T).float(), freqs)  # (T, D/2)
    rotation = torch.polar(torch.ones_like(angles), angles)
    expected = torch.view_as_real(torch.view_as_complex(x.reshape(B, H, T, D // 2, 2)) * rotation).flatten(-2)
    cos, sin = rope_cache(D, T)
    torch.testing.assert_close(apply_rope_interleaved(x, cos, sin), expected, atol=1e-6, rtol=1e-6)


def test_layouts_differ_by_a_permutation():
    D = 8
    order = interleaved_to_half_order(D)
    assert order.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    cos, sin = rope_cache(D, 10)
    x = torch.randn(1, 2, 10, D)
    interleaved = apply_rope_interleaved(x, cos, sin)
    torch.testing.assert_close(apply_rope(x[..., order], cos, sin), interleaved[..., order])
    assert not torch.allclose(apply_rope(x, cos, sin), apply_rope_interleaved(x, cos, sin))


def test_permuted_projection_gives_the_same_scores():
    H, D, C, T = 2, 8, 16, 6
    w_q, w_k, x = torch.randn(H * D, C), torch.randn(H * D, C), torch.randn(1, T, C)
    cos, sin = rope_cache(D, T)

    def scores(wq, wk, rope):
        q = (x @ wq.T).reshape(1, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = (x @ wk.T).reshape(1, T, H, D).transpose(1, 2)  # (B, H, T, D)
        return rope(q, cos, sin) @ rope(k, cos, sin).transpose(-2, -1)

    meta = scores(w_q, w_k, apply_rope_interleaved)
    hf = scores(permute_interleaved_to_half(w_q, H), permute_interleaved_to_half(w_k, H), apply_rope)
    torch.testing.assert_close(hf, meta, atol=1e-4, rtol=1e-5)


def test_rotary_module():
    rope = RotaryEmbedding(8, 16)
    assert rope.state_dict() == {}  # constants are buffers that are not saved
    x = torch.randn(1, 2, 4, 8)
    torch.testing.assert_close(rope(x, torch.arange(4)), rope(x))
    with pytest.raises(ValueError, match="exceeds the RoPE cache length 16"):
        rope(torch.randn(1, 2, 17, 8))


def test_tables_stay_float32_when_the_model_is_cast():
    from llm_course.transformer import Transformer, llama_tiny

    model = Transformer(llama_tiny(64), generator=torch.Generator().manual_seed(0))
    cos, sin = model.rope.cos.clone(), model.rope.sin.clone()
    model.to(torch.bfloat16)
    assert model.blocks[0].attn.w_q.weight.dtype == torch.bfloat16  # the weights are cast ...
    assert model.rope.cos.dtype == model.rope.sin.dtype == torch.float32  # ... the angle tables are not
    assert torch.equal(model.rope.cos, cos) and torch.equal(model.rope.sin, sin)
    assert model.blocks[-1].attn.rope is model.rope  # still one table shared by every layer
    model.float().to("meta")  # moving keeps the tables on the new device, in float32
    assert model.rope.cos.device.type == "meta" and model.rope.cos.dtype == torch.float32


def test_bf16_rotation_is_rounded_once():
    # Large positions: cos and sin of large angles in bf16 keep about 3 significant digits.
    cos, sin = rope_cache(64, 4096)
    x = torch.randn(1, 2, 8, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    positions = torch.arange(4000, 4008)
    exact = apply_rope(x.double(), cos.double(), sin.double(), positions)
    got = apply_rope(x, cos, sin, positions)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), exact.bfloat16().double(), atol=0, rtol=0)  # the rounding of the exact
    # What bf16 tables with bf16 products give: measurably worse.
    naive = x * cos[positions].bfloat16() + rotate_half(x) * sin[positions].bfloat16()
    assert (naive.double() - exact).abs().max() > 2 * (got.double() - exact).abs().max()


# ---------------------------------------------------------------------------------------
# Scaling for longer contexts, against Hugging Face's rope init functions
# ---------------------------------------------------------------------------------------


def hf_inv_freq(kind, d_head, base, max_positions, seq_len=None, **params):
    """inv_freq and attention factor from transformers.modeling_rope_utils for a Llama config."""
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=4 * d_head, num_attention_heads=4, max_position_embeddings=max_positions,
        rope_parameters={"rope_type": kind, "rope_theta": base, **params},
    )  # fmt: skip
    return rope_utils.ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=seq_len)


@pytest.mark.parametrize("d_head", [16, 64, 128])
@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
def test_linear_scaling_equals_hugging_face(d_head, factor):
    hf, hf_attention = hf_inv_freq("linear", d_head, 10000.0, 64, factor=factor)
    ours, attention = scaled_inverse_frequencies(d_head, 10000.0, RopeScaling("linear", factor))
    torch.testing.assert_close(ours, hf, atol=0, rtol=1e-6)
    assert attention == hf_attention == 1.0


@pytest.mark.parametrize("d_head", [16, 64, 128])
@pytest.mark.parametrize("seq_len", [128, 256, 1000])
def test_ntk_scaling_equals_hugging_face_dynamic(d_head, seq_len):
    """HF's "dynamic" NTK with factor 1 at length L' is the static NTK-aware base with s = L' / L."""
    original = 64
    hf, _ = hf_inv_freq("dynamic", d_head, 10000.0, original, seq_len=seq_len, factor=1.0)
    ours, attention = scaled_inverse_frequencies(d_head, 10000.0, RopeScaling("ntk", seq_len / original))
    torch.testing.assert_close(ours, hf, atol=0, rtol=1e-5)
    assert attention == 1.0


@pytest.mark.parametrize("d_head", [16, 64, 128])
@pytest.mark.parametrize(("factor", "original", "base"), [(2.0, 64, 10000.0), (4.0, 64, 10000.0),
                                                          (8.0, 4096, 500000.0), (16.0, 2048, 10000.0)])  # fmt: skip
def test_yarn_equals_hugging_face(d_head, factor, original, base):
    hf, hf_attention = hf_inv_freq(
        "yarn", d_head, base, int(original * factor), factor=factor, original_max_position_embeddings=original
    )
    ours, attention = scaled_inverse_frequencies(d_head, base, RopeScaling("yarn", factor, original))
    torch.testing.assert_close(ours, hf, atol=1e-9, rtol=1e-5)
    assert attention == pytest.approx(hf_attention, rel=1e-12)


def test_ntk_base_keeps_the_fastest_pair_and_slows_the_slowest_by_the_factor():
    D, s = 32, 4.0
    plain = inverse_frequencies(D, 10000.0, dtype=torch.float64)
    ntk = inverse_frequencies(D, ntk_scaled_base(10000.0, s, D), dtype=torch.float64)
    assert ntk[0].item() == plain[0].item() == 1.0
    assert ntk[-1].item() == pytest.approx(plain[-1].item() / s, rel=1e-12)
    assert bool((ntk <= plain).all())  # every pair slowed, by between 1 and s


def test_linear_scaling_puts_position_m_at_the_angle_of_m_over_s():
    D, s = 16, 4
    cos, sin = rope_cache(D, 256, scaling=RopeScaling("linear", float(s)), dtype=torch.float64)
    cos0, sin0 = rope_cache(D, 64, dtype=torch.float64)
    torch.testing.assert_close(cos[::s], cos0)
    torch.testing.assert_close(sin[::s], sin0)


def test_yarn_ramp_keeps_fast_pairs_and_interpolates_slow_ones():
    D, L, s = 64, 64, 4.0
    ramp = yarn_ramp(D, 10000.0, L)
    assert ramp.shape == (D // 2,) and ramp[0] == 0.0 and ramp[-1] == 1.0
    assert bool((ramp[1:] >= ramp[:-1]).all())  # monotone from "keep" to "interpolate"
    plain = inverse_frequencies(D, 10000.0)
    yarn, factor = scaled_inverse_frequencies(D, 10000.0, RopeScaling("yarn", s, L))
    rotations = L * plain / (2 * torch.pi)  # turns of each pair over the trained length
    torch.testing.assert_close(yarn[rotations > 32], plain[rotations > 32])
    torch.testing.assert_close(yarn[rotations < 1], plain[rotations < 1] / s)
    assert factor == pytest.approx(0.1 * math.log(s) + 1)
    cos, _ = rope_cache(D, 8, scaling=RopeScaling("yarn", s, L))
    assert cos[0, 0].item() == pytest.approx(factor)  # YaRN multiplies cos and sin by its factor


def test_scaling_rejects_bad_settings():
    with pytest.raises(ValueError, match="must be one of"):
        RopeScaling("cubic", 2.0)
    with pytest.raises(ValueError, match="at least 1"):
        RopeScaling("linear", 0.5)
    with pytest.raises(ValueError, match="original_context"):
        RopeScaling("yarn", 2.0)
    with pytest.raises(ValueError, match="d_head > 2"):
        ntk_scaled_base(10000.0, 2.0, 2)


def test_rotary_module_with_scaling_survives_casts():
    scaling = RopeScaling("yarn", 4.0, 32)
    rope = RotaryEmbedding(16, 128, scaling=scaling).to(torch.float64)
    cos, sin = rope_cache(16, 128, scaling=scaling)
    assert rope.cos.dtype == torch.float32
    torch.testing.assert_close(rope.cos, cos)
    torch.testing.assert_close(rope.sin, sin)
    assert "scaling=yarn" in repr(rope)
