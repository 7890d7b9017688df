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
attention (`llm_course.kv_cache`).

Two options of `MultiHeadAttention` shape what a query may see, for long contexts:
- `window`: sliding-window attention (Child et al., 2019; Beltagy et al., 2020; Mistral 7B),
  each query sees only the `window` most recent keys, itself included (`sliding_window_mask`);
- `alibi`: ALiBi (Press et al., 2022, "Train Short, Test Long"), no position embedding at all,
  but a bias -m_h * (i - j) added to the score of query i and key j, with one slope m_h per
  head from a geometric sequence (`alibi_slopes`, `alibi_bias`).

Left out: cross-attention, attention sinks, and FlashAttention's tiling (the fused kernel
does that).
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


def token_distances(q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """How far back each key is from each query: q_pos[i] - k_pos[j], (..., Tq, Tk).

    Positions are (T,) or (B, T); a negative distance is a key after the query.
    """
    return q_positions[..., :, None] - k_positions[..., None, :]


def last_positions(
    q_len: int, k_len: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions (Tq,), (Tk,) when the Tq queries are the last Tq of the Tk keys (as `causal_mask`)."""
    return torch.arange(k_len - q_len, k_len, device=device), torch.arange(k_len, device=device)


def window_allows(distance: torch.Tensor, window: int) -> torch.Tensor:
    """True where a key is among the `window` most recent ones: 0 <= distance < window."""
    if window < 1:
        raise ValueError(f"the attention window must hold at least one key (the query's own), got {window}")
    return (distance >= 0) & (distance < window)


def sliding_window_mask(
    q_len: int, k_len: int | None = None, window: int = 1, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean (Tq, Tk), True where query i may attend to key j: 0 <= (Tk - Tq + i) - j < window.

    The causal mask cut to the `window` most recent keys, the query's own included. Stacked
    layers still pass information further: after L layers a token can depend on tokens up to
    L (window - 1) positions back (Mistral's argument for its 4096-token window).
    """
    k_len = q_len if k_len is None else k_len
    return window_allows(token_distances(*last_positions(q_len, k_len, device)), window)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes m_h, (H,) float32.

    For H a power of two: the geometric sequence 2^(-8/H), 2^(-16/H), ..., 2^(-8) (for 8 heads
    1/2, 1/4, ..., 1/256). Otherwise, as in the paper's code: the slopes of the largest power
    of two P < H, then every other slope of the sequence for 2P, until there are H.
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be at least 1, got {n_heads}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (k + 1) / n) for k in range(n)]

    power = 2 ** math.floor(math.log2(n_heads))
    slopes = geometric(power) + geometric(2 * power)[0::2][: n_heads - power]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_from_distances(slopes: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """-m_h * |distance| for every head: slopes (H,), distance (..., Tq, Tk) -> (..., H, Tq, Tk) float32."""
    slopes = slopes.to(device=distance.device, dtype=torch.float32)[:, None, None]  # (H, 1, 1)
    return slopes * (-distance.abs()).unsqueeze(-3).to(torch.float32)  # negated as integers: no -0.0


def alibi_bias(
    slopes: torch.Tensor, q_len: int, k_len: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """ALiBi's additive bias (H, Tq, Tk): -m_h * |(Tk - Tq + i) - j| for head h, query i, key j.

    Queries are the last Tq positions, as for `causal_mask`. A key d tokens back costs the
    score m_h d: steep heads look locally, shallow heads far. Keys after the query (masked
    in causal attention) get the same penalty by their distance.
    """
    k_len = q_len if k_len is None else k_len
    device = slopes.device if device is None else device
    return alibi_from_distances(slopes, token_distances(*last_positions(q_len, k_len, device)))


def combine_masks(mask: torch.Tensor | None, other: torch.Tensor | None) -> torch.Tensor | None:
    """One mask that allows what both allow: boolean & boolean, float + float, a boolean
    turned into -inf on a float. Either may be None; shapes broadcast."""
    if mask is None or other is None:
        return other if mask is None else mask
    if mask.dtype == torch.bool and other.dtype == torch.bool:
        return mask & other
    if mask.dtype == torch.bool:
        mask, other = other, mask
    if other.dtype == torch.bool:
        return torch.where(other, mask, torch.full((), float("-inf"), dtype=mask.dtype, device=mask.device))
    return mask + other


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
    is shared by all layers of a model). `alibi` adds ALiBi's distance bias to the scores;
    `window` lets each query see only its `window` most recent keys. `use_fused` switches between the course's
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
        alibi: bool = False,
        window: int | None = None,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if window is not None and window < 1:
            raise ValueError(f"the attention window must hold at least one key, got {window}")
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
        self.window = window
        # ALiBi's slopes are constants: a buffer follows the module's device, is not learned or saved.
        self.register_buffer("alibi_slopes", alibi_slopes(n_heads) if alibi else None, persistent=False)
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
        mask = self.position_mask(mask, q.shape[-2], k.shape[-2], q.device, positions, cached=cache is not None)
        out = self.attend(q, k, v, mask, causal)  # (B, H, T, D)
        out = rearrange(out, "b h t d -> b t (h d)")  # (B, T, C)
        return self.residual_dropout(self.w_o(out))

    def position_mask(
        self,
        mask: torch.Tensor | None,
        q_len: int,
        k_len: int,
        device: torch.device,
        positions: torch.Tensor | None = None,
        cached: bool = False,
    ) -> torch.Tensor | None:
        """`mask` combined with the sliding window and the ALiBi bias, if this layer has them.

        Distances come from the tokens' positions: `positions` (T,) or (B, T) for the queries
        (default: the last Tq of Tk); the keys sit at 0 .. Tk - 1 when `cached` (a KV cache
        stores each row's tokens from slot 0), else at the queries' own positions.
        """
        if self.window is None and self.alibi_slopes is None:
            return mask
        if positions is None:
            q_pos, k_pos = last_positions(q_len, k_len, device)
        else:
            q_pos = positions.to(device)
            k_pos = torch.arange(k_len, device=device) if cached else q_pos
        distance = token_distances(q_pos, k_pos)  # (Tq, Tk) or (B, Tq, Tk)
        if self.window is not None:
            allowed = window_allows(distance, self.window)
            mask = combine_masks(mask, allowed if allowed.dim() == 2 else allowed.unsqueeze(1))  # (B, 1, Tq, Tk)
        if self.alibi_slopes is not None:
            mask = combine_masks(mask, alibi_from_distances(self.alibi_slopes, distance))  # (..., H, Tq, Tk)
        return mask

    def extra_repr(self) -> str:
        heads = f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, d_head={self.d_head}"
        extras = ("" if self.window is None else f", window={self.window}") + (
            "" if self.alibi_slopes is None else ", alibi=True"
        )
        return f"{heads}, use_fused={self.use_fused}{extras}"
