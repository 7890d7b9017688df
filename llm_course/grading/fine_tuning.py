"""Checks for the chapter 11 exercises (fine-tuning).

The student writes, with the signatures of the reference:

- ``masked_sft_loss(logits, targets, response_mask) -> scalar``
  (:func:`llm_course.sft.masked_sft_loss`: mean cross-entropy over the response tokens only)
- ``lora_forward(x, weight, bias, A, B, scale) -> (..., out)``
  (:func:`llm_course.lora.lora_forward`: x W^T + b + scale (x A^T) B^T)
- ``merge_weight(weight, A, B, scale) -> (out, in)``
  (:func:`llm_course.lora.merge_weight`: W + scale B A)

Each ``check_*`` runs hand-worked examples (``hidden=False``) or seeded random cases and edge
cases compared with the reference (``hidden=True``). When an output differs, the check compares
it with the result of a known mistake (the loss averaged over every position, over the prompt,
per sequence; the scale forgotten or applied to the base; the bias left out; B A transposed;
the weight modified in place) and says which one it is.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from llm_course import lora, sft
from llm_course.grading import call, expect_tensor, fail, forbid_reference, passed, seeded
from llm_course.grading.edges import edge

TOL = dict(atol=1e-5, rtol=1e-4)


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and torch.allclose(got.double(), want.double(), **TOL)


# --------------------------------------------------------------------------- masked loss
def _nll(logits, targets):
    return -torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None]).squeeze(-1)  # (B, T)


def _explain_loss(logits, targets, mask, got: float) -> str:
    nll = _nll(logits, targets)
    m = mask.double()
    candidates = [
        (nll.mean(), "the mean runs over every position: the prompt and padding positions must not count, "
                     "average only where response_mask is True"),
        (nll[~mask].mean() if (~mask).any() else None, "the loss is taken on the prompt (the mask is inverted): "
                                                      "True in response_mask marks the tokens to learn"),
        ((nll * m).sum() / m.numel(), "the masked sum is divided by the number of all positions; divide by the "
                                      "number of response tokens, response_mask.sum()"),
        ((nll * m).sum(), "this is the sum over the response tokens; the loss is their mean"),
        (((nll * m).sum(-1) / m.sum(-1).clamp(min=1)).mean(), "each sequence is averaged first and then the "
         "sequences: the course averages over all response tokens of the batch at once (a longer answer weighs more)"),
        (-(torch.softmax(logits.double(), -1).gather(-1, targets[..., None]).squeeze(-1).log()[mask]).mean(), None),
        (-(torch.softmax(logits.double(), -1).gather(-1, targets[..., None]).squeeze(-1)[mask]).mean(),
         "this is minus the mean *probability* of the targets; the loss is minus the mean *log*-probability"),
        (-(logits.double().gather(-1, targets[..., None]).squeeze(-1)[mask]).mean(),
         "this is minus the mean raw logit of the targets: take log_softmax over the vocabulary first"),
    ]
    shifted = _nll(logits[:, :-1], targets[:, 1:])
    if mask[:, 1:].any():
        candidates.append((shifted[mask[:, 1:]].mean(), "the targets are shifted again by one position: targets[t] "
                           "is already the token after position t, compare logits[:, t] with targets[:, t]"))
    for value, why in candidates:
        if why is not None and value is not None and abs(float(value) - got) <= 1e-4 * max(1.0, abs(got)):
            return f": {why}"
    return ""


def _compare_loss(fn, logits, targets, mask, label: str = "") -> None:
    want = sft.masked_sft_loss(logits, targets, mask).detach()
    got = expect_tensor(fn, call(fn, logits, targets, mask), "the loss, a scalar")
    where = label or f"logits {tuple(logits.shape)} with {int(mask.sum())} response tokens"
    if got.numel() != 1:
        fail(f"masked_sft_loss({where}) should return one number (a 0-dim tensor), got shape {tuple(got.shape)}: "
             "average the per-token losses of the response tokens.")
    if not got.is_floating_point():
        fail(f"masked_sft_loss({where}) should return a floating-point tensor, got {got.dtype}.")
    value = float(got.detach().double())
    if not torch.isfinite(torch.tensor(value)):
        fail(f"masked_sft_loss({where}) returned {value}: use log_softmax (not log(softmax)) so large logits do "
             "not overflow.")
    if abs(value - float(want)) > 1e-4 * max(1.0, abs(float(want))):
        fail(f"masked_sft_loss({where}) should be {float(want):.6f}, got {value:.6f}"
             f"{_explain_loss(logits, targets, mask, value)}.")
    if logits.requires_grad and not got.requires_grad:
        fail(f"masked_sft_loss({where}) returned a loss without gradient: do not call .item(), detach or "
             "build a new tensor from Python numbers; the loss must be differentiable.")


def _loss_case(g, B, T, V, scale=2.0):
    logits = torch.randn(B, T, V, generator=g) * scale
    targets = torch.randint(0, V, (B, T), generator=g)
    prompt = torch.randint(1, T, (B, 1), generator=g)  # response starts at prompt, padding after end
    end = torch.minimum(prompt + torch.randint(1, T, (B, 1), generator=g), torch.tensor(T))
    pos = torch.arange(T)
    mask = (pos >= prompt) & (pos < end)  # (B, T)
    return logits, targets, mask


def check_masked_sft_loss(fn, hidden: bool = False) -> None:
    """masked_sft_loss(logits (B, T, V), targets (B, T), response_mask (B, T) bool) -> mean response NLL.

    Edges the exercise defines, all in the hidden test: the mean over all response tokens of the
    batch (sequences with more response tokens weigh more; a sequence with none adds nothing and makes
    no NaN); a single response token; a mask that is all True; the mask as bools and as 0/1 integers;
    very large logits; B = 1 and T = 1; the loss differentiable.
    """
    forbid_reference(fn, sft.masked_sft_loss)
    if not hidden:
        # The worked example of the notebook: V = 2, logits give p(target) 1/2, 3/4, 4/5;
        # position 0 is prompt, so the loss is -(log 3/4 + log 4/5) / 2 = 0.2554.
        import math

        logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(4.0)]]])
        _compare_loss(fn, logits, torch.tensor([[1, 0, 1]]), torch.tensor([[False, True, True]]),
                      label="the worked example (expected 0.2554)")  # fmt: skip
        g = seeded(110)
        logits, targets, mask = _loss_case(g, 2, 6, 5)
        mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0]], dtype=torch.bool)
        _compare_loss(fn, logits, targets, mask, label="2 sequences with 4 and 1 response tokens")
        _compare_loss(fn, logits.requires_grad_(), targets, mask, label="logits that require gradients")
        passed(fn, "the worked example and a batch of two sequences are right")
        return
    g = seeded(111)
    n = 0
    for B, T, V in [(1, 5, 3), (3, 8, 11), (4, 16, 50), (2, 12, 7), (5, 9, 20), (8, 32, 100)]:
        _compare_loss(fn, *_loss_case(g, B, T, V))
        n += 1
    logits, targets, mask = _loss_case(g, 3, 10, 9, scale=60.0)
    _compare_loss(fn, logits, targets, mask, label="very large logits (up to ~200)")
    logits, targets, _ = _loss_case(g, 2, 7, 6)
    _compare_loss(fn, logits, targets, torch.ones(2, 7, dtype=torch.bool), label="a mask that is all True")
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 6] = True
    _compare_loss(fn, logits, targets, mask, label="a single response token")
    _compare_loss(fn, logits, targets, mask.int(), label="a mask of 0/1 integers")
    with edge("a sequence with no response token"):
        logits, targets, mask = _loss_case(g, 3, 6, 5)
        mask[1] = False
        mask[0, 2] = True
        _compare_loss(fn, logits, targets, mask, label="sequence 1 has no response token")
        _compare_loss(fn, logits, targets, mask.long(), label="sequence 1 has no response token, 0/1 integer mask")
    with edge("B = 1, T = 1"):
        logits, targets = torch.randn(1, 1, 4, generator=g) * 2, torch.tensor([[3]])
        _compare_loss(fn, logits, targets, torch.ones(1, 1, dtype=torch.bool), label="one sequence of one token")
    n += 3
    passed(fn, f"all {n + 4} random and edge cases (large logits, full mask, one token, 0/1 mask) match the reference")


# --------------------------------------------------------------------------- LoRA forward
def _explain_forward(x, W, b, A, B, scale, got) -> str:
    base = F.linear(x, W, b)
    delta = F.linear(F.linear(x, A), B)
    candidates = [
        (base + delta, "the adapter's output is not multiplied by scale (alpha / r)"),
        (base + delta / scale, "the adapter's output is divided by scale; multiply it"),
        (scale * (base + delta) if b is None else scale * (base + delta), "scale multiplies the base layer's output "
         "too: only the adapter's term is scaled, the frozen layer is left as it is"),
        (F.linear(x, W) + scale * delta, "the bias is missing: add b (when it is not None) to the base output"),
        (base, "the adapter is missing: add scale * (x A^T) B^T"),
        (scale * delta, "the base layer's output x W^T + b is missing"),
        (base + scale * delta + (b if b is not None else 0), "the bias is added twice"),
    ]
    if A.shape[0] == A.shape[1] == B.shape[0]:
        candidates.append((base + scale * (x @ B.T @ A.T), "A and B are applied in the wrong order: first A "
                           "(in -> r), then B (r -> out): x A^T B^T"))
    if W.shape[0] == W.shape[1]:
        candidates.append((x @ W + (b if b is not None else 0) + scale * delta, "the weight is not transposed: "
                           "W has shape (out, in), so y = x W^T (F.linear(x, W) or x @ W.T)"))
    for value, why in candidates:
        if _close(got, value):
            return f": {why}"
    bad = (~torch.isclose(got.double(), lora.lora_forward(x, W, b, A, B, scale).double(), **TOL)).nonzero()[0].tolist()
    return f" (first wrong element at index {tuple(bad)})"


def _compare_forward(fn, x, W, b, A, B, scale, label: str = "") -> None:
    want = lora.lora_forward(x, W, b, A, B, scale).detach()
    got = expect_tensor(fn, call(fn, x, W, b, A, B, scale), "the layer's output")
    where = label or (f"x {tuple(x.shape)}, W {tuple(W.shape)}, r = {A.shape[0]}, scale {scale:g}"
                      f"{'' if b is not None else ', no bias'}")
    if tuple(got.shape) != tuple(want.shape):
        hint = ""
        if got.shape[-1] == x.shape[-1] != want.shape[-1]:
            hint = " (the last dimension should be W's out_features, W.shape[0])"
        elif got.shape[-1] == A.shape[0]:
            hint = " (the last dimension is the rank r: the product with B, (out, r), is missing)"
        fail(f"lora_forward({where}) should return shape {tuple(want.shape)}, got {tuple(got.shape)}{hint}.")
    if not _close(got.detach(), want):
        fail(f"lora_forward({where}) is wrong{_explain_forward(x, W, b, A, B, scale, got.detach())}.")
    if A.requires_grad and not got.requires_grad:
        fail(f"lora_forward({where}): no gradient reaches A; compute with the tensors themselves (no .detach(), "
             "no .data, no torch.no_grad) so the adapter can be trained.")


def _forward_case(g, batch, d_in, d_out, r, scale, bias=True, random_B=True):
    x = torch.randn(*batch, d_in, generator=g)
    W = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    b = torch.randn(d_out, generator=g) if bias else None
    A = (torch.rand(r, d_in, generator=g) * 2 - 1) / d_in**0.5
    B = torch.randn(d_out, r, generator=g) if random_B else torch.zeros(d_out, r)
    return x, W, b, A, B, scale


def check_lora_forward(fn, hidden: bool = False) -> None:
    """lora_forward(x (..., in), weight (out, in), bias (out,) or None, A (r, in), B (out, r), scale).

    Edges the exercise defines, all in the hidden test: bias None; rank 1 and full rank; B = 0 (the
    base layer exactly); x with no leading dimension, one, or several; the scale on the adapter term only;
    gradients reaching A and B.
    """
    forbid_reference(fn, lora.lora_forward, lora.lora_delta, lora.LoRALinear.forward)
    if not hidden:
        # The worked example: x = [1, 2], W = I, b = [0.5, -0.5], A = [[1, 1]], B = [[2], [0]], scale 0.5:
        # x A^T = 3, (x A^T) B^T = [6, 0], halved [3, 0]; x W^T + b = [1.5, 1.5]; sum [4.5, 1.5].
        x = torch.tensor([[1.0, 2.0]])
        W, b = torch.eye(2), torch.tensor([0.5, -0.5])
        A, B = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0], [0.0]])
        _compare_forward(fn, x, W, b, A, B, 0.5, label="the worked example (expected [[4.5, 1.5]])")
        g = seeded(112)
        _compare_forward(fn, *_forward_case(g, (3,), 6, 4, 2, 2.0))
        _compare_forward(fn, *_forward_case(g, (2, 5), 8, 8, 8, 0.25, bias=False))
        x, W, b, A, B, s = _forward_case(g, (3,), 6, 4, 2, 2.0)
        _compare_forward(fn, x, W, b, A.requires_grad_(), B.requires_grad_(), s, label="A and B that require gradients")
        passed(fn, "the worked example, a batch, a layer without bias and the gradient to A and B are right")
        return
    g = seeded(113)
    cases = [((4,), 16, 8, 4, 2.0, True), ((2, 3), 12, 20, 2, 4.0, True), ((5,), 32, 32, 8, 1.0, False),
             ((1, 7), 10, 6, 1, 16.0, True), ((3, 2, 4), 8, 5, 3, 0.5, True), ((6,), 24, 24, 24, 2.0, True)]  # fmt: skip
    for batch, d_in, d_out, r, scale, bias in cases:
        _compare_forward(fn, *_forward_case(g, batch, d_in, d_out, r, scale, bias))
    x, W, b, A, B, s = _forward_case(g, (3,), 8, 4, 2, 2.0, random_B=False)
    _compare_forward(fn, x, W, b, A, B, s, label="B = 0, the initial adapter (the output must equal the base layer's)")
    x, W, b, A, B, s = _forward_case(g, (2, 3), 10, 6, 4, 2.0)
    _compare_forward(fn, x, W, b, A.requires_grad_(), B.requires_grad_(), s, label="A and B that require gradients")
    with edge("x with no leading dimension"):
        x, W, b, A, B, s = _forward_case(g, (), 6, 5, 2, 3.0)
        _compare_forward(fn, x, W, b, A, B, s, label="one input vector x of shape (in,)")
    cases += [None]
    passed(fn, f"all {len(cases) + 2} random and edge cases (no bias, rank 1 to 24, B = 0, gradients) match the reference")


# --------------------------------------------------------------------------- merge
def _explain_merge(W, A, B, scale, got) -> str:
    delta = B @ A
    candidates = [
        (W + delta, "the update B A is not multiplied by scale (alpha / r)"),
        (scale * (W + delta), "scale multiplies W too: only the update is scaled, W + scale * B A"),
        (scale * delta, "this is only the update scale * B A; the merged weight adds it to W"),
        (W + scale * delta.T if delta.shape[0] == delta.shape[1] else None, "the update is transposed: B (out, r) "
         "@ A (r, in) already has W's shape (out, in)"),
        (W - scale * delta, "the update is subtracted; add it"),
        (W + delta / scale, "the update is divided by scale; multiply it"),
    ]
    if A.shape[0] == A.shape[1] == B.shape[0]:
        candidates.append((W + scale * (A @ B), "the product is A B; the layer computes x A^T B^T = x (B A)^T, so the update is B @ A"))
    for value, why in candidates:
        if value is not None and _close(got, value):
            return f": {why}"
    bad = (~torch.isclose(got.double(), lora.merge_weight(W, A, B, scale).double(), **TOL)).nonzero()[0].tolist()
    return f" (first wrong element at index {tuple(bad)})"


def _compare_merge(fn, W, A, B, scale, label: str = "") -> None:
    want = lora.merge_weight(W, A, B, scale)
    W_in = W.clone()
    got = expect_tensor(fn, call(fn, W_in, A, B, scale, copy_args=False), "the merged weight")
    where = label or f"W {tuple(W.shape)}, r = {A.shape[0]}, scale {scale:g}"
    if tuple(got.shape) != tuple(W.shape):
        hint = ""
        if tuple(got.shape) == tuple(W.shape[::-1]):
            hint = " (transposed: B (out, r) @ A (r, in) has W's shape)"
        fail(f"merge_weight({where}) should return W's shape {tuple(W.shape)}, got {tuple(got.shape)}{hint}.")
    if not torch.equal(W_in, W):
        fail(f"merge_weight({where}) changed the weight passed in (in place, e.g. weight += ...); return a new "
             "tensor: the base weight is still needed to turn the adapter off or to merge another one.")
    if not _close(got.detach(), want):
        fail(f"merge_weight({where}) is wrong{_explain_merge(W, A, B, scale, got.detach())}.")


def check_merge_weight(fn, hidden: bool = False) -> None:
    """merge_weight(weight (out, in), A (r, in), B (out, r), scale) -> W + scale B A.

    Edges the exercise defines, all in the hidden test: B = 0 and scale 0 (W itself, as a new tensor);
    rank 1; square and non-square weights; the weight passed in left unchanged.
    """
    forbid_reference(fn, lora.merge_weight, lora.LoRALinear.merged, lora.merge_lora)
    if not hidden:
        # The worked example: W = I, A = [[1, 1]], B = [[2], [0]], scale 0.5: B A = [[2, 2], [0, 0]],
        # halved [[1, 1], [0, 0]], so W + scale B A = [[2, 1], [0, 1]].
        _compare_merge(fn, torch.eye(2), torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0], [0.0]]), 0.5,
                       label="the worked example (expected [[2, 1], [0, 1]])")  # fmt: skip
        g = seeded(114)
        _compare_merge(fn, torch.randn(4, 6, generator=g), torch.randn(2, 6, generator=g), torch.randn(4, 2, generator=g), 2.0)
        passed(fn, "the worked example and a random (4, 6) weight of rank-2 update are right")
        return
    g = seeded(115)
    cases = [(8, 8, 8, 2.0), (16, 8, 4, 0.5), (5, 12, 1, 16.0), (32, 32, 4, 4.0), (3, 7, 2, 1.0), (20, 10, 5, 3.0)]
    for n_out, n_in, r, scale in cases:
        _compare_merge(fn, torch.randn(n_out, n_in, generator=g), torch.randn(r, n_in, generator=g),
                       torch.randn(n_out, r, generator=g), scale)  # fmt: skip
        # the merged weight must compute what the adapted layer computes
    W, A = torch.randn(6, 4, generator=g), torch.randn(2, 4, generator=g)
    _compare_merge(fn, W, A, torch.zeros(6, 2), 2.0, label="B = 0 (the merged weight is W itself)")
    with edge("scale 0"):
        _compare_merge(fn, W, A, torch.randn(6, 2, generator=g), 0.0, label="scale 0 (the merged weight is W itself)")
    cases += [None]
    passed(fn, f"all {len(cases) + 1} random and edge cases (square, rank 1, B = 0) match the reference; "
               "the weight passed in is left unchanged")


__all__ = ["check_lora_forward", "check_masked_sft_loss", "check_merge_weight"]
