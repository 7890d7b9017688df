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

Scaling for contexts longer than the trained one (`RopeScaling`, `scaled_inverse_frequencies`):
- **linear**, position interpolation (Chen et al., 2023, "Extending Context Window of Large
  Language Models via Positional Interpolation"): every frequency divided by the factor s,
  so position m of a long sequence gets the angle of position m / s, inside the trained range;
- **ntk**, "NTK-aware" scaling (bloc97, 2023; Peng et al., 2023, §3.2): the base raised to
  base * s ** (D / (D - 2)), which leaves the fastest pair as it is and slows the slowest one
  by exactly s; Hugging Face's "dynamic" variant picks s from the current length;
- **yarn** (Peng et al., 2023, "YaRN"): pairs that turn many times within the trained length
  keep their frequency, pairs that turn less than once are interpolated, a linear ramp in
  between, and the scores are sharpened by (0.1 ln s + 1)^2.
The tests compare them with Hugging Face's `modeling_rope_utils`.

Left out: Llama 3's frequency bands, LongRoPE's searched factors, and partial rotary
dimensions (GPT-NeoX rotates only part of each head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llm_course.embeddings import inverse_frequencies


ROPE_SCALINGS = ("none", "linear", "ntk", "yarn")


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE's angles are stretched to run a model on sequences longer than it was trained on."""

    kind: str = "none"  # "none", "linear" (position interpolation), "ntk" (NTK-aware base), "yarn"
    factor: float = 1.0  # s: the new context over the trained one (1 changes nothing)
    original_context: int | None = None  # L: the trained context length; YaRN's ramp needs it
    beta_fast: float = 32.0  # YaRN: pairs turning more than this many times in L keep their frequency
    beta_slow: float = 1.0  # YaRN: pairs turning fewer times than this in L are fully interpolated

    def __post_init__(self):
        if self.kind not in ROPE_SCALINGS:
            raise ValueError(f"RoPE scaling must be one of {ROPE_SCALINGS}, got {self.kind!r}")
        if not self.factor >= 1.0:
            raise ValueError(f"the RoPE scaling factor must be at least 1 (a longer context), got {self.factor}")
        if self.kind == "yarn" and (self.original_context is None or self.original_context < 1):
            raise ValueError(f"YaRN needs original_context, the trained length, got {self.original_context}")
        if not 0 < self.beta_slow < self.beta_fast:
            raise ValueError(f"YaRN needs 0 < beta_slow < beta_fast, got {self.beta_slow} and {self.beta_fast}")


def ntk_scaled_base(base: float, factor: float, dim: int) -> float:
    """The NTK-aware base: base * s ** (D / (D - 2)).

    With w_i = base' ** (-2i / D) the fastest pair (i = 0) keeps w_0 = 1 and the slowest
    (i = D/2 - 1) becomes exactly s times slower: high frequencies, which tell neighbours
    apart, are untouched; low ones are interpolated. The exponent solves
    base' ** ((D - 2) / D) = s * base ** ((D - 2) / D).
    """
    if dim <= 2:
        raise ValueError(f"NTK scaling needs d_head > 2, got {dim}")
    return base * factor ** (dim / (dim - 2))


def yarn_ramp(
    dim: int, base: float, original_context: int, beta_fast: float = 32.0, beta_slow: float = 1.0
) -> torch.Tensor:
    """YaRN's interpolation weight per pair, (D/2,): 0 keeps the frequency, 1 divides it by s.

    Pair i turns r_i = L / (2 pi base ** (2i / D)) times over the trained length L. Pairs
    with r_i > beta_fast get 0, pairs with r_i < beta_slow get 1, and a linear ramp in the
    pair index lies between (the index of a given r is D ln(L / (2 pi r)) / (2 ln base),
    rounded outwards, as in the YaRN code and Hugging Face's).
    """

    def index_of(rotations: float) -> float:
        return dim * math.log(original_context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(index_of(beta_fast)), 0)
    high = min(math.ceil(index_of(beta_slow)), dim - 1)
    if high == low:
        high += 0.001  # a single step instead of a ramp, without dividing by zero
    ramp = (torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)  # (D/2,)
    return ramp.clamp(0.0, 1.0)


def yarn_attention_factor(factor: float) -> float:
    """YaRN's temperature: cos and sin are multiplied by 0.1 ln s + 1 (1 for s <= 1), so every
    score q.k grows by its square; longer contexts spread attention thinner, this sharpens it."""
    return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


def scaled_inverse_frequencies(
    d_head: int,
    base: float = 10000.0,
    scaling: RopeScaling | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    """(w (D/2,), attention factor): RoPE's frequencies after `scaling`, and the factor cos
    and sin are multiplied by (1 except for YaRN).

    none:   w_i = base ** (-2i / D)
    linear: w_i / s                      (position m gets the angle of m / s)
    ntk:    base' ** (-2i / D) with base' = `ntk_scaled_base(base, s, D)`
    yarn:   (1 - r_i) w_i + r_i w_i / s  with r_i = `yarn_ramp(...)`
    """
    scaling = RopeScaling() if scaling is None else scaling
    s = scaling.factor
    if scaling.kind == "ntk":
        return inverse_frequencies(d_head, ntk_scaled_base(base, s, d_head), device, dtype), 1.0
    freqs = inverse_frequencies(d_head, base, device, dtype)  # (D/2,)
    if scaling.kind == "linear":
        return freqs / s, 1.0
    if scaling.kind == "yarn":
        ramp = yarn_ramp(d_head, base, scaling.original_context, scaling.beta_fast, scaling.beta_slow)
        ramp = ramp.to(device=freqs.device, dtype=dtype)
        return freqs * (1 - ramp) + freqs / s * ramp, yarn_attention_factor(s)
    return freqs, 1.0


def rope_cache(
    d_head: int,
    max_seq_len: int,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    scaling: RopeScaling | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles m * w_i for m < max_seq_len, each (max_seq_len, d_head).

    Half layout: column j and column j + D/2 hold the same angle (the pair they rotate).
    Angles are computed in float32 (as Hugging Face does; float64 if `dtype` is float64)
    and then cast to `dtype`. `scaling` stretches the frequencies for longer contexts
    (`scaled_inverse_frequencies`; YaRN also multiplies cos and sin by its attention factor).
    """
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    freqs, attention_factor = scaled_inverse_frequencies(d_head, base, scaling, device, compute_dtype)  # (D/2,)
    positions = torch.arange(max_seq_len, device=device, dtype=compute_dtype)  # (T,)
    angles = torch.outer(positions, freqs)  # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return (angles.cos() * attention_factor).to(dtype), (angles.sin() * attention_factor).to(dtype)


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

    def __init__(self, d_head: int, max_seq_len: int, base: float = 10000.0, scaling: RopeScaling | None = None):
        super().__init__()
        self.d_head = d_head
        self.max_seq_len = max_seq_len
        self.base = base
        self.scaling = RopeScaling() if scaling is None else scaling
        cos, sin = rope_cache(d_head, max_seq_len, base, scaling=self.scaling)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _apply(self, fn, recurse=True):
        # Module.to/.half/.cuda pass every floating buffer through `fn`, casts included. Keep
        # the device it chose, and recompute the tables there in float32 (the same values).
        super()._apply(fn, recurse)
        self.cos, self.sin = rope_cache(
            self.d_head, self.max_seq_len, self.base, device=self.cos.device, scaling=self.scaling
        )
        return self

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return apply_rope(x, self.cos, self.sin, positions)

    def extra_repr(self) -> str:
        scaled = "" if self.scaling.kind == "none" else f", scaling={self.scaling.kind}, factor={self.scaling.factor}"
        return f"d_head={self.d_head}, max_seq_len={self.max_seq_len}, base={self.base}{scaled}"
