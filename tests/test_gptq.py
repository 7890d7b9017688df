"""Tests for llm_course.gptq: GPTQ against an independent loop that re-solves the least-squares problem
from scratch after every column (no inverse-Hessian updates, no Cholesky), GPTQ = round-to-nearest for
an identity Hessian, a smaller output error than RTN on the calibration data, model-level quantization,
and errors for bad input."""

import copy
import dataclasses

import pytest
import torch

from llm_course.gptq import gptq_quantize, hessian, quantize_model_weights, rtn_quantize
from llm_course.quantization import dequantize_groupwise
from llm_course.transformer import Transformer, tiny


def _layer(seed=0, n_out=6, n_in=8, n_samples=40):
    """A weight matrix and correlated calibration inputs (as real activations are)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    mixing = torch.randn(n_in, n_in, generator=g, dtype=torch.float64)
    x = torch.randn(n_samples, n_in, generator=g, dtype=torch.float64) @ mixing  # (N, in)
    return w, x


def naive_gptq(w, x, bits, group_size, damp):
    """The greedy OBQ/GPTQ solution by brute force: for each column i in order, round it (with the
    group's scale taken from the current weights when a group starts), then set the free columns
    i+1.. to the exact minimizer of ||X W^T - X W'^T||^2 + (lam / 2) ||W - W'||^2 given the
    columns already fixed, by a least-squares solve. lam is GPTQ's damping, damp * mean(diag H)."""
    n_out, n_in = w.shape
    top = 2 ** (bits - 1) - 1
    lam = damp * torch.diagonal(hessian(x)).mean()
    # Ridge as extra samples: rows sqrt(N lam / 2) I make H = 2 X^T X / N + lam I.
    x_aug = torch.cat([x, (x.shape[0] * lam / 2).sqrt() * torch.eye(n_in, dtype=x.dtype)])  # (N + in, in)
    target = x_aug @ w.T  # (N + in, out): the layer's float outputs
    current = w.clone()
    q = torch.zeros(n_out, n_in)
    scales = []
    for i in range(n_in):
        if i % group_size == 0:
            if group_size == n_in:
                scale = w.abs().amax(dim=1) / top  # per channel: from the original weights
            else:
                scale = current[:, i : i + group_size].abs().amax(dim=1) / top
            scales.append(scale)
        q[:, i] = torch.round(current[:, i] / scale).clamp(-top, top)
        current[:, i] = q[:, i] * scale
        if i + 1 < n_in:
            residual = target - x_aug[:, : i + 1] @ current[:, : i + 1].T  # what the free columns must produce
            current[:, i + 1 :] = torch.linalg.lstsq(x_aug[:, i + 1 :], residual).solution.T
    return q, torch.stack(scales, dim=1)


@pytest.mark.parametrize(("bits", "group_size"), [(4, None), (3, None), (3, 4), (2, 2)])
def test_gptq_equals_the_brute_force_loop(bits, group_size):
    w, x = _layer(seed=bits * 10 + (group_size or 0))
    q, scale = gptq_quantize(w, hessian(x), bits, group_size, damp=0.01)
    q_ref, scale_ref = naive_gptq(w, x, bits, group_size or w.shape[1], 0.01)
    torch.testing.assert_close(scale.double(), scale_ref, rtol=1e-5, atol=1e-7)
    assert torch.equal(q.double(), q_ref.double())
    assert not torch.equal(q, rtn_quantize(w, bits, group_size)[0])  # the updates did change something


@pytest.mark.parametrize(("bits", "group_size"), [(4, None), (3, 16), (8, 8)])
def test_identity_hessian_gives_round_to_nearest(bits, group_size):
    w = torch.randn(12, 32, generator=torch.Generator().manual_seed(3))
    q, scale = gptq_quantize(w, torch.eye(32), bits, group_size)
    q_rtn, scale_rtn = rtn_quantize(w, bits, group_size)
    assert torch.equal(q, q_rtn)
    torch.testing.assert_close(scale, scale_rtn)


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_output_error_below_rtn_on_the_calibration_data(bits):
    w, x = _layer(seed=5, n_out=32, n_in=64, n_samples=256)
    w, x = w.float(), x.float()
    for group_size in (None, 16):
        gptq = dequantize_groupwise(*gptq_quantize(w, hessian(x), bits, group_size))
        rtn = dequantize_groupwise(*rtn_quantize(w, bits, group_size))
        err_gptq, err_rtn = (x @ (w - gptq).T).norm(), (x @ (w - rtn).T).norm()
        assert err_gptq < 0.8 * err_rtn
        # ... while the weights themselves move further from W: GPTQ trades weight error for output error.
        assert (w - gptq).norm() > (w - rtn).norm()


def test_dead_features_get_zero_weight():
    w, x = _layer(seed=2)
    x[:, 3] = 0.0  # a feature that never fires
    q, _ = gptq_quantize(w, hessian(x), 4)
    assert (q[:, 3] == 0).all()


def test_quantize_model_weights_rtn_and_gptq():
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(tiny(97), n_layers=2, context_length=32)).eval()
    calibration = torch.randint(0, 97, (4, 32))
    rtn = quantize_model_weights(copy.deepcopy(model), 4, None, "rtn")
    gptq = quantize_model_weights(copy.deepcopy(model), 4, None, "gptq", calibration)
    for (name, m), m_rtn, m_gptq in zip(model.named_modules(), rtn.modules(), gptq.modules()):
        if isinstance(m, torch.nn.Linear) and name != "lm_head":
            expected = dequantize_groupwise(*rtn_quantize(m.weight.detach(), 4))
            assert torch.equal(m_rtn.weight, expected)
            assert m_gptq.weight.unique().numel() > 1 and not torch.equal(m_gptq.weight, m.weight)
            for weights in (m_rtn.weight, m_gptq.weight):  # at most 2 * 7 + 1 levels per row
                assert max(len(row.unique()) for row in weights) <= 15
    assert torch.equal(gptq.lm_head.weight, model.lm_head.weight)
    with torch.no_grad():  # GPTQ tracks the float model's logits on the calibration data better than RTN
        ref = model(calibration)
        assert (gptq(calibration) - ref).norm() < (rtn(calibration) - ref).norm()


def test_errors_for_bad_input():
    w, x = _layer()
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        gptq_quantize(w, hessian(x), bits=9)
    with pytest.raises(ValueError, match=r"Hessian must be \(in, in\)"):
        gptq_quantize(w, hessian(x[:, :5]), bits=4)
    with pytest.raises(ValueError, match="must divide"):
        gptq_quantize(w, hessian(x), bits=4, group_size=3)
    with pytest.raises(ValueError, match="weight matrix"):
        gptq_quantize(w[0], hessian(x), bits=4)
    model = Transformer(dataclasses.replace(tiny(97), n_layers=1, context_length=32))
    with pytest.raises(ValueError, match="calibration"):
        quantize_model_weights(model, 4, method="gptq")
    with pytest.raises(ValueError, match="method"):
        quantize_model_weights(model, 4, method="awq")
