"""The language-modelling loss: cross-entropy from a numerically stable log-softmax (chapter 06).

Implements
- `logsumexp` and `log_softmax(logits)`: log p_i = z_i - log sum_j exp(z_j), with the log
  of the sum computed as m + log sum_j exp(z_j - m), m = max_j z_j, so that no exp
  overflows (the log-sum-exp trick); a row may contain -inf (a masked token).
- `cross_entropy(logits, targets, ignore_index=-100)`: the mean over positions of
  -log p(target), where positions whose target is `ignore_index` (padding, or the prompt
  of a fine-tuning example) count neither in the sum nor in the number of positions.
  The same as `torch.nn.functional.cross_entropy` with the same arguments (the tests check).

All run in float32 whatever the dtype of the logits (bf16 logits lose too much precision
in a sum over a vocabulary). For bf16 or fp16 logits, `cross_entropy` never makes a float32
copy of the whole (N, V) table: `_LowPrecisionCrossEntropy` upcasts `chunk_rows` rows at a
time, in the forward pass and again in the backward pass, and keeps only the per-row
log-sum-exp (a float32 copy of GPT-2's logits for 16 x 1024 tokens would be 3.3 GB).
Left out: label smoothing, class weights, and fused kernels that never hold even the
(N, V) logits (they multiply the last hidden states by the head chunk by chunk).
"""

from __future__ import annotations

from typing import Literal

import torch


def _subtract_max(logits: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits - m, m) in float32, with m the maximum along `dim` (kept as a size-1 dim)."""
    logits = logits.float()
    m = logits.amax(dim=dim, keepdim=True).detach()  # a constant shift: no gradient needs to flow through it
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # an all -inf row: shift by 0, not by -inf
    return logits - m, m


def logsumexp(logits: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """log sum_j exp(logits_j) along `dim`, computed as m + log sum_j exp(logits_j - m), m = max_j logits_j.

    Subtracting the maximum changes nothing mathematically, but the largest exponent becomes
    exp(0) = 1, so nothing overflows however large the logits are (the log-sum-exp trick).
    """
    shifted, m = _subtract_max(logits, dim)
    out = m + shifted.exp().sum(dim=dim, keepdim=True).log()
    return out if keepdim else out.squeeze(dim)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log softmax(logits) = (logits - m) - log sum_j exp(logits_j - m) along `dim`, in float32.

    The same as logits - logsumexp(logits), but the difference is taken between the shifted
    values, which are small: no precision is lost when the logits are large.
    """
    shifted, _ = _subtract_max(logits, dim)
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


CHUNK_ELEMENTS = 2**24  # float32 values upcast at a time by the low-precision loss (64 MB)


class _LowPrecisionCrossEntropy(torch.autograd.Function):
    """-log softmax(logits)[target] per row, for bf16/fp16 logits (N, V), computed in float32 chunk by chunk.

    forward: nll (N,) float32, 0 where the target is ignored. backward: d nll / d logits =
    softmax(logits) - onehot(target), recomputed per chunk in float32, written in the logits'
    dtype. Saved for backward: the logits themselves, the targets and the (N,) log-sum-exp.
    """

    @staticmethod
    def forward(ctx, logits, targets, keep, chunk_rows):
        lse = logits.new_empty(logits.shape[0], dtype=torch.float32)  # (N,)
        picked = logits.gather(-1, targets[:, None]).squeeze(-1).float()  # (N,) z_target
        for start in range(0, logits.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            lse[rows] = logsumexp(logits[rows], dim=-1)  # float32 (chunk, V) at most
        ctx.save_for_backward(logits, targets, keep, lse)
        ctx.chunk_rows = chunk_rows
        return torch.where(keep, lse - picked, torch.zeros_like(lse))

    @staticmethod
    def backward(ctx, grad_nll):
        logits, targets, keep, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)  # (N, V) in the logits' dtype
        scale = torch.where(keep, grad_nll, torch.zeros_like(grad_nll)).float()  # (N,)
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            p = (logits[rows].float() - lse[rows, None]).exp()  # (chunk, V) softmax
            p.scatter_add_(-1, targets[rows, None], -torch.ones_like(p[:, :1]))  # - onehot(target)
            grad[rows] = (p * scale[rows, None]).to(grad.dtype)
        return grad, None, None, None


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Cross-entropy of next-token predictions: logits (..., V), integer targets (...).

    reduction "mean" (default): the average of -log p(target) over the positions whose
    target is not `ignore_index` (NaN if every position is ignored, as in PyTorch);
    "sum": their sum; "none": the loss at every position (..., 0 where ignored).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits (..., V) and targets (...) must agree on the leading dims, got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    keep = targets != ignore_index  # (...)
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets)).long()  # any valid index where ignored
    if logits.dtype in (torch.bfloat16, torch.float16):  # no float32 copy of the whole (..., V) table
        vocab = logits.shape[-1]
        chunk_rows = max(1, CHUNK_ELEMENTS // vocab)
        nll = _LowPrecisionCrossEntropy.apply(
            logits.reshape(-1, vocab), safe_targets.reshape(-1), keep.reshape(-1), chunk_rows
        ).view(keep.shape)  # (...)
    else:
        # -log p(target) = log sum_j exp(z_j - m) - (z_target - m): log_softmax read at the target only.
        shifted, _ = _subtract_max(logits, dim=-1)  # (..., V) float32
        nll = shifted.exp().sum(dim=-1).log() - shifted.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # (...)
        nll = torch.where(keep, nll, torch.zeros_like(nll))
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":
        return nll.sum() / keep.sum()
    raise ValueError(f'reduction must be "mean", "sum" or "none", got {reduction!r}')
