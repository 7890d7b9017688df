"""Checks for the chapter 06 exercises (pretraining).

The student writes, with the signatures of the course's references:

- ``cross_entropy(logits, targets, ignore_index=-100) -> 0-d tensor``  (logits (N, V),
  targets (N,); :func:`llm_course.losses.cross_entropy`)
- ``adamw_step(param, grad, m, v, step, lr, betas, eps, weight_decay) -> (param, m, v)``
  (:func:`llm_course.optim.adamw_step`)
- ``warmup_cosine(step, warmup, total, max_lr, min_lr) -> float`` (:func:`llm_course.optim.warmup_cosine`)
- ``clip_grad_norm(grads, max_norm) -> (clipped, total_norm)`` (:func:`llm_course.optim.clip_grad_norm`)
- ``is_spike(value, history, threshold, min_history) -> bool`` (:func:`llm_course.trainer.is_spike`)

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test cell) or
seeded random cases and edge cases compared with the reference (``hidden=True``, the hidden
test cell). When a result differs, the check recomputes it with the usual mistakes (no bias
correction, L2 instead of decoupled decay, warmup off by one, clipping per tensor, a
two-sided spike test, ...) and names the one that matches.
"""

from __future__ import annotations

import math
import random
import statistics

import torch
from torch.nn import functional as F
from torch.optim._functional import adam as functional_adam, adamw as functional_adamw

from llm_course import losses, optim, trainer
from llm_course.grading import CheckFailed, call, fail, forbid_reference, passed, seeded, short
from llm_course.grading.edges import edge


def _fmt(values, n: int = 6) -> str:
    flat = values.flatten().tolist() if isinstance(values, torch.Tensor) else list(values)
    return short([round(x, 5) for x in flat[:n]], 90)


def _forbid(fn, *references, what: str) -> None:
    """forbid_reference for library functions of PyTorch, with a message that names them."""
    try:
        forbid_reference(fn, *references)
    except CheckFailed:
        fail(f"{fn.__name__} calls {what}; the exercise is to write it yourself (this earns no points).")


