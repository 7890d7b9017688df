"""Mixture of experts: a router sends each token to k of E feed-forward networks (chapter 10).

Implements
- `router_probs` and `top_k_routing`: a linear router's logits -> softmax in float32 -> the k
  most probable experts per token, their probabilities renormalized to sum to 1 (Mixtral;
  Jiang et al., 2024, "Mixtral of Experts"), or kept as they are (`renormalize=False`, the
  gate of Switch Transformer with k = 1; Fedus et al., 2022);
- `load_balancing_loss`: Switch Transformer's auxiliary loss E * sum_i f_i P_i (their
  equations 4-6), with f_i counting all k choices of each token, as Hugging Face's
  `load_balancing_loss_func` for Mixtral does;
- `expert_capacity`, `expert_positions`, `capacity_keep`: how many tokens an expert takes
  in one batch, and which assignments overflow it and are dropped (GShard, Lepikhin et al.,
  2021: every token's first choice is served before any second choice);
- `dispatch` / `combine`: group the tokens by expert, and add the experts' outputs back,
  weighted by the router;
- `ffn_flops_per_token`, `moe_flops_per_token`: the matrix-product FLOPs of one token's
  forward pass through a dense FFN and through an MoE layer;
- `MoE`: the layer, a drop-in replacement for a block's FFN (`llm_course.transformer`
  builds it when `TransformerConfig.n_experts > 0`).

Shapes: N tokens (B T flattened), C = d_model, F = d_ff (the hidden size of each expert),
E = n_experts, k = experts per token.

Left out: expert parallelism (experts on different devices, exchanging tokens all-to-all),
the router z-loss (ST-MoE), router noise / jitter, shared experts (DeepSeekMoE), expert-choice
routing, and grouped matrix-product kernels (the experts here run one after the other).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from llm_course.ffn import make_ffn


def router_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the experts (last dimension), computed in float32 whatever the logits' dtype."""
    return torch.softmax(logits.float(), dim=-1)


