"""Scaled dot-product attention and multi-head attention (chapter 04).

Implements Vaswani et al. (2017), "Attention Is All You Need", §3.2:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + mask) V

as the pure functions `attention_weights` and `scaled_dot_product_attention`, and
`MultiHeadAttention`, which projects x into H heads of queries and H_kv heads of keys and
values. H_kv = H is multi-head attention, 1 < H_kv < H grouped-query attention (Ainslie et
al., 2023, "GQA"), H_kv = 1 multi-query attention (Shazeer, 2019); each group of H / H_kv
query heads shares one key/value head (`repeat_kv`). `multi_head_attention` is the same
computation as a pure function of explicit weight matrices.

Conventions
- Shapes: q (B, H, Tq, D), k and v (B, H_kv, Tk, D); the output is (B, H, Tq, D).
- A boolean mask means True = "this query may attend to this key" (the convention of
  `torch.nn.functional.scaled_dot_product_attention`). A float mask is added to the scores
  (0 = keep, -inf = drop). Masks broadcast to (B, H, Tq, Tk).
- `causal=True` lets query i see keys 0 .. Tk - Tq + i: the Tq queries are the *last* Tq
  positions of the Tk keys, which is what decoding with a KV cache needs. (PyTorch's
  `is_causal` aligns the mask top-left instead; the two agree only when Tq == Tk.)
- A query that may attend to no key at all gets an output of zeros, never NaN.

The switch `use_fused` of `MultiHeadAttention` calls PyTorch's fused kernel instead of the
course's function; the tests check they agree. The KV cache of chapter 09 plugs into this
same module: `forward(..., cache=...)` stores the new keys and values between projection and
attention (`llm_course.kv_cache`). Left out: cross-attention,
sliding windows, attention sinks, and FlashAttention's tiling (the fused kernel does that).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from einops import rearrange, repeat
from torch import nn
from torch.nn import functional as F

from llm_course.rope import RotaryEmbedding
from llm_course.utils import check_generator

if TYPE_CHECKING:
    from llm_course.kv_cache import LayerKVCache


def causal_mask(
    q_len: int, k_len: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean (Tq, Tk), True where query i may attend to key j, i.e. j <= Tk - Tq + i.

    With Tq == Tk this is the lower triangle; with fewer queries than keys the queries are
    taken to be the last Tq positions.
    """
    k_len = q_len if k_len is None else k_len
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * n_rep, T, D): query head h uses key/value head h // n_rep."""
    if n_rep == 1:
        return x
    return repeat(x, "b h t d -> b (h r) t d", r=n_rep)  # (B, H, T, D)


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask): (B, H, Tq, Tk), each row sums to 1 (or is all zeros).

    `scale` defaults to 1 / sqrt(D): it keeps the scores' variance near 1 for unit-variance
    q and k, so the softmax does not saturate into a one-hot (and its gradient into zero).
    k may have fewer heads than q (grouped-query attention). The softmax runs in float32 at least
    (in float64 for float64 inputs).
    """
    if q.shape[-3] % k.shape[-3] != 0:
        raise ValueError(f"the {q.shape[-3]} query heads must be a multiple of the {k.shape[-3]} key heads")
    k = repeat_kv(k, q.shape[-3] // k.shape[-3])  # (B, H, Tk, D)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], device=q.device), float("-inf"))
    if mask is None and q.shape[-2] <= k.shape[-2]:
        # No mask, or only the causal one: every query sees at least key 0.
        return torch.softmax(scores, dim=-1, dtype=_softmax_dtype(scores)).to(q.dtype)
    # A row where every key is masked would be softmax(-inf, ..., -inf) = 0/0 = NaN.
    # Give such rows finite scores for the softmax, then zero their weights.
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (B, H, Tq, 1)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1, dtype=_softmax_dtype(scores))
    return weights.masked_fill(empty, 0.0).to(q.dtype)


def _softmax_dtype(scores: torch.Tensor) -> torch.dtype:
    """float32 for half-precision scores (exp of bf16 is coarse), else their own dtype (float64 stays float64)."""
    return torch.promote_types(scores.dtype, torch.float32)


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each entry with probability p and scale the rest by 1 / (1 - p) (inverted dropout).

    Draws from `generator` (which must live on x's device) or, if None, from torch's global one.
    """
    if p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    check_generator(generator, x, "the tensor to drop out")
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v, the course's own attention.

    q (B, H, Tq, D); k, v (B, H_kv, Tk, D) with H_kv dividing H; returns (B, H, Tq, D).
    `mask`: boolean (True = may attend) or additive float, broadcastable to (B, H, Tq, Tk).
    `causal`: queries are the last Tq positions (see the module docstring).
    `dropout_p`: dropout on the attention weights, drawn from `generator`.
    Equal to `torch.nn.functional.scaled_dot_product_attention` with the same arguments
    (for Tq == Tk; otherwise pass it `causal_mask(Tq, Tk)` instead of `is_causal`).
    """
    weights = attention_weights(q, k, mask=mask, causal=causal, scale=scale)  # (B, H, Tq, Tk)
    weights = dropout(weights, dropout_p, generator)
    v = repeat_kv(v, q.shape[-3] // v.shape[-3])  # (B, H, Tk, D)
    return weights @ v  # (B, H, Tq, D)


def attention_flops(seq_len: int, d_model: int, n_heads: int, n_kv_heads: int | None = None) -> dict[str, int]:
    """Forward FLOPs of one attention layer on one sequence (a multiply-add counts as 2).

    projections: q, k, v and output,   2 T C (C + 2 C_kv + C)  -- linear in T
    scores:      q k^T for every head,  2 T^2 C                  -- quadratic in T
    weighted_sum: weights @ v,          2 T^2 C                  -- quadratic in T
    (C_kv = n_kv_heads * d_head.) The softmax and scaling, O(H T^2), are left out; so is
    the saving a causal kernel can make by skipping the masked half.
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    d_kv = d_model // n_heads * n_kv_heads
    flops = {
        "projections": 2 * seq_len * d_model * (2 * d_model + 2 * d_kv),
        "scores": 2 * seq_len * seq_len * d_model,
        "weighted_sum": 2 * seq_len * seq_len * d_model,
    }
    flops["total"] = sum(flops.values())
    return flops