def _number(fn, value, what: str) -> float:
    """A Python float from a number or a one-element tensor; fail otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        import numpy as np

        if isinstance(value, np.floating | np.integer):
            return float(value)
    except ImportError:  # pragma: no cover
        pass
    fail(f"{fn.__name__} should return {what} (a number), got {type(value).__name__}: {short(value)}")


# --------------------------------------------------------------------------- cross-entropy
def _ce_variants(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> list[tuple[torch.Tensor, str]]:
    """What common mistakes would return on these inputs."""
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    nll = -F.log_softmax(logits.double(), -1).gather(-1, safe[:, None]).squeeze(-1) * keep
    out = [
        (nll.sum() / len(targets), "the ignored positions were counted in the mean: divide by the number of positions "
         "whose target is not ignore_index, not by N"),
        (nll.sum(), "this is the sum over positions; the loss is their mean"),
        (-nll.sum() / keep.sum(), "the sign is flipped: the loss is MINUS the log-probability of the target"),
    ]  # fmt: skip
    if logits.shape[0] > 1:
        nll0 = -F.log_softmax(logits.double(), 0).gather(-1, safe[:, None]).squeeze(-1) * keep
        out.append((nll0.sum() / keep.sum(), "the softmax ran over the positions (dim 0); take it over the vocabulary, dim=-1"))
    return out


def _compare_cross_entropy(fn, logits, targets, ignore_index=-100, label="", check_grad=False) -> None:
    want = losses.cross_entropy(logits, targets, ignore_index=ignore_index).double()
    x = logits.clone().requires_grad_(check_grad)
    try:
        got = call(fn, x, targets, ignore_index, copy_args=False) if check_grad else call(fn, logits, targets, ignore_index)
    except CheckFailed as err:
        if (targets == ignore_index).any() and "index" in str(err).lower():
            fail(
                f"{err}\n(targets equal to ignore_index={ignore_index} are not token ids: leave those positions out "
                "before picking each row's log-probability)"
            )
        raise
    where = label or f"logits of shape {tuple(logits.shape)}"
    if not isinstance(got, torch.Tensor):
        fail(f"cross_entropy on {where} should return a tensor (so that .backward() works), got {type(got).__name__}: {short(got)}")
    if got.numel() != 1 or got.dim() != 0:
        fail(
            f"cross_entropy on {where} should return a single number, a 0-d tensor (the mean over positions), "
            f"got shape {tuple(got.shape)}: did you forget to average the per-position losses?"
        )
    value = got.detach().double()
    if not torch.isfinite(value):
        if logits.abs().max() > 80:
            fail(
                f"cross_entropy on {where} returned {value.item()}, expected {want.item():.4f}. These logits are "
                "large: exp(1000) overflows float32 (its limit is about exp(88)), and softmax then log of an "
                "underflowed 0 gives -inf. Subtract each row's maximum before exp, and compute log-softmax as "
                "(z - m) - log(sum(exp(z - m)))."
            )
        fail(f"cross_entropy on {where} returned {value.item()}, expected {want.item():.4f}.")
    if not torch.isclose(value, want, rtol=1e-5, atol=1e-5):
        hint = next((why for v, why in _ce_variants(logits, targets, ignore_index)
                     if torch.isclose(value, v.double(), rtol=1e-5, atol=1e-5)), "")  # fmt: skip
        fail(f"cross_entropy on {where} should be {want.item():.5f}, got {value.item():.5f}" + (f": {hint}." if hint else "."))
    if check_grad:
        if not got.requires_grad:
            fail(
                f"cross_entropy on {where} is right but carries no gradient: keep the computation in torch "
                "(no .item(), .numpy() or float() in the middle) so that loss.backward() can train a model."
            )
        got.backward()
        ref = logits.clone().requires_grad_(True)
        losses.cross_entropy(ref, targets, ignore_index=ignore_index).backward()
        if x.grad is None or not torch.allclose(x.grad, ref.grad, atol=1e-5, rtol=1e-4):
            fail(f"the gradient of your cross_entropy on {where} differs from the true one (softmax - one_hot, / N).")


def check_cross_entropy(fn, hidden: bool = False) -> None:
    """cross_entropy(logits (N, V), targets (N,), ignore_index) = mean of -log_softmax(logits)[target].

    Edges the exercise defines, all in the hidden test: one position (N = 1) and one class (V = 1, loss 0);
    padding: positions at ignore_index count neither in the sum nor in the count, whatever ignore_index
    is (-100, 0), including when all positions but one are padding; stability: logits of ±600, and rows
    on very different scales (each row subtracts its *own* maximum); float64 logits; the gradient.
    """
    forbid_reference(fn, losses.cross_entropy, losses.log_softmax, losses.logsumexp)
    _forbid(fn, F.cross_entropy, F.log_softmax, F.nll_loss, torch.log_softmax, torch.logsumexp,
            what="PyTorch's cross_entropy / log_softmax / logsumexp / nll_loss")  # fmt: skip
    if not hidden:
        ln2 = math.log(2.0)
        _compare_cross_entropy(fn, torch.tensor([[ln2, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([0, 2]),
                               label="the worked example (p = 1/2 and 1/3: expected 0.8959)")  # fmt: skip
        p = 0.15
        _compare_cross_entropy(fn, torch.tensor([[math.log(p), math.log(1 - p)]]), torch.tensor([0]),
                               label="p(target) = 0.15 (expected -ln 0.15 = 1.8971)")  # fmt: skip
        _compare_cross_entropy(fn, torch.tensor([[ln2, 0.0, 0.0], [5.0, 1.0, 0.0]]), torch.tensor([0, -100]),
                               label="a padded position (target -100 is ignored: expected 0.6931)")  # fmt: skip
        _compare_cross_entropy(fn, torch.tensor([[1000.0, 0.0, -1000.0], [1000.0, 1000.0, 0.0]]), torch.tensor([1, 0]),
                               label="large logits (expected (1000 + ln 2) / 2 = 500.3466)")  # fmt: skip
        passed(fn, "the 4 hand-worked examples are right (including padding and logits of 1000)")
        return
    g = seeded(60)
    n = 0
    for i, scale in enumerate([1.0, 3.0, 10.0, 100.0, 1.0, 30.0]):
        N, V = [5, 1, 12, 7, 30, 3][i], [7, 50, 2, 300, 11, 1000][i]
        logits = torch.randn(N, V, generator=g) * scale
        targets = torch.randint(0, V, (N,), generator=g)
        if i in (2, 4):
            targets[torch.rand(N, generator=g) < 0.4] = -100
            targets[0] = 1
        _compare_cross_entropy(fn, logits, targets, check_grad=True)
        n += 1
    logits = torch.randn(6, 9, generator=g)
    targets = torch.tensor([0, 3, 0, 8, 0, 2])
    _compare_cross_entropy(fn, logits, targets, ignore_index=0, label="ignore_index=0 (id 0 is padding here)", check_grad=True)
    logits = torch.randn(4, 20, generator=g, dtype=torch.float64) * 5
    _compare_cross_entropy(fn, logits, torch.randint(0, 20, (4,), generator=g), label="float64 logits")
    logits = torch.randn(8, 40, generator=g) * 200  # differences of hundreds: exp overflows, softmax underflows
    _compare_cross_entropy(fn, logits, torch.randint(0, 40, (8,), generator=g), label="logits spread over ±600")
    edges = {
        "one position": (torch.randn(1, 6, generator=g), torch.tensor([4]), -100),
        "one class": (torch.randn(3, 1, generator=g), torch.tensor([0, 0, 0]), -100),
        "all positions but one are padding": (torch.randn(5, 4, generator=g), torch.tensor([-100, -100, 2, -100, -100]), -100),
        "ignore_index=3 with targets of -100 absent": (torch.randn(4, 5, generator=g), torch.tensor([3, 1, 3, 4]), 3),
        "rows on very different scales": (
            torch.tensor([[1000.0, 999.0, 990.0], [-1000.0, -1001.0, -1010.0]]), torch.tensor([1, 2]), -100),
    }
    for name, (logits, targets, ignore_index) in edges.items():
        with edge(name):
            _compare_cross_entropy(fn, logits, targets, ignore_index=ignore_index, label=name, check_grad=True)
    passed(fn, f"all {n + 3 + len(edges)} random and edge cases match the reference (gradients too)")


# --------------------------------------------------------------------------- AdamW
def _adamw_variants(param, grad, m, v, step, lr, betas, eps, wd) -> list[tuple[tuple, str]]:
    b1, b2 = betas
    ref = optim.adamw_step
    out = []
    m1, v1 = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad
    p_nobc = param * (1 - lr * wd) - lr * m1 / (v1.sqrt() + eps)
    out.append(((p_nobc, m1, v1), "no bias correction: divide m by (1 - beta1**step) and v by (1 - beta2**step)"))
    g2 = grad + wd * param
    out.append((ref(param, g2, m, v, step, lr, betas, eps, 0.0),
                "this is Adam with L2 regularization (weight_decay * param added to the gradient); AdamW "
                "decouples it: param * (1 - lr * weight_decay), outside the moments"))  # fmt: skip
    p, mm, vv = ref(param, grad, m, v, step, lr, betas, eps, 0.0)
    out.append(((p - wd * param, mm, vv), "the weight decay is not multiplied by the learning rate: param * (1 - lr * weight_decay)"))
    out.append(((p, mm, vv), "the weight decay is missing: shrink the parameter by param * (1 - lr * weight_decay)"))
    bc1, bc2 = 1 - b1**step, 1 - b2**step
    p_eps = param * (1 - lr * wd) - lr * (m1 / bc1) / (v1 / bc2 + eps).sqrt()
    out.append(((p_eps, m1, v1), "eps is inside the square root: use sqrt(v_hat) + eps"))
    out.append((ref(param, grad, m, v, step, lr, (b2, b1), eps, wd), "beta1 and beta2 are swapped: betas = (beta1 for m, beta2 for v)"))
    vabs = b2 * v + (1 - b2) * grad.abs()
    p_abs = param * (1 - lr * wd) - lr * (m1 / bc1) / ((vabs / bc2).sqrt() + eps)
    out.append(((p_abs, m1, vabs), "v must average the SQUARED gradient: (1 - beta2) * grad * grad"))
    out.append((ref(param, grad, m, v, step + 1, lr, betas, eps, wd), "the bias correction uses step + 1: `step` already counts from 1"))
    if step > 1:
        out.append((ref(param, grad, m, v, step - 1, lr, betas, eps, wd), "the bias correction uses step - 1: use beta ** step"))
    return out


def _close(a, b, atol=1e-6, rtol=1e-5) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol)


def _compare_adamw(fn, param, grad, m, v, step, lr, betas, eps, wd, label="") -> tuple:
    args = (param, grad, m, v, step, lr, betas, eps, wd)
    want = optim.adamw_step(*args)
    originals = [t.clone() for t in (param, grad, m, v)]
    got = call(fn, *args, copy_args=False)
    for name, before, now in zip(("param", "grad", "m", "v"), originals, (param, grad, m, v)):
        if not torch.equal(before, now):
            fail(
                f"adamw_step changed its input `{name}` in place; return new tensors instead "
                f"(e.g. `param = param * (1 - lr * weight_decay)`, not `param.mul_(...)`)."
            )
    where = label or f"step {step} (lr={lr}, betas={betas}, eps={eps}, weight_decay={wd})"
    if not isinstance(got, tuple | list) or len(got) != 3:
        fail(f"adamw_step should return a tuple (new_param, new_m, new_v), got {type(got).__name__}: {short(got)}")
    for name, g_, w_ in zip(("param", "m", "v"), got, want):
        if not isinstance(g_, torch.Tensor):
            fail(f"adamw_step's new {name} should be a tensor, got {type(g_).__name__}: {short(g_)}")
        if g_.shape != w_.shape:
            fail(f"adamw_step's new {name} should have shape {tuple(w_.shape)}, got {tuple(g_.shape)}")
    got = tuple(t.detach() for t in got)
    if all(_close(g_, w_) for g_, w_ in zip(got, want)):
        return got
    for variant, why in _adamw_variants(*args):
        if why and all(_close(g_, w_) for g_, w_ in zip(got, variant)):
            fail(f"adamw_step at {where} is wrong: {why}.")
    for name, g_, w_ in zip(("m", "v", "param"), (got[1], got[2], got[0]), (want[1], want[2], want[0])):
        if not _close(g_, w_):
            hint = {
                "m": "m = beta1 * m + (1 - beta1) * grad",
                "v": "v = beta2 * v + (1 - beta2) * grad**2",
                "param": "param - lr * m_hat / (sqrt(v_hat) + eps), after the decay param * (1 - lr * weight_decay)",
            }[name]
            fail(f"adamw_step at {where}: the new {name} should start {_fmt(w_)}, got {_fmt(g_)} ({hint}).")
    return got


def check_adamw_step(fn, hidden: bool = False) -> None:
    """adamw_step(param, grad, m, v, step, lr, betas, eps, weight_decay) -> (param, m, v), one AdamW update.

    Edges the exercise defines, all in the hidden test: step counts from 1 (bias correction at step 1
    makes m_hat = g); weight decay from the *old* parameter, decoupled and scaled by lr; weight_decay = 0;
    a zero gradient with zero moments (the update is 0, not NaN: eps outside the square root);
    beta1 = 0; a long run where the bias correction fades; one-element parameters; inputs left unchanged.
    """
    forbid_reference(fn, optim.adamw_step, optim.AdamW)
    _forbid(fn, torch.optim.AdamW, torch.optim.Adam, functional_adam, functional_adamw, what="PyTorch's Adam / AdamW")
    if not hidden:
        zeros = torch.zeros(3)
        p, g = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, -4.0, 0.001])
        # Step 1: bias correction makes m_hat = g and v_hat = g^2, so the step is lr * sign(g).
        _compare_adamw(fn, p, g, zeros, zeros, 1, 0.1, (0.9, 0.999), 1e-8, 0.0,
                       label="step 1 without weight decay (expected param - 0.1 * sign(grad) = [0.9, -1.9, 2.9])")  # fmt: skip
        # Weight decay alone: a zero gradient leaves only param * (1 - lr * wd).
        _compare_adamw(fn, p, zeros, zeros, zeros, 1, 0.1, (0.9, 0.999), 1e-8, 0.5,
                       label="a zero gradient with weight_decay=0.5 (expected param * 0.95)")  # fmt: skip
        # Step 3 from given moments, everything on.
        m, v = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.01, 0.04, 0.02])
        _compare_adamw(fn, p, g, m, v, 3, 0.01, (0.9, 0.95), 1e-8, 0.1, label="step 3 with moments and weight decay")
        passed(fn, "the 3 hand-worked updates are right (bias correction and decoupled weight decay)")
        return
    g = seeded(61)
    n = 0
    for i in range(6):  # chains of updates: each output is the next input, as in training
        shape = [(5,), (3, 4), (2, 3, 2), (1,), (16,), (4, 4)][i]
        lr = [1e-3, 3e-2, 0.1, 1e-2, 0.5, 1e-4][i]
        betas = [(0.9, 0.999), (0.9, 0.95), (0.8, 0.99), (0.0, 0.9), (0.5, 0.5), (0.95, 0.98)][i]
        eps, wd = [1e-8, 1e-6, 1e-3, 1e-8, 1e-8, 0.1][i], [0.01, 0.1, 0.0, 0.5, 0.2, 1.0][i]
        param, m, v = torch.randn(shape, generator=g), torch.zeros(shape), torch.zeros(shape)
        for step in range(1, 9):
            grad = torch.randn(shape, generator=g) * [1.0, 10.0, 0.01][step % 3]
            param, m, v = _compare_adamw(fn, param, grad, m, v, step, lr, betas, eps, wd)
            n += 1
    param, m, v = torch.randn(1000, generator=g), torch.zeros(1000), torch.zeros(1000)
    for step in range(1, 51):  # a long run: the bias correction fades, the moments settle
        param, m, v = _compare_adamw(fn, param, torch.randn(1000, generator=g), m, v, step, 0.01, (0.9, 0.95), 1e-8, 0.1)
    zeros = torch.zeros(4)
    edges = {
        "a zero gradient and zero moments at step 1": (
            torch.randn(4, generator=g), zeros, zeros, zeros, 1, 0.1, (0.9, 0.999), 1e-8, 0.0),
        "weight decay on a large parameter with a tiny gradient": (
            torch.full((4,), 50.0), torch.full((4,), 1e-6), zeros, zeros, 2, 0.1, (0.9, 0.999), 1e-8, 0.1),
        "one-element parameter at step 1000": (torch.tensor([0.3]), torch.tensor([-2.0]), torch.tensor([0.5]),
                                               torch.tensor([0.7]), 1000, 1e-3, (0.9, 0.95), 1e-8, 0.01),
    }
    for name, args in edges.items():
        with edge(name):
            _compare_adamw(fn, *args, label=name)
    passed(fn, f"{n + 50 + len(edges)} updates (chained, 7 settings, up to step 1000) match the reference")


# --------------------------------------------------------------------------- schedule
def _schedule_variants(warmup, total, max_lr, min_lr):
    def cosine(step, progress_fn, floor=min_lr, clamp=True, period=1.0):
        if step < warmup:
            return max_lr * step / warmup
        progress = progress_fn(step)
        if clamp:
            progress = min(1.0, progress)
        return floor + (max_lr - floor) * 0.5 * (1 + math.cos(math.pi * period * progress))

    span = max(1, total - warmup)
    plain = lambda s: (s - warmup) / span  # noqa: E731
    return [
        (lambda s: max_lr * (s + 1) / warmup if s < warmup else optim.warmup_cosine(s, warmup, total, max_lr, min_lr),
         "the warmup is off by one: it must be max_lr * step / warmup, 0 at step 0"),
        (lambda s: cosine(s, lambda t: t / total), "the cosine's progress must run from 0 at the end of warmup to 1 at "
         "`total`: progress = (step - warmup) / (total - warmup)"),
        (lambda s: cosine(s, plain, floor=0.0), "the cosine decays to 0 instead of min_lr: min_lr + (max_lr - min_lr) * ..."),
        (lambda s: cosine(s, plain, clamp=False), "after `total` the learning rate must stay at min_lr; yours follows the "
         "cosine back up (clamp the progress at 1)"),
        (lambda s: cosine(s, plain, period=2.0), "this is a full cosine period (cos(2 pi progress)): the decay is half a "
         "period, cos(pi * progress)"),
    ]  # fmt: skip


def _compare_schedule(fn, warmup, total, max_lr, min_lr, steps) -> None:
    for step in steps:
        want = optim.warmup_cosine(step, warmup, total, max_lr, min_lr)
        got = _number(fn, call(fn, step, warmup, total, max_lr, min_lr), "the learning rate")
        if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9 * max(max_lr, 1e-12)):
            where = f"warmup_cosine(step={step}, warmup={warmup}, total={total}, max_lr={max_lr}, min_lr={min_lr})"
            for variant, why in _schedule_variants(warmup, total, max_lr, min_lr):
                try:
                    matches = all(
                        math.isclose(_number(fn, call(fn, s, warmup, total, max_lr, min_lr), "lr"), variant(s),
                                     rel_tol=1e-6, abs_tol=1e-9 * max(max_lr, 1e-12))  # fmt: skip
                        for s in steps
                    )
                except CheckFailed:
                    matches = False
                if matches:
                    fail(f"{where} should be {want:.6g}, got {got:.6g}: {why}.")
            phase = "warmup" if step < warmup else ("after the end" if step > total else "cosine decay")
            fail(f"{where} should be {want:.6g}, got {got:.6g} (in the {phase} phase).")


def check_warmup_cosine(fn, hidden: bool = False) -> None:
    """warmup_cosine(step, warmup, total, max_lr, min_lr): linear warmup, half-cosine decay, then min_lr.

    Edges the exercise defines, all in the hidden test: step 0 (lr 0); step == warmup (max_lr, the first
    step of the cosine); step == total (min_lr) and after it (clamped); warmup = 0 (no warmup: step 0 is
    already max_lr); total == warmup (p = 0 at that step, no division by zero); warmup = 1.
    """
    forbid_reference(fn, optim.warmup_cosine, optim.warmup_cosine_scheduler)
    if not hidden:
        # warmup 10, total 110, from 1.0 down to 0.1: 0, 0.5, 1.0, then 0.55 halfway, 0.1 at the end and after.
        _compare_schedule(fn, 10, 110, 1.0, 0.1, [0, 5, 10, 60, 110, 500])
        passed(fn, "the worked values (0, 0.5, 1.0 in warmup; 0.55 halfway; 0.1 at the end and after) are right")
        return
    rng = random.Random(62)
    n = 0
    for _ in range(8):
        warmup = rng.choice([1, 5, 20, 100])
        total = warmup + rng.choice([1, 10, 77, 500])
        max_lr = 10 ** rng.uniform(-5, -1)
        min_lr = max_lr * rng.choice([0.0, 0.1, 0.5])
        steps = sorted({0, warmup - 1, warmup, total, total + 5, *(rng.randrange(0, total + 20) for _ in range(20))})
        _compare_schedule(fn, warmup, total, max_lr, min_lr, steps)
        n += 1
    _compare_schedule(fn, 0, 50, 1e-3, 1e-4, [0, 1, 25, 49, 50, 60])  # no warmup
    _compare_schedule(fn, 10, 10, 1e-3, 0.0, [0, 5, 10, 11])  # no decay phase
    edges = {
        "total == warmup: max_lr at that step, min_lr after": (4, 4, 0.5, 0.05, [3, 4, 5]),
        "warmup = 0 and total = 1": (0, 1, 0.5, 0.05, [0, 1, 2]),
        "warmup = 1": (1, 3, 0.5, 0.05, [0, 1, 2, 3, 4]),
    }
    for name, (warmup, total, max_lr, min_lr, steps) in edges.items():
        with edge(name):
            _compare_schedule(fn, warmup, total, max_lr, min_lr, steps)
    n += len(edges)
    passed(fn, f"all {n + 2} schedules (random sizes, no warmup, no decay) match the reference at every step tested")


# --------------------------------------------------------------------------- clipping
def _compare_clip(fn, grads, max_norm, label="") -> None:
    want, want_norm = optim.clip_grad_norm(grads, max_norm)
    originals = [t.clone() for t in grads]
    got = call(fn, grads, max_norm, copy_args=False)
    if any(not torch.equal(a, b) for a, b in zip(originals, grads)):
        fail(
            "clip_grad_norm changed the gradients it was given in place; return new tensors "
            "(g * coef, not g.mul_(coef)), and leave the inputs as they were."
        )
    where = label or f"{len(grads)} gradients of shapes {[tuple(g.shape) for g in grads]} (max_norm={max_norm})"
    if not isinstance(got, tuple | list) or len(got) != 2:
        fail(f"clip_grad_norm should return (clipped_grads, total_norm), got {type(got).__name__}: {short(got)}")
    clipped, norm = got
    norm = _number(fn, norm, "the total norm")
    if not isinstance(clipped, list | tuple) or len(clipped) != len(grads):
        fail(f"clip_grad_norm on {where} should return a list of {len(grads)} clipped tensors, got {short(clipped)}")
    for c, w in zip(clipped, want):
        if not isinstance(c, torch.Tensor) or c.shape != w.shape:
            fail(f"clip_grad_norm on {where}: each clipped gradient must be a tensor with its input's shape {tuple(w.shape)}")
    true_norm = float(want_norm)
    if not math.isclose(norm, true_norm, rel_tol=1e-5):
        sq = sum(float((g.double() ** 2).sum()) for g in grads)
        l1 = sum(float(g.double().abs().sum()) for g in grads)
        hint = ""
        if math.isclose(norm, sq, rel_tol=1e-5):
            hint = ": that is the sum of squares; the norm is its square root"
        elif math.isclose(norm, l1, rel_tol=1e-5):
            hint = ": that is the sum of absolute values (an L1 norm); use the L2 norm, sqrt(sum of squares)"
        elif math.isclose(norm, min(true_norm, max_norm), rel_tol=1e-4):
            hint = ": that is the norm after clipping; return the norm before clipping (it is what you would log)"
        elif math.isclose(norm, sum(float(torch.linalg.vector_norm(g.double())) for g in grads), rel_tol=1e-5):
            hint = ": that is the sum of the tensors' norms; the global norm is sqrt(sum over all tensors of sum(g**2))"
        fail(f"clip_grad_norm on {where} returned total_norm {norm:.6g}, expected {true_norm:.6g}{hint}.")
    clipped = [c.detach() for c in clipped]
    if all(torch.allclose(c.double(), w.double(), rtol=1e-5, atol=1e-7) for c, w in zip(clipped, want)):
        return
    out_norm = math.sqrt(sum(float((c.double() ** 2).sum()) for c in clipped))
    hint = ""
    if true_norm < max_norm and not math.isclose(out_norm, true_norm, rel_tol=1e-5):
        hint = (
            f": the norm {true_norm:.4g} is already below max_norm {max_norm}, so the gradients must be left as "
            "they are (the factor is min(1, max_norm / norm); never scale up)"
        )
    elif all(float(torch.linalg.vector_norm(c.double())) <= max_norm * (1 + 1e-5) for c in clipped) and len(grads) > 1:
        per = [g.double() * min(1.0, max_norm / (float(torch.linalg.vector_norm(g.double())) + 1e-6)) for g in grads]
        if all(torch.allclose(c.double(), p, rtol=1e-4, atol=1e-7) for c, p in zip(clipped, per)):
            hint = (
                ": each tensor was clipped on its own; clipping by the GLOBAL norm scales all of them by the same "
                "factor, max_norm / (global norm), so the direction of the whole gradient is kept"
            )
    if not hint and not math.isclose(out_norm, min(true_norm, max_norm), rel_tol=1e-4):
        hint = f": the clipped gradients have a global norm of {out_norm:.4g}, expected min(norm, max_norm) = {min(true_norm, max_norm):.4g}"
    fail(f"clip_grad_norm on {where} returned wrong gradients{hint}.")


def check_clip_grad_norm(fn, hidden: bool = False) -> None:
    """clip_grad_norm(grads, max_norm) -> (grads scaled by min(1, max_norm / norm), norm before clipping).

    Edges the exercise defines, all in the hidden test: a norm below max_norm (unchanged) and above it;
    the *global* norm over tensors of different shapes (one factor for all); a single tensor and a
    one-element tensor; all-zero gradients (no division by zero); a float64 gradient; huge and tiny norms.
    """
    forbid_reference(fn, optim.clip_grad_norm, optim.clip_grad_norm_, optim.grad_norm)
    _forbid(fn, torch.nn.utils.clip_grad_norm_, torch.nn.utils.get_total_norm, torch.nn.utils.clip_grads_with_norm_,
            what="PyTorch's clip_grad_norm_ / get_total_norm")  # fmt: skip
    if not hidden:
        grads = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]  # global norm 5
        _compare_clip(fn, grads, 1.0, label="[3, 0] and [4] with max_norm=1 (norm 5: expected [0.6, 0] and [0.8])")
        _compare_clip(fn, grads, 10.0, label="[3, 0] and [4] with max_norm=10 (norm 5 is below 10: unchanged)")
        _compare_clip(fn, [torch.tensor([[1.0, 1.0], [1.0, 1.0]])], 1.0, label="one (2, 2) tensor of ones (norm 2)")
        passed(fn, "the 3 hand-worked examples are right")
        return
    g = seeded(63)
    n = 0
    for i in range(10):
        shapes = [[(4,), (3, 3)], [(10, 2), (7,), (2, 2, 2)], [(1,)], [(64,), (8, 8), (3,)]][i % 4]
        scale = [1e-3, 0.1, 1.0, 10.0, 1000.0][i % 5]
        grads = [torch.randn(s, generator=g) * scale for s in shapes]
        _compare_clip(fn, grads, [0.5, 1.0, 5.0][i % 3])
        n += 1
    _compare_clip(fn, [torch.zeros(5), torch.zeros(2, 2)], 1.0, label="all-zero gradients")
    _compare_clip(fn, [torch.randn(3, generator=g, dtype=torch.float64) * 50], 1.0, label="a float64 gradient")
    with edge("a one-element gradient among others"):
        _compare_clip(fn, [torch.tensor([12.0]), torch.randn(2, 3, generator=g)], 2.0, label="[12] and a (2, 3) gradient")
    n += 1
    passed(fn, f"all {n + 2} random and edge cases (tiny and huge norms, zero gradients) match the reference")


# --------------------------------------------------------------------------- spike detection
def _compare_is_spike(fn, value, history, threshold, min_history, label="") -> None:
    want = trainer.is_spike(value, history, threshold, min_history)
    got = call(fn, value, list(history), threshold, min_history)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = bool(got)
    try:
        import numpy as np

        if isinstance(got, np.bool_):
            got = bool(got)
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(got, bool):
        fail(f"is_spike should return True or False, got {type(got).__name__}: {short(got)}")
    if got == want:
        return
    where = label or f"value {value:.4g} with a history of {len(history)} values"
    if not math.isfinite(value):
        fail(f"is_spike({value}, ...) returned False: a NaN or infinite loss is always a spike (check math.isfinite first; "
             "a comparison with NaN is always False).")  # fmt: skip
    if len(history) < min_history:
        fail(
            f"is_spike on {where} returned {got}, expected {want}: with fewer than min_history={min_history} values "
            "the statistics mean nothing yet, so nothing is a spike."
        )
    mean = statistics.fmean(history)
    std = statistics.pstdev(history)
    z = (value - mean) / std if std > 0 else math.inf
    msg = (
        f"is_spike on {where} (mean {mean:.4g}, standard deviation {std:.4g}, threshold {threshold}) returned {got}, "
        f"expected {want}: the value is {z:.2f} standard deviations from the mean"
    )
    if value < mean:
        msg += "; only a value ABOVE the mean is a spike (a loss far below its recent mean is good news)"
    elif _says(fn, mean + 2 * threshold * std, history, threshold, min_history) is False and std < 0.5:
        if _says(fn, mean + threshold + 0.01, history, threshold, min_history):
            msg += "; the threshold counts standard deviations: value > mean + threshold * std"
    elif len(history) > 1 and std > 0:
        sample = statistics.stdev(history)
        between = mean + threshold * (std + sample) / 2  # a spike by the population std, not by the sample one
        if _says(fn, between, history, threshold, min_history) is False:
            msg += "; use the population standard deviation (divide by n: statistics.pstdev, or torch.std(unbiased=False))"
    fail(msg + ".")


def _says(fn, value, history, threshold, min_history) -> bool | None:
    """The student's answer on other inputs (for diagnosis), or None if the call fails."""
    try:
        got = call(fn, value, list(history), threshold, min_history)
    except CheckFailed:
        return None
    return bool(got) if isinstance(got, bool | torch.Tensor) or type(got).__name__ == "bool_" else None


