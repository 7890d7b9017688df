"""The key-value cache: decoding one token at a time without recomputing the prefix (chapter 09).

When a causal transformer generates token t + 1, the keys and values of tokens 0 .. t are
exactly those it computed at the previous step: a token's key depends only on the tokens
before it. The cache keeps them, so each step projects only the new token and attends over
the stored keys: O(T) work per token instead of running the whole prefix again, O(T^2).

Implements
- `cached_attention`, the math as a pure function: write the new keys and values into a
  preallocated buffer at `length`, then let the new queries attend to everything written so
  far (the queries are the *last* positions: `attention.causal_mask` aligns them so);
- `KVCache`: one preallocated (B, H_kv, T_max, D) key buffer and one value buffer per layer,
  and the number of tokens each row holds (on the device, mirrored in host memory so that a
  decode step never waits for the GPU to learn where to write). `model(idx, cache=cache)` feeds only the new
  tokens; each `MultiHeadAttention` calls `cache.layers[i].update(k, v)` between its
  projection and its attention (the same module, no second copy of the model). Rows may hold
  different numbers of tokens (continuous batching, `llm_course.batching`): the cache then
  supplies the mask that hides each row's unused slots. A write past T_max raises
  `CacheFullError`;
- `kv_cache_bytes`, the memory formula 2 L B H_kv T D bytes_per_value, which
  `KVCache.nbytes` checks against the allocated tensors.

Grouped-query attention (H_kv < H) shrinks the cache by H / H_kv: only the key/value heads are
stored. Left out here: paged memory (vLLM's PagedAttention: its block tables, allocator and
attention are `llm_course.paged_kv`, not wired into this cache), sliding-window and quantized
caches, and sharing prefixes between requests.
"""

from __future__ import annotations

import numpy as np
import torch

from llm_course.attention import scaled_dot_product_attention


class CacheFullError(ValueError):
    """Raised when new tokens do not fit in a KV cache's preallocated length."""


def _full_message(length: int, n_new: int, max_seq_len: int) -> str:
    return (
        f"the KV cache is full: it holds {length} of at most {max_seq_len} tokens and cannot take "
        f"{n_new} more; allocate a larger cache (max_seq_len >= {length + n_new}) or start a new sequence"
    )


def kv_cache_bytes(
    n_layers: int, n_kv_heads: int, d_head: int, seq_len: int, batch: int = 1, dtype: torch.dtype = torch.float16
) -> int:
    """Bytes of a KV cache: keys and values (2) x layers x batch x KV heads x tokens x d_head x bytes per value."""
    bytes_per_value = torch.empty((), dtype=dtype).element_size()
    return 2 * n_layers * batch * n_kv_heads * seq_len * d_head * bytes_per_value


def cached_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: int,
) -> torch.Tensor:
    """One attention step with a cache: q (B, H, T, D) for T new tokens -> (B, H, T, D).

    k_new, v_new (B, H_kv, T, D) are written in place into the preallocated buffers
    k_cache, v_cache (B, H_kv, T_max, D) at positions length .. length + T - 1; then the T
    queries attend causally to the length + T keys stored so far (query i sits at position
    length + i). Raises `CacheFullError` if length + T > T_max.
    """
    n_new, max_seq_len = k_new.shape[-2], k_cache.shape[-2]
    end = length + n_new
    if end > max_seq_len:
        raise CacheFullError(_full_message(length, n_new, max_seq_len))
    k_cache[:, :, length:end] = k_new
    v_cache[:, :, length:end] = v_new
    return scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], causal=True)  # (B, H, T, D)


class LayerKVCache:
    """The keys and values of one attention layer: buffers (B, H_kv, T_max, D), and the number of
    tokens each row holds twice: `lengths` (B,) on the buffers' device, for the masks and the
    scattered writes, and `host_lengths` (B,) int64 in host memory (numpy), for the Python control
    flow (slice ends, "are all rows equally long"). Reading the device copy would make every
    decode step wait for the GPU; the host copy is updated alongside it and never read back."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, host_lengths: np.ndarray):
        self.keys, self.values, self.lengths, self.host_lengths = keys, values, lengths, host_lengths

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, T, D) after each row's tokens; return every row's keys and values so far.

        The result is (B, H_kv, T_end, D) x 2 with T_end the longest row; rows that hold fewer
        tokens have stale slots, which `mask` hides.
        """
        n_new, max_seq_len = k.shape[-2], self.keys.shape[-2]
        longest = int(self.host_lengths.max())
        if longest + n_new > max_seq_len:
            raise CacheFullError(_full_message(longest, n_new, max_seq_len))
        if (self.host_lengths == longest).all():  # every row at the same length: one slice
            self.keys[:, :, longest : longest + n_new] = k
            self.values[:, :, longest : longest + n_new] = v
        else:  # row b writes at start[b] .. start[b] + T - 1
            rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (B, 1)
            slots = self.lengths[:, None] + torch.arange(n_new, device=k.device)  # (B, T)
            self.keys[rows, :, slots] = k.transpose(1, 2)  # indexed view is (B, T, H_kv, D)
            self.values[rows, :, slots] = v.transpose(1, 2)
        self.n_new = n_new
        self.lengths += n_new  # in place, so that a row view (`KVCache.rows`) updates its parent
        self.host_lengths += n_new
        end = longest + n_new
        return self.keys[:, :, :end], self.values[:, :, :end]

    def mask(self) -> torch.Tensor | None:
        """After `update`: None if all rows are equally long (the causal mask suffices), else a
        boolean (B, 1, T, T_end) mask, True where query t of row b may see key j: j < start[b] + t + 1."""
        host = self.host_lengths
        if (host == host[0]).all():
            return None
        end = int(host.max())
        first = self.lengths - self.n_new  # (B,) each row's position of its first new token
        query_pos = first[:, None] + torch.arange(self.n_new, device=first.device)  # (B, T)
        keys = torch.arange(end, device=first.device)  # (T_end,)
        return (keys[None, None, :] <= query_pos[:, :, None])[:, None]  # (B, 1, T, T_end)


