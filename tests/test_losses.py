"""Cross-entropy and log-softmax against PyTorch, worked examples, and the overflow they avoid."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm_course.losses import cross_entropy, log_softmax, logsumexp


def test_log_softmax_matches_torch_and_survives_huge_logits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 7, 50, generator=g) * 5
    torch.testing.assert_close(log_softmax(z), F.log_softmax(z, dim=-1))
    torch.testing.assert_close(log_softmax(z, dim=1), F.log_softmax(z, dim=1))
    huge = torch.tensor([[1000.0, 999.0, -1000.0], [-1e30, 0.0, 1e30]])
    naive = torch.log(torch.exp(huge) / torch.exp(huge).sum(-1, keepdim=True))
    assert not torch.isfinite(naive).all()  # what the max subtraction is for
    torch.testing.assert_close(log_softmax(huge), F.log_softmax(huge, dim=-1))
    torch.testing.assert_close(logsumexp(huge), torch.logsumexp(huge, dim=-1))


def test_log_softmax_with_masked_entries():
    z = torch.tensor([[0.0, float("-inf"), 1.0], [float("-inf"), float("-inf"), 2.0]])
    torch.testing.assert_close(log_softmax(z), F.log_softmax(z, dim=-1))


def test_worked_example():
    # Two positions, vocabulary of 3: p(target) = 1/2 and 1/3 (equal logits).
    logits = torch.tensor([[math.log(2.0), math.log(1.0), math.log(1.0)], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2])
    want = (-math.log(1 / 2) - math.log(1 / 3)) / 2
    assert cross_entropy(logits, targets).item() == pytest.approx(want, rel=1e-6)
    # The seeds' examples: p = 0.15 gives 1.90, p = 0.95 gives 0.051.
    for p, loss in [(0.15, 1.897), (0.95, 0.0513)]:
        z = torch.tensor([[math.log(p), math.log(1 - p)]])
        assert cross_entropy(z, torch.tensor([0])).item() == pytest.approx(loss, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cross_entropy_matches_torch(dtype):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 5, 11, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    want = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    got = cross_entropy(logits, targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)


def test_ignore_index_and_reductions():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 9, generator=g)
    targets = torch.randint(0, 9, (2, 6), generator=g)
    targets[0, :3] = -100
    targets[1, -1] = -100
    for reduction in ("mean", "sum", "none"):
        want = F.cross_entropy(logits.transpose(1, 2), targets, reduction=reduction)
        torch.testing.assert_close(cross_entropy(logits, targets, reduction=reduction), want)
    other = targets.masked_fill(targets == -100, 7)
    other[0, :3] = 3  # a different ignore index, which is also a valid class id elsewhere
    want = F.cross_entropy(logits.transpose(1, 2), other, ignore_index=3)
    torch.testing.assert_close(cross_entropy(logits, other, ignore_index=3), want)
    everything_ignored = torch.full((2, 6), -100)
    assert torch.isnan(cross_entropy(logits, everything_ignored))  # 0 / 0, as in PyTorch
    assert torch.isnan(F.cross_entropy(logits.transpose(1, 2), everything_ignored))


def test_gradient_is_softmax_minus_one_hot():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 13, generator=g, requires_grad=True)
    targets = torch.randint(0, 13, (8,), generator=g)
    cross_entropy(logits, targets).backward()
    want = (torch.softmax(logits.detach(), -1) - F.one_hot(targets, 13)) / 8
    torch.testing.assert_close(logits.grad, want)
    ref = logits.detach().clone().requires_grad_()
    F.cross_entropy(ref, targets).backward()
    torch.testing.assert_close(logits.grad, ref.grad)


def test_huge_logits_give_finite_loss_and_gradient():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [5e4, 5e4, 0.0]], requires_grad=True)
    targets = torch.tensor([1, 0])
    loss = cross_entropy(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(loss, F.cross_entropy(logits.detach(), targets))


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="leading dims"):
        cross_entropy(torch.zeros(2, 3, 5), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), reduction="avg")


class Float32Tables(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every float32 tensor of at least `numel` elements that an operation creates."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.made = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() >= self.numel:
                self.made.append(str(func))
        return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_never_copied_whole_to_float32(dtype, monkeypatch):
    """bf16 logits (B, T, V): value and gradient equal F.cross_entropy on a float32 copy, but the loss
    upcasts a few rows at a time (chunks of 3 rows here, so the chunking is exercised)."""
    import llm_course.losses as losses

    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 3 * 37)
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, 5, 37, generator=g) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 37, (4, 5), generator=g)
    targets[0, :2] = -100
    with Float32Tables(logits.numel()) as tables:
        loss = cross_entropy(logits, targets)
        loss.backward()
    assert tables.made == [] and loss.dtype == torch.float32 and logits.grad.dtype == dtype
    ref = logits.detach().float().requires_grad_()
    want = F.cross_entropy(ref.flatten(0, 1), targets.flatten())
    want.backward()
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    # The gradient, computed in float32 and rounded once to the logits' dtype.
    torch.testing.assert_close(logits.grad, ref.grad.to(dtype), atol=1e-6, rtol=1e-2)
    for reduction in ("sum", "none"):
        torch.testing.assert_close(cross_entropy(logits, targets, reduction=reduction),
                                   F.cross_entropy(ref.transpose(1, 2), targets, reduction=reduction))  # fmt: skip
    # The float32 path, for contrast, does make such tables (the recorder can see them).
    with Float32Tables(logits.numel()) as tables:
        cross_entropy(logits.detach().float().requires_grad_(), targets).backward()
    assert tables.made