def top_k_routing(logits: torch.Tensor, k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most probable experts of each token and their weights.

    logits (..., E) -> weights (..., k) in float32 and indices (..., k) int64, best expert
    first. With `renormalize` (Mixtral) the k probabilities are divided by their sum, so a
    token's weights add up to 1; without it they are the softmax probabilities themselves
    (Switch Transformer, k = 1: the router then learns from the gate's value).
    """
    probs = router_probs(logits)  # (..., E)
    weights, indices = torch.topk(probs, k, dim=-1)  # (..., k) each, sorted
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


def _count(ids: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of 0 .. n-1 occurs in `ids` (int64, (n,)): `bincount` with a size fixed in advance,
    which `torch.compile` can trace (bincount's output size depends on the values)."""
    return torch.zeros(n, dtype=torch.long, device=ids.device).scatter_add_(0, ids, torch.ones_like(ids))


def load_balancing_loss(router_logits: torch.Tensor, k: int, n_experts: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss, E * sum_i f_i P_i, over the N tokens of `router_logits`.

    router_logits (..., E): leading dimensions are tokens (N in all). For each expert i,
      f_i = (number of tokens that have i among their top k) / N      (sums to k)
      P_i = mean over tokens of softmax(logits)_i                       (sums to 1)
    f_i is a count and has no gradient; P_i carries the gradient to the router. Perfectly
    balanced routing (f_i = k / E, P_i = 1 / E) gives k; routing every token to the same k
    experts with certainty gives E. As in Hugging Face's `load_balancing_loss_func`, f_i
    counts all k choices (Switch, with k = 1, counts the one); its result for a tuple of
    layers equals this function on the layers' logits concatenated along the tokens.
    """
    probs = router_probs(router_logits).reshape(-1, n_experts)  # (N, E)
    _, indices = torch.topk(probs, k, dim=-1)  # (N, k)
    counts = _count(indices.flatten(), n_experts)  # (E,) assignments per expert
    f = counts.float() / probs.shape[0]  # (E,)
    p = probs.mean(dim=0)  # (E,)
    return n_experts * (f * p).sum()


def expert_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """The most assignments one expert accepts from a batch: ceil(capacity_factor * k * N / E).

    k N / E is an expert's share if the router spread the N tokens' k choices evenly; the
    capacity factor is the headroom above it (1.0: none; Switch Transformer trained with
    1.0 to 1.25). Assignments beyond an expert's capacity are dropped.
    """
    return math.ceil(capacity_factor * k * n_tokens / n_experts)


def expert_positions(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Each assignment's place in its expert's queue, counting from 0: indices (N, k) -> (N, k).

    The queue is filled by rank, as in GShard: first every token's first choice in token
    order, then every token's second choice, and so on. A token's best expert is served
    before any token's second-best.
    """
    n_tokens, k = indices.shape
    by_rank = indices.t().reshape(-1)  # (k N,): all first choices, then all second choices, ...
    one_hot = F.one_hot(by_rank, n_experts)  # (k N, E)
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # (k N,) place in the chosen expert's queue
    return position.view(k, n_tokens).t()  # (N, k)


def capacity_keep(indices: torch.Tensor, n_experts: int, capacity: int | None) -> torch.Tensor:
    """Which assignments fit in their expert's capacity: indices (N, k) -> bool (N, k).

    `capacity=None` keeps them all (Mixtral drops nothing).
    """
    if capacity is None:
        return torch.ones_like(indices, dtype=torch.bool)
    return expert_positions(indices, n_experts) < capacity


def dispatch(
    x: torch.Tensor, indices: torch.Tensor, n_experts: int, keep: torch.Tensor | None = None
) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Group the tokens by expert.

    x (N, C), indices (N, k), keep (N, k) bool or None (keep all) -> for each expert e,
    its input rows (N_e, C), and where they came from: (token ids (N_e,), choice ids (N_e,)),
    choice j meaning the token's j-th expert. A token whose k choices include e is sent to
    e once; dropped assignments are sent nowhere.

    One stable sort of the N k assignments by expert puts each expert's in token order;
    the group sizes are then read once (a single host read, instead of one `nonzero`, and
    one wait for the device, per expert).
    """
    k = indices.shape[-1]
    expert = indices.reshape(-1)  # (N k,) assignment a is token a // k, choice a % k
    if keep is not None:
        expert = torch.where(keep.reshape(-1), expert, n_experts)  # dropped: a last group, never used
    order = torch.argsort(expert, stable=True)  # (N k,) grouped by expert, token order within a group
    sizes = _count(expert, n_experts + 1)[:n_experts].tolist()  # (E,) N_e: the one host read
    order = order[: sum(sizes)]  # the kept assignments
    token, choice = order // k, order % k  # (sum N_e,) each
    inputs = list(x[token].split(sizes))  # (N_e, C) each
    routes = list(zip(token.split(sizes), choice.split(sizes)))
    return inputs, routes


def combine(
    expert_outputs: list[torch.Tensor],
    routes: list[tuple[torch.Tensor, torch.Tensor]],
    weights: torch.Tensor,
    n_tokens: int,
) -> torch.Tensor:
    """Add each expert's outputs back to their tokens, weighted: y_t = sum_j w_tj expert_{i_tj}(x_t).

    expert_outputs[e] (N_e, C) and routes[e] as returned by `dispatch`; weights (N, k)
    -> (N, C) in the experts' dtype. A token whose assignments were all dropped gets 0
    (the block's residual connection carries it on unchanged).
    """
    out = expert_outputs[0].new_zeros(n_tokens, expert_outputs[0].shape[-1])  # (N, C)
    for y, (token, choice) in zip(expert_outputs, routes):
        weighted = y * weights[token, choice].unsqueeze(-1)  # (N_e, C), in float32 if the weights are
        out.index_add_(0, token, weighted.to(out.dtype))
    return out


def ffn_flops_per_token(d_model: int, d_ff: int, activation: str = "swiglu") -> int:
    """Forward FLOPs of one token through a dense FFN, counting its matrix products only.

    A (F x C) matrix times a vector is C F multiply-adds, 2 C F FLOPs: two matrices for
    ReLU/GELU, three for SwiGLU. The activation and the biases (O(F) per token) are left out.
    """
    n_matrices = 3 if activation == "swiglu" else 2
    return 2 * n_matrices * d_model * d_ff


def moe_flops_per_token(d_model: int, d_ff: int, n_experts: int, k: int, activation: str = "swiglu") -> int:
    """Forward FLOPs of one token through an MoE layer (matrix products only): the router's
    2 C E plus k experts' FFNs. The other E - k experts cost this token nothing."""
    return 2 * d_model * n_experts + k * ffn_flops_per_token(d_model, d_ff, activation)


class MoE(nn.Module):
    """A mixture-of-experts FFN: (B, T, C) -> (B, T, C), a drop-in replacement for a block's FFN.

    A linear router (no bias) scores the E experts for every token; each token goes to its
    `k` best (`top_k_routing`, renormalized), and its output is the weighted sum of their
    outputs. The experts are ordinary FFNs (`make_ffn`: SwiGLU by default, as in Mixtral),
    each with hidden size `d_ff`. With a `capacity_factor`, an expert takes at most
    `expert_capacity(N, E, k, capacity_factor)` of the N tokens of a call, and the
    assignments beyond that are dropped (`capacity_keep`); with None nothing is dropped.

    `forward` returns only the output, like any FFN. What the router did in the latest call
    is kept in three attributes (None before the first call), for training and measuring:
      router_logits  (N, E)  the router's logits, N = B T (with their autograd graph)
      aux_loss       ()      `load_balancing_loss(router_logits, k, E)`, to add to the
                             training loss (times a small coefficient)
      n_dropped      ()      int64 count of (token, expert) assignments dropped for capacity
    `llm_course.transformer.moe_aux_loss(model)` collects `aux_loss` from every block.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int,
        k: int = 2,
        activation: str = "swiglu",
        bias: bool = False,
        dropout: float = 0.0,
        capacity_factor: float | None = None,
    ):
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"k (experts per token) must be between 1 and n_experts = {n_experts}, got {k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive or None, got {capacity_factor}")
        self.n_experts, self.k, self.capacity_factor = n_experts, k, capacity_factor
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(make_ffn(d_model, d_ff, activation, bias=bias, dropout=dropout)
                                     for _ in range(n_experts))  # fmt: skip
        self.router_logits: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None
        self.n_dropped: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        n_tokens = x.shape[0]
        logits = self.router(x)  # (N, E)
        weights, indices = top_k_routing(logits, self.k)  # (N, k) each
        capacity = None
        if self.capacity_factor is not None:
            capacity = expert_capacity(n_tokens, self.n_experts, self.k, self.capacity_factor)
        keep = capacity_keep(indices, self.n_experts, capacity)  # (N, k)
        inputs, routes = dispatch(x, indices, self.n_experts, keep)
        outputs = [expert(h) for expert, h in zip(self.experts, inputs)]  # (N_e, C) each
        y = combine(outputs, routes, weights, n_tokens)  # (N, C)
        self.router_logits = logits
        self.aux_loss = load_balancing_loss(logits, self.k, self.n_experts)
        self.n_dropped = (~keep).sum()
        return y.view(shape)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, k={self.k}, capacity_factor={self.capacity_factor}"
