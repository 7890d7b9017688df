"""Tests for llm_course.outliers: per-row int8 round trip within half a step, per-tensor / vector-wise
int8 products against the float product, LLM.int8()'s decomposition (the outlier columns exactly in
float), and the error with a planted outlier feature."""

import pytest
import torch

from llm_course.outliers import (
    absmax_matmul,
    decompose_matmul,
    llm_int8_matmul,
    outlier_columns,
    quantize_rows_int8,
    quantize_tensor_int8,
    vectorwise_matmul,
)
from llm_course.quantization import dequantize_groupwise


def _planted(seed=0, tokens=64, d_in=128, d_out=96, channel=7, magnitude=60.0):
    """Activations of scale ~1 with one feature `magnitude` times larger, and weights of scale ~0.05."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_in, generator=g)
    x[:, channel] *= magnitude
    w = torch.randn(d_out, d_in, generator=g) * 0.05
    return x, w


def test_row_round_trip_within_half_a_step():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20, 50, generator=g) * torch.rand(20, 1, generator=g) * 10
    q, scale = quantize_rows_int8(a)
    assert q.dtype == torch.int8 and scale.shape == (20, 1)
    torch.testing.assert_close(scale[:, 0], a.abs().amax(dim=1) / 127)
    error = (a - dequantize_groupwise(q, scale)).abs()
    assert (error <= scale / 2 * (1 + 1e-6)).all()
    assert (q.abs().amax(dim=1) == 127).all()  # each row's largest entry uses the top level


def test_tensor_round_trip_and_worked_example():
    a = torch.tensor([[1.0, -2.54], [0.02, 0.0]])
    q, scale = quantize_tensor_int8(a)
    torch.testing.assert_close(scale, torch.tensor([[0.02]]))
    assert q.tolist() == [[50, -127], [1, 0]]


def test_products_match_a_hand_worked_example():
    x = torch.tensor([[1.0, 2.0]])
    w = torch.tensor([[1.0, 0.0], [0.25, 0.5]])
    # x: scale 2/127, q = [64 (63.5 rounds to even), 127]; w rows: scales 1/127 and 0.5/127, q = [127, 0] and
    # [64 (63.5), 127]. Outputs: 64 * 127 * 2/127 * 1/127 = 128/127, (64 * 64 + 127 * 127) * 2/127 * 0.5/127.
    expected = torch.tensor([[128 / 127, (64 * 64 + 127 * 127) / 127**2]])
    torch.testing.assert_close(vectorwise_matmul(x, w), expected)
    # Per tensor: x scale 2/127, w scale 1/127: w's second row becomes [32 (31.75), 64 (63.5)] / 127.
    expected_tensor = torch.tensor([[128 / 127, (64 * 32 + 127 * 64) * 2 / 127**2]])
    torch.testing.assert_close(absmax_matmul(x, w), expected_tensor)


def test_decomposition_is_exact_on_the_outlier_columns():
    x, w = _planted()
    outliers = outlier_columns(x, 6.0)
    assert outliers.nonzero().flatten().tolist() == [7]
    float_part, int8_part = decompose_matmul(x, w, 6.0)
    assert torch.equal(float_part, x[:, outliers] @ w[:, outliers].T)  # exactly the float product
    assert torch.equal(int8_part, vectorwise_matmul(x[:, ~outliers], w[:, ~outliers]))
    torch.testing.assert_close(llm_int8_matmul(x, w), float_part + int8_part)
    # With every column an outlier (threshold 0), the product is the float one.
    torch.testing.assert_close(llm_int8_matmul(x, w, threshold=0.0), x @ w.T, atol=0, rtol=0)
    # No outliers: it is the vector-wise product.
    assert torch.equal(llm_int8_matmul(x, w, threshold=1e9), vectorwise_matmul(x, w))


@pytest.mark.parametrize("magnitude", [50.0, 100.0])
def test_outlier_handling_cuts_the_error(magnitude):
    x, w = _planted(magnitude=magnitude)
    exact = x @ w.T
    err = {f.__name__: ((f(x, w) - exact).norm() / exact.norm()).item()
           for f in (absmax_matmul, vectorwise_matmul, llm_int8_matmul)}  # fmt: skip
    assert err["llm_int8_matmul"] < err["vectorwise_matmul"] / 5
    assert err["llm_int8_matmul"] < err["absmax_matmul"] / 10
    assert err["vectorwise_matmul"] <= err["absmax_matmul"]
    # The outlier is what hurts vector-wise int8: the same product without it is ~as accurate.
    keep = torch.arange(x.shape[1]) != 7
    clean = ((vectorwise_matmul(x[:, keep], w[:, keep]) - x[:, keep] @ w[:, keep].T).norm()).item()
    assert clean < ((vectorwise_matmul(x, w) - exact).norm()).item() / 5


def test_errors_for_bad_input():
    x, w = _planted()
    with pytest.raises(ValueError, match="input features"):
        vectorwise_matmul(x, w[:, :-1])
    with pytest.raises(ValueError, match="shapes"):
        absmax_matmul(x[0], w)
    with pytest.raises(ValueError, match="non-negative"):
        llm_int8_matmul(x, w, threshold=-1.0)
