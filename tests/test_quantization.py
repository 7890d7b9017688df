"""Tests for llm_course.quantization: worked examples, dequantize(quantize(W)) within the analytic
bound scale / 2, int4 packing round trip, QuantizedLinear against the dequantized nn.Linear, the
memory saved, and a quantized model's logits close to the original's."""

import dataclasses

import pytest
import torch
from torch import nn

from llm_course.quantization import (
    QuantizedLinear,
    dequantize_groupwise,
    max_quantization_error,
    pack_int4,
    quantize_groupwise,
    quantize_int8,
    quantize_model,
    unpack_int4,
    weight_bytes,
)
from llm_course.transformer import Transformer, llama_tiny, tiny


def test_worked_example_int8():
    w = torch.tensor([[0.5, -1.27, 0.0, 0.01], [2.0, 1.0, -0.5, 0.0]])
    q, scale = quantize_int8(w)
    torch.testing.assert_close(scale, torch.tensor([[0.01], [2.0 / 127]]))
    assert q.dtype == torch.int8
    assert q.tolist() == [[50, -127, 0, 1], [127, 64, -32, 0]]  # 63.5 rounds to even: 64


def test_worked_example_int4_groups():
    w = torch.tensor([[0.7, -0.35, 7.0, 1.0]])  # two groups of 2: scales 0.1 and 1.0
    q, scale = quantize_groupwise(w, bits=4, group_size=2)
    torch.testing.assert_close(scale, torch.tensor([[0.1, 1.0]]))
    assert q.tolist() == [[7, -4, 7, 1]]  # -3.5 rounds to even: -4
    torch.testing.assert_close(dequantize_groupwise(q, scale), torch.tensor([[0.7, -0.4, 7.0, 1.0]]))


@pytest.mark.parametrize(("bits", "group_size"), [(8, 96), (8, 32), (4, 32), (4, 8), (3, 16), (2, 4)])
def test_error_within_the_analytic_bound(bits, group_size):
    g = torch.Generator().manual_seed(bits * 100 + group_size)
    w = torch.randn(64, 96, generator=g) * torch.rand(64, 1, generator=g) * 3
    w[0, :group_size] = 0.0  # a group of zeros
    w[1, 5] = 40.0  # an outlier: its group's scale is large
    q, scale = quantize_groupwise(w, bits, group_size)
    assert q.abs().max() <= 2 ** (bits - 1) - 1
    error = (w - dequantize_groupwise(q, scale)).abs()
    assert (error <= max_quantization_error(scale, group_size) * (1 + 1e-6)).all()
    assert error[0, :group_size].max() == 0
    # The bound is attained up to sampling: the worst error is close to half a step.
    assert (error / max_quantization_error(scale, group_size)).max() > 0.9


def test_finer_groups_and_more_bits_mean_smaller_errors():
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(0))
    err = lambda bits, g: (w - dequantize_groupwise(*quantize_groupwise(w, bits, g))).pow(2).mean()  # noqa: E731
    assert err(8, 256) < err(4, 32) < err(4, 128) < err(4, 256)


def test_int4_packing_round_trip():
    q = torch.randint(-8, 8, (5, 12), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 6)
    assert torch.equal(unpack_int4(packed), q)
    assert pack_int4(torch.tensor([[-8, 7]], dtype=torch.int8)).item() == 0xF0


@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (4, 16)])
def test_quantized_linear_equals_the_dequantized_linear(bits, group_size):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = QuantizedLinear.from_linear(linear, bits, group_size)
    q, scale = quantize_groupwise(linear.weight.detach(), bits, group_size or 64)
    w_hat = dequantize_groupwise(q, scale.half())
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), x @ w_hat.T + linear.bias, atol=1e-5, rtol=1e-5)
    # Memory: int8 is 1 byte a weight, int4 half a byte, plus one float16 scale per group.
    n_groups = 48 * 64 // (group_size or 64)
    assert layer.qweight.nbytes + layer.scale.nbytes == 48 * 64 * bits // 8 + 2 * n_groups


@pytest.mark.parametrize("make", [tiny, llama_tiny], ids=["gpt2", "llama"])
def test_quantize_model_in_place(make):
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(make(97), n_layers=2, context_length=32)).eval()
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        before = model(idx)
        fp32_linear = sum(m.weight.nbytes for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
        quantize_model(model, bits=8)
        after = model(idx)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 2 * (4 + (3 if make is llama_tiny else 2))  # q, k, v, o and the FFN, per block
    assert isinstance(model.lm_head, nn.Linear)  # skipped: tied to the embedding in GPT-2
    int8_linear = sum(m.qweight.nbytes + m.scale.nbytes for m in layers)
    assert fp32_linear / int8_linear > 3.9
    assert (after - before).abs().max() < 0.02 * before.abs().max()
    assert weight_bytes(model) < weight_bytes(Transformer(model.config))