class KVCache:
    """Preallocated keys and values for every layer of a model, plus each row's length.

    `KVCache.for_model(model, batch_size, max_seq_len)` sizes it from the model's config;
    `model(new_tokens, cache=cache)` appends to it. `rows(i, j)` is a cache of rows i .. j-1
    that shares this one's memory (a request's own slot in a batch). The lengths are kept on
    the device and, as a mirror, in host memory: nothing here reads a value from the device.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        d_head: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        shape = (n_layers, batch_size, n_kv_heads, max_seq_len, d_head)  # (L, B, H_kv, T_max, D)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        # Tokens held by each row, per layer (L, B): a forward pass advances the layers one by one.
        self.layer_lengths = torch.zeros(n_layers, batch_size, dtype=torch.long, device=device)
        self.host_lengths = np.zeros((n_layers, batch_size), dtype=np.int64)  # the same, in host memory
        self.layers = [
            LayerKVCache(self.keys[i], self.values[i], self.layer_lengths[i], self.host_lengths[i])
            for i in range(n_layers)
        ]

    @classmethod
    def for_model(
        cls, model: torch.nn.Module, batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None
    ) -> "KVCache":
        """A cache for `model` (a `Transformer`) on its device and in its dtype; max_seq_len <= context_length."""
        c = model.config
        max_seq_len = c.context_length if max_seq_len is None else max_seq_len
        if max_seq_len > c.context_length:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's context_length {c.context_length}")
        weight = next(model.parameters())
        dtype = weight.dtype if dtype is None else dtype
        return cls(c.n_layers, batch_size, c.n_kv_heads, c.d_head, max_seq_len, dtype, weight.device)

    @classmethod
    def _view(
        cls, keys: torch.Tensor, values: torch.Tensor, layer_lengths: torch.Tensor, host_lengths: np.ndarray
    ) -> "KVCache":
        cache = cls.__new__(cls)
        cache.keys, cache.values, cache.layer_lengths, cache.host_lengths = keys, values, layer_lengths, host_lengths
        cache.layers = [
            LayerKVCache(keys[i], values[i], layer_lengths[i], host_lengths[i]) for i in range(keys.shape[0])
        ]
        return cache

    def rows(self, start: int, stop: int | None = None) -> "KVCache":
        """Rows start .. stop-1 as a cache that shares this one's memory (default: the single row `start`)."""
        stop = start + 1 if stop is None else stop
        return KVCache._view(self.keys[:, start:stop], self.values[:, start:stop], self.layer_lengths[:, start:stop],
                             self.host_lengths[:, start:stop])  # fmt: skip

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) tokens held by each row (those the last layer has stored), on the cache's device."""
        return self.layer_lengths[-1]

    @property
    def max_seq_len(self) -> int:
        return self.keys.shape[-2]

    @property
    def length(self) -> int:
        """Tokens held, when every row holds the same number (raises otherwise)."""
        host = self.host_lengths[-1]
        if not (host == host[0]).all():
            raise ValueError(f"the rows of this cache hold different numbers of tokens: {host.tolist()}")
        return int(host[0])

    def positions(self, n_new: int) -> torch.Tensor:
        """Positions of the next n_new tokens: (T,) if all rows are equally long, else (B, T)."""
        host = self.host_lengths[-1]
        if (host == host[0]).all():
            return torch.arange(int(host[0]), int(host[0]) + n_new, device=self.layer_lengths.device)  # (T,)
        return self.lengths[:, None] + torch.arange(n_new, device=self.layer_lengths.device)  # (B, T)

    def crop(self, length: int) -> None:
        """Keep only the first `length` tokens of each row (speculative decoding drops rejected drafts)."""
        self.layer_lengths.clamp_(max=length)
        np.minimum(self.host_lengths, length, out=self.host_lengths)

    def reset(self) -> None:
        """Forget every token (the memory stays allocated; old values are overwritten or masked)."""
        self.layer_lengths.zero_()
        self.host_lengths[...] = 0

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values (equals `kv_cache_bytes` of this cache's sizes)."""
        return self.keys.nbytes + self.values.nbytes