def multi_head_attention(
    x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, n_heads: int
) -> torch.Tensor:
    """Causal multi-head self-attention with explicit weights: x (B, T, C) -> (B, T, C).

    The weights are laid out like `nn.Linear.weight`, (out, in), so q = x @ w_q.T:
    w_q (H D, C), w_k and w_v (H_kv D, C), w_o (C, H D), with D = rows of w_q / H. The number
    of key/value heads is read from w_k: H_kv < H is grouped-query attention. The pure-function
    form of `MultiHeadAttention` with bias=False, no RoPE and no dropout (the tests check it).
    """
    if w_q.shape[0] % n_heads != 0:
        raise ValueError(f"w_q has {w_q.shape[0]} rows, not a multiple of n_heads ({n_heads})")
    d_head = w_q.shape[0] // n_heads
    n_kv_heads = w_k.shape[0] // d_head
    q = rearrange(x @ w_q.T, "b t (h d) -> b h t d", h=n_heads)  # (B, H, T, D)
    k = rearrange(x @ w_k.T, "b t (h d) -> b h t d", h=n_kv_heads)  # (B, H_kv, T, D)
    v = rearrange(x @ w_v.T, "b t (h d) -> b h t d", h=n_kv_heads)  # (B, H_kv, T, D)
    out = scaled_dot_product_attention(q, k, v, causal=True)  # (B, H, T, D)
    return rearrange(out, "b h t d -> b t (h d)") @ w_o.T  # (B, T, C)