def check_is_spike(fn, hidden: bool = False) -> None:
    """is_spike(value, history, threshold, min_history): NaN/inf, or more than threshold std above the mean.

    Edges the exercise defines, all in the hidden test: a value exactly at mean + threshold * std is
    *not* a spike (strictly greater); just above it is; NaN, +inf and -inf always are, even with an empty
    history; exactly min_history values (judged) and one fewer (never a spike); zero spread (anything
    above the mean is a spike, the mean itself is not); far below the mean is not; population std.
    """
    forbid_reference(fn, trainer.is_spike, trainer.SpikeDetector)
    history = [2.0, 2.2, 1.8, 2.0, 2.2, 1.8, 2.0, 2.0]  # mean 2.0, population std 0.1414
    if not hidden:
        for value, label in [
            (2.5, "2.5 (3.54 std above the mean: not a spike at threshold 4)"),
            (2.6, "2.6 (4.24 std above: a spike)"),
            (0.1, "0.1 (far below the mean: not a spike)"),
        ]:
            _compare_is_spike(fn, value, history, 4.0, 5, label=f"the worked history, value {label}")
        _compare_is_spike(fn, 100.0, history[:3], 4.0, 5, label="a history of 3 < min_history=5 values, value 100")
        _compare_is_spike(fn, float("nan"), [], 4.0, 5, label="a NaN loss (always a spike)")
        _compare_is_spike(fn, float("inf"), history, 4.0, 5, label="an infinite loss (always a spike)")
        passed(fn, "the 6 hand-worked cases are right (spike, no spike, below the mean, short history, NaN, inf)")
        return
    rng = random.Random(64)
    n = 0
    for _ in range(60):
        size = rng.randrange(0, 40)
        center, spread = rng.uniform(0.5, 8.0), rng.uniform(0.01, 1.0)
        hist = [rng.gauss(center, spread) for _ in range(size)]
        threshold, min_history = rng.choice([2.0, 3.0, 6.0]), rng.choice([1, 5, 10, 20])
        if size:
            mean, std = statistics.fmean(hist), statistics.pstdev(hist)
            z = rng.choice([-8.0, -1.0, 0.5, 1.5, 2.5, 4.0, 7.0, 12.0])
            if std > 0 and abs(abs(z) - threshold) < 0.3:
                z += 0.5  # stay clear of the boundary
            value = mean + z * std
        else:
            value = center
        _compare_is_spike(fn, value, hist, threshold, min_history)
        n += 1
    edge_cases = [
        (float("nan"), history, 4.0, 5), (float("-inf"), history, 4.0, 5), (float("nan"), [], 6.0, 20),
        (2.0001, [2.0] * 10, 3.0, 5), (2.0, [2.0] * 10, 3.0, 5),  # zero spread: anything above the mean is a spike
        (3.0, history[:5], 4.0, 5), (3.0, history[:4], 4.0, 5),  # exactly min_history values, and one fewer
    ]  # fmt: skip
    for args in edge_cases:
        _compare_is_spike(fn, *args)
    # Exactly representable: mean 2, population std 1; [0, 4] has mean 2, std 2.
    at_threshold = {
        "a value exactly at mean + threshold * std": (4.0, [1.0, 3.0] * 3, 2.0, 6),
        "a value exactly at the threshold, another history": (5.0, [0.0, 4.0], 1.5, 2),
        "just above the threshold": (4.0 + 1e-9, [1.0, 3.0] * 3, 2.0, 6),
        "a value at the mean with zero spread": (7.0, [7.0] * 5, 3.0, 5),
    }
    for name, args in at_threshold.items():
        with edge(name):
            _compare_is_spike(fn, *args, label=name)
    n += len(at_threshold)
    passed(fn, f"all {n + len(edge_cases)} random and edge cases (NaN, -inf, zero spread, min_history) match the reference")
