"""Tests for llm_course.ffn and llm_course.norms against PyTorch and Hugging Face."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm_course.ffn import ACTIVATIONS, FeedForward, SwiGLU, gelu, gelu_tanh, make_ffn, relu, silu, swiglu
from llm_course.norms import LayerNorm, RMSNorm, layer_norm, make_norm, rms_norm


def test_activation_worked_examples():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert relu(x).tolist() == [0.0, 0.0, 0.0, 1.0, 3.0]
    assert gelu(torch.tensor([0.0])).item() == 0.0
    assert gelu(torch.tensor([1.0])).item() == pytest.approx(0.5 * (1 + math.erf(1 / math.sqrt(2))))
    assert silu(torch.tensor([1.0])).item() == pytest.approx(1 / (1 + math.exp(-1)))


def test_activations_equal_pytorch():
    x = torch.linspace(-8, 8, 10001)
    # 1 + erf(x / sqrt 2) cancels for very negative x: absolute error ~1e-6 there
    torch.testing.assert_close(gelu(x), F.gelu(x), atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(relu(x), F.relu(x))
    torch.testing.assert_close(silu(x), F.silu(x), atol=1e-6, rtol=1e-6)
    for name, formula in (("relu", relu), ("gelu", gelu), ("gelu_tanh", gelu_tanh)):
        torch.testing.assert_close(ACTIVATIONS[name](x), formula(x), atol=2e-6, rtol=1e-6)
    assert (gelu(x) - gelu_tanh(x)).abs().max().item() < 1e-3  # the approximation is close, not equal


def test_gelu_tanh_is_gpt2_gelu_new():
    activations = pytest.importorskip("transformers.activations")
    x = torch.randn(1000) * 3
    torch.testing.assert_close(gelu_tanh(x), activations.NewGELUActivation()(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_feed_forward_is_w2_act_w1(activation):
    torch.manual_seed(0)
    ffn = FeedForward(16, 64, activation=activation)
    x = torch.randn(2, 5, 16)
    formula = {"relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh}[activation]
    expected = formula(x @ ffn.w1.weight.T + ffn.w1.bias) @ ffn.w2.weight.T + ffn.w2.bias
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in ffn.parameters()) == 2 * 16 * 64 + 64 + 16


def test_swiglu_equals_llama_mlp():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    torch.manual_seed(0)
    ours = make_ffn(16, 40, "swiglu", bias=False)
    assert isinstance(ours, SwiGLU)
    theirs = llama.LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=4))
    with torch.no_grad():
        theirs.gate_proj.weight.copy_(ours.w1.weight)
        theirs.up_proj.weight.copy_(ours.w3.weight)
        theirs.down_proj.weight.copy_(ours.w2.weight)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours(x), ours.w2(swiglu(ours.w1(x), ours.w3(x))))


def test_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        make_ffn(8, 16, "tanh")


def test_layer_norm_worked_example():
    y = layer_norm(torch.tensor([1.0, 2.0, 3.0]), eps=0.0)
    torch.testing.assert_close(y, torch.tensor([-math.sqrt(1.5), 0.0, math.sqrt(1.5)]))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_layer_norm_equals_torch(dtype, tol):
    torch.manual_seed(0)
    theirs = torch.nn.LayerNorm(48, eps=1e-5)
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours = LayerNorm(48, eps=1e-5)
    ours.load_state_dict(theirs.state_dict())
    theirs, ours = theirs.to(dtype), ours.to(dtype)
    x = (torch.randn(4, 7, 48) * 3 + 1).to(dtype)
    expected = theirs(x)
    torch.testing.assert_close(layer_norm(x, ours.weight, ours.bias, 1e-5), expected, atol=tol, rtol=tol)
    torch.testing.assert_close(ours(x), expected, atol=tol, rtol=tol)
    assert ours(x).dtype == dtype


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_rms_norm_equals_torch(dtype, tol):
    torch.manual_seed(0)
    theirs = torch.nn.RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        theirs.weight.normal_()
    ours = RMSNorm(48, eps=1e-6)
    ours.load_state_dict(theirs.state_dict())
    x = (torch.randn(4, 7, 48) * 3).to(dtype)
    expected = theirs.to(dtype)(x)
    torch.testing.assert_close(ours.to(dtype)(x), expected, atol=tol, rtol=tol)


def test_rms_norm_rounds_like_llama_in_bf16():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    theirs = llama.LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        theirs.weight.normal_()
    ours = RMSNorm(48, eps=1e-5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 7, 48).bfloat16()
    assert torch.equal(ours.bfloat16()(x), theirs.bfloat16()(x))


def test_normalized_statistics():
    x = torch.randn(10, 64) * 5 + 3
    y = layer_norm(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, correction=0), torch.ones(10), atol=1e-3, rtol=0)
    torch.testing.assert_close(rms_norm(x).pow(2).mean(-1), torch.ones(10), atol=1e-3, rtol=0)


def test_make_norm():
    assert isinstance(make_norm("layernorm", 8), LayerNorm)
    assert make_norm("layernorm", 8, bias=False).bias is None
    assert isinstance(make_norm("rmsnorm", 8), RMSNorm)
    with pytest.raises(ValueError, match='"layernorm" or "rmsnorm"'):
        make_norm("batchnorm", 8)
