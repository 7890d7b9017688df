"""The optimizer side of pretraining: AdamW, the learning-rate schedule, gradient clipping (chapter 06).

Implements
- `adamw_step`: one AdamW update of one tensor as a pure function (Kingma & Ba, 2015,
  "Adam"; Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization"):

      m_t = b1 m_{t-1} + (1 - b1) g_t              v_t = b2 v_{t-1} + (1 - b2) g_t^2
      m^_t = m_t / (1 - b1^t)                      v^_t = v_t / (1 - b2^t)
      theta_t = theta_{t-1} - lr (m^_t / (sqrt(v^_t) + eps) + wd theta_{t-1})

  and `AdamW`, a `torch.optim.Optimizer` that applies it to every parameter. Its state
  uses PyTorch's names (step, exp_avg, exp_avg_sq), so a state dict moves between it and
  `torch.optim.AdamW`, and it matches that optimizer step for step (the tests check);
- `decay_groups`: the usual split of a model's parameters into those that get weight
  decay (matrices, embeddings) and those that do not (biases, norm gains);
- `warmup_cosine`: linear warmup from 0 to max_lr, then a half cosine down to min_lr,
  the schedule of `transformers.get_cosine_with_min_lr_schedule_with_warmup`, and
  `warmup_cosine_scheduler`, the same as a `torch.optim.lr_scheduler.LambdaLR`;
- `grad_norm`, `clip_grad_norm` (pure) and `clip_grad_norm_` (in place): scale all
  gradients together so that their global L2 norm is at most max_norm, as
  `torch.nn.utils.clip_grad_norm_` does.

Left out: AMSGrad, maximize, complex parameters, multi-tensor (foreach) kernels; the
trainer uses PyTorch's fused AdamW when asked for speed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn


# ---------------------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------------------


def adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AdamW update; returns new (param, m, v) and leaves its inputs untouched.

    `step` counts updates from 1 (the first update is step 1), `m` and `v` are the moment
    estimates before this update (zeros before the first). Weight decay is decoupled: it
    shrinks the parameter by lr * weight_decay, instead of adding weight_decay * param to
    the gradient (which Adam's scaling would then undo).
    """
    beta1, beta2 = betas
    param = param * (1 - lr * weight_decay)  # decoupled weight decay, from the old parameter
    m = beta1 * m + (1 - beta1) * grad  # first moment: a running mean of the gradient
    v = beta2 * v + (1 - beta2) * grad * grad  # second moment: a running mean of its square
    m_hat = m / (1 - beta1**step)  # bias correction: m and v start at 0, so early means are too small
    v_hat = v / (1 - beta2**step)
    param = param - lr * m_hat / (v_hat.sqrt() + eps)
    return param, m, v


class AdamW(torch.optim.Optimizer):
    """AdamW from `adamw_step`, with the constructor and state layout of `torch.optim.AdamW`.

    Every parameter group has lr, betas, eps and weight_decay; the state of a parameter is
    step (a float tensor, as in PyTorch), exp_avg (m) and exp_avg_sq (v).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                new_p, new_m, new_v = adamw_step(
                    p, p.grad, state["exp_avg"], state["exp_avg_sq"], int(state["step"].item()),
                    group["lr"], group["betas"], group["eps"], group["weight_decay"],
                )  # fmt: skip
                p.copy_(new_p)
                state["exp_avg"].copy_(new_m)
                state["exp_avg_sq"].copy_(new_v)
        return loss


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: tensors with 2 or more dims (matrices, embeddings) get weight
    decay, the others (biases, norm gains) do not. Tied parameters appear once."""
    params = [p for p in model.parameters() if p.requires_grad]  # .parameters() yields a tied tensor once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


# ---------------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------------


def warmup_cosine(step: int, warmup: int, total: int, max_lr: float, min_lr: float = 0.0) -> float:
    """The learning rate at `step` (counted from 0): linear warmup, then cosine decay.

    - step < warmup:  max_lr * step / warmup  (0 at step 0, reaching max_lr at step = warmup);
    - from warmup to total: min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2, with
      progress = (step - warmup) / (total - warmup) going from 0 to 1;
    - after total: min_lr.
    """
    if step < warmup:
        return max_lr * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_lr_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """`warmup_cosine` as a PyTorch scheduler: each group's lr becomes its initial lr times
    warmup_cosine(step, warmup, total, 1, min_lr_ratio). Call `.step()` after each update."""
    factor = functools.partial(warmup_cosine, warmup=warmup, total=total, max_lr=1.0, min_lr=min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------


def grad_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of a list of tensors: sqrt of the sum of all their squared entries (float32)."""
    if len(grads) == 0:
        return torch.tensor(0.0)
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])  # one norm per tensor
    total = torch.linalg.vector_norm(norms)
    # FSDP's gradients are shards (DTensors): their norm is reduced over the ranks into a plain tensor.
    return total.full_tensor() if hasattr(total, "full_tensor") else total


def clip_grad_norm(grads: Sequence[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Scale all `grads` by one factor so that their global norm is at most `max_norm`.

    Returns (the clipped gradients, as new tensors; the global norm *before* clipping).
    The factor is min(1, max_norm / (norm + 1e-6)): gradients already small enough are left
    as they are, and the direction of the whole gradient never changes.
    """
    total = grad_norm(grads)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # a tensor: no GPU sync
    return [g * coef.to(g.dtype) for g in grads], total


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm` applied in place to the `.grad` of `parameters`; returns the norm before clipping.

    A non-finite norm makes every gradient non-finite too (as in PyTorch): check the
    returned norm before stepping the optimizer.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total = grad_norm(grads)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return total
