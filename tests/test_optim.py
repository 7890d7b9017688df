"""AdamW, the warmup-cosine schedule and gradient clipping against PyTorch and transformers."""

import copy
import math

import pytest
import torch
from torch import nn

from llm_course.optim import (
    AdamW,
    adamw_step,
    clip_grad_norm,
    clip_grad_norm_,
    decay_groups,
    grad_norm,
    warmup_cosine,
    warmup_cosine_scheduler,
)
from llm_course.transformer import Transformer, TransformerConfig


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3))


def train(model, optimizer, steps=25, seed=0, scheduler=None):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def test_adamw_step_first_update_is_lr_times_sign():
    # After bias correction the first step is lr * g / (|g| + eps): a step of size lr per entry.
    p, g = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, -4.0, 1e-3])
    new, m, v = adamw_step(p, g, torch.zeros(3), torch.zeros(3), step=1, lr=0.1, weight_decay=0.0)
    torch.testing.assert_close(new, p - 0.1 * torch.sign(g), atol=1e-5, rtol=0)
    torch.testing.assert_close(m, 0.1 * g)
    torch.testing.assert_close(v, 0.001 * g * g)
    # Decoupled weight decay: lr * wd * p is taken off, whatever the gradient.
    new, _, _ = adamw_step(p, torch.zeros(3), torch.zeros(3), torch.zeros(3), step=1, lr=0.1, weight_decay=0.5)
    torch.testing.assert_close(new, p * (1 - 0.05))


def test_adamw_step_leaves_inputs_untouched():
    p, g, m, v = torch.ones(3), torch.ones(3), torch.zeros(3), torch.zeros(3)
    adamw_step(p, g, m, v, 1, 0.1)
    assert torch.equal(p, torch.ones(3)) and torch.equal(m, torch.zeros(3)) and torch.equal(v, torch.zeros(3))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_step_for_step(weight_decay):
    ours, theirs = small_model(), small_model()
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    opt_ours, opt_theirs = AdamW(ours.parameters(), **kw), torch.optim.AdamW(theirs.parameters(), **kw)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        x, y = torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)
        for model, opt in [(ours, opt_ours), (theirs, opt_theirs)]:
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(opt_ours.state.values(), opt_theirs.state.values()):
        assert a["step"].item() == b["step"].item() == 30
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], atol=1e-9, rtol=1e-5)


def test_adamw_pure_function_matches_torch_functional_over_many_steps():
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(50, generator=g)
    ref = nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([ref], lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3)
    p, m, v = p0.clone(), torch.zeros(50), torch.zeros(50)
    for step in range(1, 101):
        grad = torch.randn(50, generator=g) * (10 if step % 17 == 0 else 1)
        ref.grad = grad.clone()
        opt.step()
        p, m, v = adamw_step(p, grad, m, v, step, 1e-2, (0.8, 0.99), 1e-6, 0.3)
    torch.testing.assert_close(p, ref.detach(), atol=1e-5, rtol=1e-5)


def test_state_dict_moves_between_ours_and_torch_fused():
    a, b = small_model(), small_model()
    opt_a = AdamW(a.parameters(), lr=1e-2)
    train(a, opt_a, steps=5)
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    la, lb = train(a, opt_a, steps=5, seed=1), train(b, opt_b, steps=5, seed=1)
    assert la == pytest.approx(lb, rel=1e-5)


def test_decay_groups_split_matrices_from_biases_and_gains():
    model = Transformer(TransformerConfig(vocab_size=17, context_length=8, d_model=16, n_layers=2, n_heads=2))
    decay, no_decay = decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for p in decay["params"] + no_decay["params"])
    assert n == sum(p.numel() for p in model.parameters())  # the tied head is counted once