class MultiHeadAttention(nn.Module):
    """Multi-head (or grouped-/multi-query) self-attention: x (B, T, C) -> (B, T, C).

    Parameters: w_q (C -> H D), w_k and w_v (C -> H_kv D), w_o (H D -> C), with D = C / H.
    `rope`, if given, rotates queries and keys by their positions (one `RotaryEmbedding`
    is shared by all layers of a model). `use_fused` switches between the course's
    `scaled_dot_product_attention` and PyTorch's fused kernel; attention dropout draws from
    torch's global generator on both paths.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        use_fused: bool = False,
        rope: RotaryEmbedding | None = None,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_heads ({n_heads}) must be divisible by n_kv_heads ({n_kv_heads})")
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.d_head = d_model // n_heads
        if rope is not None and rope.d_head != self.d_head:
            raise ValueError(f"rope was built for d_head={rope.d_head}, but this layer has d_head={self.d_head}")
        self.dropout_p = dropout
        self.use_fused = use_fused
        self.rope = rope
        self.w_q = nn.Linear(d_model, n_heads * self.d_head, bias=bias)
        self.w_k = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.w_v = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.w_o = nn.Linear(n_heads * self.d_head, d_model, bias=bias)
        self.residual_dropout = nn.Dropout(dropout)

    def project(
        self, x: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values for x (B, T, C), RoPE applied: (B, H, T, D), (B, H_kv, T, D) x 2."""
        q = rearrange(self.w_q(x), "b t (h d) -> b h t d", h=self.n_heads)  # (B, H, T, D)
        k = rearrange(self.w_k(x), "b t (h d) -> b h t d", h=self.n_kv_heads)  # (B, H_kv, T, D)
        v = rearrange(self.w_v(x), "b t (h d) -> b h t d", h=self.n_kv_heads)  # (B, H_kv, T, D)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
    ) -> torch.Tensor:
        """Attention of q (B, H, Tq, D) over k, v (B, H_kv, Tk, D) -> (B, H, Tq, D)."""
        dropout_p = self.dropout_p if self.training else 0.0
        if not self.use_fused:
            return scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, dropout_p=dropout_p)
        q_len, k_len = q.shape[-2], k.shape[-2]
        if causal and (mask is not None or q_len != k_len):
            # PyTorch's is_causal cannot be combined with a mask and aligns top-left: build it.
            allowed = causal_mask(q_len, k_len, device=q.device)  # (Tq, Tk)
            if mask is None:
                mask = allowed
            elif mask.dtype == torch.bool:
                mask = mask & allowed
            else:
                mask = mask.masked_fill(~allowed, float("-inf"))
            causal = False
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )  # fmt: skip

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = True,
        cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C).

        `positions` (T,) or (B, T): the tokens' positions for RoPE (default 0 .. T-1).
        `mask`: extra boolean/float mask broadcastable to (B, H, T, T), e.g. padding;
        `causal`: each token sees only itself and earlier tokens.
        `cache`: this layer's `llm_course.kv_cache.LayerKVCache` (chapter 09): x holds only the
        new tokens; their keys and values are appended to the cache and the queries attend to
        every cached token (`positions` must then say where the new tokens sit).
        """
        q, k, v = self.project(x, positions)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H_kv, T_cached, D): the past tokens' keys and values too
            rows = cache.mask()  # None, or (B, 1, T, T_cached) when rows hold different numbers of tokens
            if rows is not None and mask is None:
                mask = rows
            elif rows is not None:
                mask = mask & rows if mask.dtype == torch.bool else mask.masked_fill(~rows, float("-inf"))
        out = self.attend(q, k, v, mask, causal)  # (B, H, T, D)
        out = rearrange(out, "b h t d -> b t (h d)")  # (B, T, C)
        return self.residual_dropout(self.w_o(out))

    def extra_repr(self) -> str:
        heads = f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, d_head={self.d_head}"
        return f"{heads}, use_fused={self.use_fused}"
