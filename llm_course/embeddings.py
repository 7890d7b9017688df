"""Token embeddings and absolute positional encodings (chapter 03).

Implements
- the embedding lookup `E[idx]`, and `one_hot_embedding`, the same lookup written as the
  matrix product `one_hot(idx) @ E` that it is mathematically;
- `cosine_similarity`, `nearest_neighbors` and the vector-offset `analogy` (b - a + c);
- the sinusoidal encoding of Vaswani et al. (2017), "Attention Is All You Need", §3.5:
      PE[pos, 2i]   = sin(pos * w_i)      PE[pos, 2i+1] = cos(pos * w_i)
      w_i = base ** (-2i / d_model)
  and `sinusoidal_shift_matrix`, the block-diagonal rotation that turns PE[pos] into
  PE[pos + k] for every pos (the "fixed-offset linear map" the paper mentions);
- the modules `TokenEmbedding`, `LearnedPositionalEmbedding` (GPT-2's `wpe`) and
  `SinusoidalPositionalEncoding` (a constant table kept in a buffer).

Rotary embeddings (RoPE) are in `llm_course.rope`, ALiBi's distance bias in
`llm_course.attention`. Left out: T5's learned relative-position buckets, embedding scaling by
sqrt(d_model) (the original transformer; `SinusoidalPositionalEncoding` takes a `scale` for the
table instead), padding indices.

Dimension names used throughout the package: B batch, T sequence length, C = d_model,
V vocabulary size, H heads, D = d_head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


# ---------------------------------------------------------------------------------------
# Token embeddings
# ---------------------------------------------------------------------------------------


def embedding_lookup(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Row `idx` of the embedding matrix `weight` (V, C) for every token id: (..., C)."""
    return weight[idx]


def one_hot_embedding(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The same lookup as a matrix product: one_hot(idx) (..., V) @ weight (V, C) -> (..., C).

    It costs V times more arithmetic than indexing, which is why nobody computes it this
    way; it shows that an embedding is a linear layer applied to one-hot vectors, so its
    gradient only touches the rows of the tokens that occurred.
    """
    one_hot = F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype)  # (..., V)
    return one_hot @ weight


class TokenEmbedding(nn.Module):
    """A learned table of `vocab_size` vectors of size `d_model`: idx (B, T) -> (B, T, C)."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)  # == embedding_lookup(idx, self.weight)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}"


# ---------------------------------------------------------------------------------------
# Similarity between embeddings
# ---------------------------------------------------------------------------------------


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """cos(a, b) = <a, b> / (|a| |b|) along `dim`, broadcasting the other dimensions.

    `eps` keeps the result finite when a vector is zero (its similarity is then 0).
    """
    dot = (a * b).sum(dim)
    norms = a.norm(dim=dim) * b.norm(dim=dim)
    return dot / norms.clamp_min(eps)


def nearest_neighbors(
    query: torch.Tensor, weight: torch.Tensor, k: int = 5, exclude: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` rows of `weight` (V, C) most cosine-similar to `query` (C,).

    Returns (similarities (k,), indices (k,)), best first; ids in `exclude` are skipped.
    """
    sims = cosine_similarity(weight, query.unsqueeze(0))  # (V,)
    if exclude:
        sims = sims.clone()
        sims[torch.tensor(exclude, device=sims.device)] = float("-inf")
    return sims.topk(k)


def analogy(
    weight: torch.Tensor, a: int, b: int, c: int, k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """"a is to b as c is to ?": the rows nearest to E[b] - E[a] + E[c], excluding a, b, c.

    The classic test of word2vec (Mikolov et al., 2013); with a trained table
    `analogy(E, man, king, woman)` tends to return `queen`. Returns (similarities, ids).
    """
    query = weight[b] - weight[a] + weight[c]  # (C,)
    return nearest_neighbors(query, weight, k=k, exclude=[a, b, c])


# ---------------------------------------------------------------------------------------
# Sinusoidal positions
# ---------------------------------------------------------------------------------------


def inverse_frequencies(
    dim: int,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The angular frequencies w_i = base ** (-2i / dim), i = 0 .. dim/2 - 1.

    Shared by the sinusoidal encoding (dim = d_model) and RoPE (dim = d_head): w_0 = 1
    turns once every 2*pi positions, the last one almost `base` times slower.
    """
    if dim % 2 != 0:
        raise ValueError(f"the dimension must be even to pair sines with cosines, got {dim}")
    exponents = torch.arange(0, dim, 2, device=device, dtype=dtype) / dim  # (dim/2,)
    return 1.0 / (base**exponents)


def sinusoidal_encoding(
    seq_len: int,
    d_model: int,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The table PE (seq_len, d_model): PE[pos, 2i] = sin(pos w_i), PE[pos, 2i+1] = cos(pos w_i).

    Sines sit in the even columns and cosines in the odd ones, as in the paper.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32  # float64 only when asked for
    freqs = inverse_frequencies(d_model, base, device, dtype=work)  # (C/2,)
    positions = torch.arange(seq_len, device=device, dtype=work)  # (T,)
    angles = torch.outer(positions, freqs)  # (T, C/2)
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (T, C/2, 2)
    return pe.flatten(-2).to(dtype)  # (T, C): sin, cos, sin, cos, ...


def sinusoidal_shift_matrix(offset: float, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The matrix M_k (d_model, d_model) with PE[pos + k] = M_k @ PE[pos] for every pos.

    Convention: PE rows are treated as column vectors, so for a whole table
    `sinusoidal_encoding(T, C)[: T - k] @ M_k.T == sinusoidal_encoding(T, C)[k:]`.
    M_k is block diagonal; the block for frequency w_i acts on (sin, cos) of that frequency:

        [ sin(w(p+k)) ]   [  cos(wk)  sin(wk) ] [ sin(wp) ]
        [ cos(w(p+k)) ] = [ -sin(wk)  cos(wk) ] [ cos(wp) ]

    (the angle-addition formulas). It depends on the offset k only, never on pos: this is
    why a linear layer can learn to attend "k tokens back".
    """
    freqs = inverse_frequencies(d_model, base, dtype=torch.float64)  # (C/2,)
    angle = freqs * offset
    cos, sin = angle.cos(), angle.sin()
    blocks = torch.stack((torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), -2)  # (C/2, 2, 2)
    return torch.block_diag(*blocks).float()  # (C, C)


class SinusoidalPositionalEncoding(nn.Module):
    """The fixed sinusoidal table, stored as a (non-learned, non-saved) buffer: positions -> (..., C).

    `scale` multiplies the table. The paper adds it as it is (values in [-1, 1]) to token
    embeddings multiplied by sqrt(d_model); with GPT-2's small embeddings (std 0.02) and no
    such multiplier the table drowns the tokens, and a scale near 0.02 * sqrt(2) (the same
    root-mean-square as the embeddings) puts them on an equal footing.
    """

    def __init__(self, max_seq_len: int, d_model: int, base: float = 10000.0, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.register_buffer("pe", scale * sinusoidal_encoding(max_seq_len, d_model, base), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.pe[positions]  # (T, C) or (B, T, C)


class LearnedPositionalEmbedding(nn.Module):
    """One learned vector per position 0 .. max_seq_len - 1 (GPT-2): positions -> (..., C).

    Unlike the sinusoidal table it cannot say anything about positions beyond
    `max_seq_len`; that is the model's hard context limit.
    """

    def __init__(self, max_seq_len: int, d_model: int):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.d_model = d_model
        self.weight = nn.Parameter(torch.empty(max_seq_len, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(positions, self.weight)  # (T, C) or (B, T, C)

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, d_model={self.d_model}"