def test_warmup_cosine_worked_values():
    assert warmup_cosine(0, 10, 110, 1.0, 0.1) == 0.0
    assert warmup_cosine(5, 10, 110, 1.0, 0.1) == 0.5
    assert warmup_cosine(10, 10, 110, 1.0, 0.1) == 1.0
    assert warmup_cosine(60, 10, 110, 1.0, 0.1) == pytest.approx(0.55)  # halfway: the mean of max and min
    assert warmup_cosine(110, 10, 110, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110, 1.0, 0.1) == pytest.approx(0.1)  # stays at min_lr after the end
    assert warmup_cosine(0, 0, 100, 2.0) == 2.0  # no warmup


@pytest.mark.parametrize(("warmup", "total", "ratio"), [(10, 100, 0.1), (0, 50, 0.0), (7, 7, 0.2), (30, 31, 0.5)])
def test_warmup_cosine_matches_transformers(warmup, total, ratio):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=ratio)
    for step in range(total + 1):
        assert opt.param_groups[0]["lr"] == pytest.approx(warmup_cosine(step, warmup, total, 3e-4, 3e-4 * ratio), abs=1e-12)
        opt.step()
        sched.step()


def test_warmup_cosine_matches_torch_sequential_lr():
    # The same schedule from PyTorch's own pieces: LinearLR warmup, then CosineAnnealingLR.
    warmup, total, max_lr, min_lr = 8, 40, 1e-3, 1e-4
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=max_lr)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-12, end_factor=1.0, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr),
        ],
        milestones=[warmup],
    )
    for step in range(total + 1):
        assert opt.param_groups[0]["lr"] == pytest.approx(warmup_cosine(step, warmup, total, max_lr, min_lr), abs=1e-9)
        opt.step()
        sched.step()


def test_warmup_cosine_scheduler_is_the_same_schedule():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=2e-3)
    sched = warmup_cosine_scheduler(opt, warmup=5, total=30, min_lr_ratio=0.1)
    for step in range(40):
        assert opt.param_groups[0]["lr"] == pytest.approx(warmup_cosine(step, 5, 30, 2e-3, 2e-4), abs=1e-12)
        opt.step()
        sched.step()


def _grads(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 5, generator=g) * scale, torch.randn(7, generator=g) * scale, torch.randn(2, 3, 2, generator=g) * scale]


@pytest.mark.parametrize(("scale", "max_norm"), [(1.0, 1.0), (0.01, 1.0), (10.0, 0.5), (1.0, 1e9)])
def test_clipping_matches_torch(scale, max_norm):
    grads = _grads(0, scale)
    params = [nn.Parameter(torch.zeros_like(t)) for t in grads]
    for p, t in zip(params, grads):
        p.grad = t.clone()
    want_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    clipped, norm = clip_grad_norm(grads, max_norm)
    torch.testing.assert_close(norm, want_norm)
    for c, p in zip(clipped, params):
        torch.testing.assert_close(c, p.grad)
    # in place, on the parameters' .grad
    params2 = [nn.Parameter(torch.zeros_like(t)) for t in grads]
    for p, t in zip(params2, grads):
        p.grad = t.clone()
    torch.testing.assert_close(clip_grad_norm_(params2, max_norm), want_norm)
    for a, b in zip(params, params2):
        torch.testing.assert_close(a.grad, b.grad)


def test_clipping_worked_example_keeps_direction():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]  # global norm 5
    clipped, norm = clip_grad_norm(grads, 1.0)
    assert norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(torch.cat(clipped), torch.tensor([0.6, 0.0, 0.8]), atol=1e-6, rtol=0)
    assert grad_norm(clipped).item() == pytest.approx(1.0, abs=1e-5)
    assert grad_norm([]).item() == 0.0
    same, _ = clip_grad_norm(grads, 10.0)
    assert all(torch.equal(a, b) for a, b in zip(same, grads))  # small enough: untouched


def test_nonfinite_norm_is_reported():
    grads = [torch.tensor([1.0, float("nan")]), torch.tensor([2.0])]
    _, norm = clip_grad_norm(grads, 1.0)
    assert math.isnan(norm.item())
    grads = [torch.tensor([float("inf")])]
    assert math.isinf(clip_grad_norm(grads, 1.0)[1].item())
