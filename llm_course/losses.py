"""The language-modelling loss: cross-entropy from a numerically stable log-softmax (chapter 06).

Implements
- `logsumexp` and `log_softmax(logits)`: log p_i = z_i - log sum_j exp(z_j), with the log
  of the sum computed as m + log sum_j exp(z_j - m), m = max_j z_j, so that no exp
  overflows (the log-sum-exp trick); a row may contain -inf (a masked token).
- `cross_entropy(logits, targets, ignore_index=-100)`: the mean over positions of
  -log p(target), where positions whose target is `ignore_index` (padding, or the prompt
  of a fine-tuning example) count neither in the sum nor in the number of positions.
  The same as `torch.nn.functional.cross_entropy` with the same arguments (the tests check).

Both run in float32 whatever the dtype of the logits (bf16 logits lose too much precision
in a sum over a vocabulary). Left out: label smoothing, class weights, and the fused
kernels that never hold a (N, V) table in memory.
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
