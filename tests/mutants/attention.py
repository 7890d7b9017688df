"""Planted bugs for the chapter 04 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: math, torch, F, rearrange, repeat).
"""

MUTANTS = {
    "causal_mask": {
        "uint8_mask": '''
def causal_mask(T):
    return torch.ones(T, T, dtype=torch.uint8).tril()
''',
        "sees_the_future": '''
def causal_mask(T):
    return torch.triu(torch.ones(T, T, dtype=torch.bool))
''',
        "cannot_see_itself": '''
def causal_mask(T):
    return torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)
''',
        "true_means_blocked": '''
def causal_mask(T):
    return torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
''',
        "float_zeros_and_ones": '''
def causal_mask(T):
    return torch.tril(torch.ones(T, T))
''',
        "sees_one_token_ahead": '''
def causal_mask(T):
    i = torch.arange(T)
    return i[None, :] <= i[:, None] + 1
''',
    },
    "scaled_dot_product_attention": {
        "float32_for_bf16": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    # compute in float32 for stability
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.float()
''',
        "float64_rounded_through_float32": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v
''',
        "no_scaling": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
''',
        "divides_by_d_k": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / q.shape[-1]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
''',
        "scales_by_sequence_length": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-2])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
''',
        "softmax_over_queries": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2) @ v
''',
        "inverted_mask": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
''',
        "mask_after_softmax": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        weights = weights * mask
    return weights @ v
''',
        "exp_overflows": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    e = torch.exp(scores)
    return e / e.sum(dim=-1, keepdim=True) @ v
''',
    },
    "multi_head_attention": {
        "returns_float32_for_bf16": '''
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    x, w_q, w_k, w_v, w_o = (t.float() for t in (x, w_q, w_k, w_v, w_o))
    d_head = w_q.shape[0] // n_heads
    n_kv_heads = w_k.shape[0] // d_head
    q = rearrange(x @ w_q.T, "b t (h d) -> b h t d", h=n_heads)
    k = rearrange(x @ w_k.T, "b t (h d) -> b h t d", h=n_kv_heads)
    v = rearrange(x @ w_v.T, "b t (h d) -> b h t d", h=n_kv_heads)
    k = repeat(k, "b h t d -> b (h r) t d", r=n_heads // n_kv_heads)
    v = repeat(v, "b h t d -> b (h r) t d", r=n_heads // n_kv_heads)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return rearrange(out, "b h t d -> b t (h d)") @ w_o.T
''',
        "softmax_rounded_through_float32": '''
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    d_head = w_q.shape[0] // n_heads
    n_kv_heads = w_k.shape[0] // d_head
    q = rearrange(x @ w_q.T, "b t (h d) -> b h t d", h=n_heads)
    k = rearrange(x @ w_k.T, "b t (h d) -> b h t d", h=n_kv_heads)
    v = rearrange(x @ w_v.T, "b t (h d) -> b h t d", h=n_kv_heads)
    k = repeat(k, "b h t d -> b (h r) t d", r=n_heads // n_kv_heads)
    v = repeat(v, "b h t d -> b (h r) t d", r=n_heads // n_kv_heads)
    T = x.shape[1]
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(d_head)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    out = torch.softmax(scores, dim=-1).to(v.dtype) @ v
    return rearrange(out, "b h t d -> b t (h d)") @ w_o.T
''',
        "view_without_transpose": '''
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    B, T, C = x.shape
    d = w_q.shape[0] // n_heads
    h_kv = w_k.shape[0] // d
    q = (x @ w_q.T).view(B, n_heads, T, d)
    k = (x @ w_k.T).view(B, h_kv, T, d).repeat_interleave(n_heads // h_kv, dim=1)
    v = (x @ w_v.T).view(B, h_kv, T, d).repeat_interleave(n_heads // h_kv, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(B, T, C) @ w_o.T
''',
        "heads_strided": '''
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    d = w_q.shape[0] // n_heads
    h_kv = w_k.shape[0] // d
    q = rearrange(x @ w_q.T, "b t (d h) -> b h t d", h=n_heads)
    k = rearrange(x @ w_k.T, "b t (d h) -> b h t d", h=h_kv)
    v = rearrange(x @ w_v.T, "b t (d h) -> b h t d", h=h_kv)
    k = repeat(k, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    v = repeat(v, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return rearrange(out, "b h t d -> b t (d h)") @ w_o.T
''',
        "not_causal": '''
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    d = w_q.shape[0] // n_heads
    h_kv = w_k.shape[0] // d
    q = rearrange(x @ w_q.T, "b t (h d) -> b h t d", h=n_heads)
    k = rearrange(x @ w_k.T, "b t (h d) -> b h t d", h=h_kv)
    v = rearrange(x @ w_v.T, "b t (h d) -> b h t d", h=h_kv)
    k = repeat(k, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    v = repeat(v, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b h t d -> b t (h d)") @ w_o.T
''',
        "weights_not_transposed": '''
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    d = w_q.shape[0] // n_heads
    h_kv = w_k.shape[0] // d
    q = rearrange(x @ w_q, "b t (h d) -> b h t d", h=n_heads)
    k = rearrange(x @ w_k, "b t (h d) -> b h t d", h=h_kv)
    v = rearrange(x @ w_v, "b t (h d) -> b h t d", h=h_kv)
    k = repeat(k, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    v = repeat(v, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return rearrange(out, "b h t d -> b t (h d)") @ w_o
''',
        "kv_heads_tiled": '''
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    d = w_q.shape[0] // n_heads
    h_kv = w_k.shape[0] // d
    q = rearrange(x @ w_q.T, "b t (h d) -> b h t d", h=n_heads)
    k = rearrange(x @ w_k.T, "b t (h d) -> b h t d", h=h_kv).repeat(1, n_heads // h_kv, 1, 1)
    v = rearrange(x @ w_v.T, "b t (h d) -> b h t d", h=h_kv).repeat(1, n_heads // h_kv, 1, 1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return rearrange(out, "b h t d -> b t (h d)") @ w_o.T
''',
        "no_output_projection": '''
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    d = w_q.shape[0] // n_heads
    h_kv = w_k.shape[0] // d
    q = rearrange(x @ w_q.T, "b t (h d) -> b h t d", h=n_heads)
    k = rearrange(x @ w_k.T, "b t (h d) -> b h t d", h=h_kv)
    v = rearrange(x @ w_v.T, "b t (h d) -> b h t d", h=h_kv)
    k = repeat(k, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    v = repeat(v, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return rearrange(out, "b h t d -> b t (h d)")
''',
        "scaled_by_d_model": '''
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    B, T, C = x.shape
    d = w_q.shape[0] // n_heads
    h_kv = w_k.shape[0] // d
    q = rearrange(x @ w_q.T, "b t (h d) -> b h t d", h=n_heads)
    k = rearrange(x @ w_k.T, "b t (h d) -> b h t d", h=h_kv)
    v = rearrange(x @ w_v.T, "b t (h d) -> b h t d", h=h_kv)
    k = repeat(k, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    v = repeat(v, "b h t d -> b (h r) t d", r=n_heads // h_kv)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return rearrange(out, "b h t d -> b t (h d)") @ w_o.T
''',
    },
}
