"""Rotary position embedding, RoPE (chapter 03).

Implements Su et al. (2021), "RoFormer: Enhanced Transformer with Rotary Position
Embedding". RoPE splits every query and key vector (d_head = D values) into D/2 pairs and
rotates pair i by the angle m * w_i, where m is the token's position and
w_i = base ** (-2i / D) (`llm_course.embeddings.inverse_frequencies`). Because rotations
compose, <R(m) q, R(n) k> = <q, R(n - m) k>: attention scores depend on positions only
through the offset m - n (`rope_score` shows it).

Two layouts pair the D values differently:
- **half layout** (used here, and by Hugging Face's Llama, GPT-NeoX and most converted
  checkpoints): value i is paired with value i + D/2, and the rotation is written
  x * cos + rotate_half(x) * sin with rotate_half(x) = (-x[D/2:], x[:D/2]);
- **interleaved layout** (the RoFormer paper and Meta's original Llama code, which uses
  complex numbers): value 2i is paired with value 2i + 1 (`apply_rope_interleaved`).

They are the same operation up to a fixed permutation of the D values of each head. A
model trained in one layout runs in the other once the rows of its q and k projections are
permuted head by head (`permute_interleaved_to_half`); this is what Hugging Face's Llama
conversion script does, and the reason its q_proj/k_proj differ from Meta's wq/wk.

Left out: RoPE scaling for long contexts (linear, NTK, YaRN, Llama 3's frequency bands) and
partial rotary dimensions (GPT-NeoX rotates only part of each head).
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course.embeddings import inverse_frequencies


def rope_cache(
    d_head: int,
    max_seq_len: int,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles m * w_i for m < max_seq_len, each (max_seq_len, d_head).

    Half layout: column j and column j + D/2 hold the same angle (the pair they rotate).
    Angles are computed in float32 (as Hugging Face does; float64 if `dtype` is float64)
    and then cast to `dtype`.
    """
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    freqs = inverse_frequencies(d_head, base, device, compute_dtype)  # (D/2,)
    positions = torch.arange(max_seq_len, device=device, dtype=compute_dtype)  # (T,)
    angles = torch.outer(positions, freqs)  # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a 90-degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _angles_for(
    cos: torch.Tensor, sin: torch.Tensor, seq_len: int, positions: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of the cache for the given positions, shaped to broadcast over (B, H, T, D)."""
    if positions is None:
        if seq_len > cos.shape[0]:
            raise ValueError(f"sequence length {seq_len} exceeds the RoPE cache length {cos.shape[0]}")
        cos, sin = cos[:seq_len], sin[:seq_len]  # (T, D)
    else:
        cos, sin = cos[positions], sin[positions]  # (T, D) or (B, T, D)
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D): same angle for every head
    return cos.to(dtype), sin.to(dtype)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate queries or keys x (B, H, T, D) by their positions (half layout).

    `cos`, `sin` come from `rope_cache`. `positions` is None (the tokens sit at 0 .. T-1),
    a LongTensor (T,) shared by the batch, or (B, T), one row per sequence. The rotation is
    computed in at least float32 (bf16 queries are rounded once, at the end, not at each
    product) and returned in x's dtype.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    cos, sin = _angles_for(cos, sin, x.shape[-2], positions, dtype)
    x32 = x.to(dtype)
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)  # (B, H, T, D)


def apply_rope_interleaved(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The same rotation in the interleaved layout (RoFormer, Meta): pairs (x[2i], x[2i+1]).

    Takes the same `rope_cache` tables (only their first D/2 columns, one angle per pair).
    """
    cos, sin = _angles_for(cos, sin, x.shape[-2], positions, x.dtype)
    half = x.shape[-1] // 2
    cos, sin = cos[..., :half], sin[..., :half]  # (..., T, D/2)
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (B, H, T, D/2, 2)
    return rotated.flatten(-2)  # (B, H, T, D)


def interleaved_to_half_order(d_head: int) -> torch.Tensor:
    """The permutation p with x_half = x_interleaved[..., p]: (0, 2, 4, ..., 1, 3, 5, ...).

    It satisfies apply_rope(x[..., p]) == apply_rope_interleaved(x)[..., p].
    """
    return torch.cat((torch.arange(0, d_head, 2), torch.arange(1, d_head, 2)))


def permute_interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection weight (n_heads * D, d_model) head by head.

    A projection trained with interleaved RoPE gives the same attention scores under
    half-layout RoPE after this permutation (scores are dot products, which do not care
    in which order the D values of a head are listed, as long as q and k agree).
    """
    d_head = weight.shape[0] // n_heads
    order = interleaved_to_half_order(d_head).to(weight.device)
    per_head = weight.reshape(n_heads, d_head, -1)  # (H, D, C)
    return per_head[:, order].reshape(weight.shape)  # (H * D, C)


def rope_score(q: torch.Tensor, k: torch.Tensor, m: int, n: int, base: float = 10000.0) -> torch.Tensor:
    """<RoPE(q, m), RoPE(k, n)> for vectors q, k (..., D) placed at positions m and n.

    The relative-position property: the result depends on m - n only, e.g.
    rope_score(q, k, 7, 3) == rope_score(q, k, 104, 100) up to rounding.
    """
    d_head = q.shape[-1]
    cos, sin = rope_cache(d_head, max(m, n) + 1, base, device=q.device, dtype=torch.float64)
    q_m = apply_rope(q.double()[..., None, :], cos, sin, torch.tensor([m], device=q.device))  # (..., 1, D)
    k_n = apply_rope(k.double()[..., None, :], cos, sin, torch.tensor([n], device=q.device))  # (..., 1, D)
    return (q_m * k_n).sum(-1).squeeze(-1)


class RotaryEmbedding(nn.Module):
    """RoPE with its cos/sin tables kept as buffers (constants, not saved in checkpoints).

    One instance is shared by every attention layer of a model. forward(x (B, H, T, D),
    positions) -> the rotated x. The tables stay float32 when the model is cast
    (`model.to(torch.bfloat16)`): in bf16, cos and sin of large angles keep only 3 digits.
    """

    def __init__(self, d_head: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        self.d_head = d_head
        self.max_seq_len = max_seq_len
        self.base = base
        cos, sin = rope_cache(d_head, max_seq_len, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _apply(self, fn, recurse=True):
        # Module.to/.half/.cuda pass every floating buffer through `fn`, casts included. Keep
        # the device it chose, and recompute the tables there in float32 (the same values).
        super()._apply(fn, recurse)
        self.cos, self.sin = rope_cache(self.d_head, self.max_seq_len, self.base, device=self.cos.device)
        return self

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return apply_rope(x, self.cos, self.sin, positions)

    def extra_repr(self) -> str:
        return f"d_head={self.d_head}, max_seq_len={self.max_seq_len}, base={self.base}"
