"""Planted bugs for the chapter 09 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: math, torch, F,
scaled_dot_product_attention, CacheFullError).
"""

MUTANTS = {
    "cached_attention": {
        "checks_only_the_prompt_fits": '''
def cached_attention(q, k_new, v_new, k_cache, v_cache, length):
    T, T_max = q.shape[-2], k_cache.shape[-2]
    if T > T_max:
        raise CacheFullError(f"{T} tokens do not fit in a cache of {T_max}")
    end = min(length + T, T_max)
    k_cache[:, :, length:end] = k_new[:, :, : end - length]
    v_cache[:, :, length:end] = v_new[:, :, : end - length]
    return scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], causal=True)
''',
        "attends_to_empty_slots": '''
def cached_attention(q, k_new, v_new, k_cache, v_cache, length):
    end = length + k_new.shape[-2]
    if end > k_cache.shape[-2]:
        raise CacheFullError("the KV cache is full")
    k_cache[:, :, length:end] = k_new
    v_cache[:, :, length:end] = v_new
    return scaled_dot_product_attention(q, k_cache, v_cache, causal=True)
''',
        "no_causal_mask_in_prefill": '''
def cached_attention(q, k_new, v_new, k_cache, v_cache, length):
    end = length + k_new.shape[-2]
    if end > k_cache.shape[-2]:
        raise CacheFullError("the KV cache is full")
    k_cache[:, :, length:end] = k_new
    v_cache[:, :, length:end] = v_new
    return scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end])
''',
        "top_left_causal_mask": '''
def cached_attention(q, k_new, v_new, k_cache, v_cache, length):
    end = length + k_new.shape[-2]
    if end > k_cache.shape[-2]:
        raise CacheFullError("the KV cache is full")
    k_cache[:, :, length:end] = k_new
    v_cache[:, :, length:end] = v_new
    k = k_cache[:, :, :end].repeat_interleave(q.shape[1] // k_cache.shape[1], dim=1)
    v = v_cache[:, :, :end].repeat_interleave(q.shape[1] // v_cache.shape[1], dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
''',
        "cache_not_written": '''
def cached_attention(q, k_new, v_new, k_cache, v_cache, length):
    end = length + k_new.shape[-2]
    if end > k_cache.shape[-2]:
        raise CacheFullError("the KV cache is full")
    k = torch.cat([k_cache[:, :, :length], k_new], dim=2)
    v = torch.cat([v_cache[:, :, :length], v_new], dim=2)
    return scaled_dot_product_attention(q, k, v, causal=True)
''',
        "written_one_slot_late": '''
def cached_attention(q, k_new, v_new, k_cache, v_cache, length):
    end = length + k_new.shape[-2]
    if end + 1 > k_cache.shape[-2]:
        raise CacheFullError("the KV cache is full")
    k_cache[:, :, length + 1:end + 1] = k_new
    v_cache[:, :, length + 1:end + 1] = v_new
    return scaled_dot_product_attention(q, k_cache[:, :, :end + 1], v_cache[:, :, :end + 1], causal=True)
''',
        "no_full_check": '''
def cached_attention(q, k_new, v_new, k_cache, v_cache, length):
    end = length + k_new.shape[-2]
    k_cache[:, :, length:end] = k_new
    v_cache[:, :, length:end] = v_new
    return scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], causal=True)
''',
    },
    "verify_draft": {
        "accepts_when_u_equals_the_ratio": '''
def verify_draft(p, q, draft, u):
    gamma = draft.shape[0]
    for i in range(gamma):
        x = draft[i]
        if u[i] <= p[i, x] / q[i, x]:
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        return i, residual / residual.sum()
    return gamma, p[gamma]
''',
        "inverted_ratio": '''
def verify_draft(p, q, draft, u):
    gamma = draft.shape[0]
    for i in range(gamma):
        x = draft[i]
        if u[i] >= q[i, x] / p[i, x]:
            residual = (p[i] - q[i]).clamp(min=0)
            return i, residual / residual.sum()
    return gamma, p[gamma]
''',
        "resamples_from_p": '''
def verify_draft(p, q, draft, u):
    gamma = draft.shape[0]
    for i in range(gamma):
        x = draft[i]
        if u[i] >= p[i, x] / q[i, x]:
            return i, p[i]
    return gamma, p[gamma]
''',
        "residual_not_normalized": '''
def verify_draft(p, q, draft, u):
    gamma = draft.shape[0]
    for i in range(gamma):
        x = draft[i]
        if u[i] >= p[i, x] / q[i, x]:
            return i, (p[i] - q[i]).clamp(min=0)
    return gamma, p[gamma]
''',
        "counts_all_accepted": '''
def verify_draft(p, q, draft, u):
    gamma = draft.shape[0]
    ratio = p[torch.arange(gamma), draft] / q[torch.arange(gamma), draft]
    accepted = u < ratio
    n = int(accepted.sum())
    if n == gamma:
        return n, p[gamma]
    i = int((~accepted).nonzero()[0, 0])
    residual = (p[i] - q[i]).clamp(min=0)
    return n, residual / residual.sum()
''',
        "bonus_from_last_draft_position": '''
def verify_draft(p, q, draft, u):
    gamma = draft.shape[0]
    for i in range(gamma):
        x = draft[i]
        if u[i] >= p[i, x] / q[i, x]:
            residual = (p[i] - q[i]).clamp(min=0)
            return i, residual / residual.sum()
    return gamma, p[gamma - 1]
''',
    },
    "quantize_groupwise": {
        "rounds_half_up": '''
def quantize_groupwise(w, bits, group_size):
    Q = 2 ** (bits - 1) - 1
    out, n_in = w.shape
    groups = w.reshape(out, n_in // group_size, group_size)
    scale = groups.abs().amax(dim=-1) / Q
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.floor(groups / scale[..., None] + 0.5)
    return q.reshape(out, n_in).to(torch.int8), scale
''',
        "divides_by_2_to_the_bits_minus_1": '''
def quantize_groupwise(w, bits, group_size):
    n_out, n_in = w.shape
    groups = w.float().reshape(n_out, n_in // group_size, group_size)
    absmax = groups.abs().amax(dim=-1)
    scale = torch.where(absmax > 0, absmax / 2 ** (bits - 1), torch.ones_like(absmax))
    q = torch.round(groups / scale[..., None])
    return q.to(torch.int8).reshape(n_out, n_in), scale
''',
        "truncates_instead_of_rounding": '''
def quantize_groupwise(w, bits, group_size):
    n_out, n_in = w.shape
    top = 2 ** (bits - 1) - 1
    groups = w.float().reshape(n_out, n_in // group_size, group_size)
    absmax = groups.abs().amax(dim=-1)
    scale = torch.where(absmax > 0, absmax / top, torch.ones_like(absmax))
    q = groups / scale[..., None]
    return q.to(torch.int8).reshape(n_out, n_in), scale
''',
        "one_scale_per_row": '''
def quantize_groupwise(w, bits, group_size):
    n_out, n_in = w.shape
    top = 2 ** (bits - 1) - 1
    absmax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / top, torch.ones_like(absmax))
    q = torch.round(w / scale)
    return q.to(torch.int8), scale.expand(n_out, n_in // group_size)
''',
        "strided_groups": '''
def quantize_groupwise(w, bits, group_size):
    n_out, n_in = w.shape
    top = 2 ** (bits - 1) - 1
    groups = w.float().reshape(n_out, group_size, n_in // group_size)
    absmax = groups.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / top, torch.ones_like(absmax))
    q = torch.round(groups / scale[:, None, :])
    return q.to(torch.int8).reshape(n_out, n_in), scale
''',
        "one_scale_for_the_matrix": '''
def quantize_groupwise(w, bits, group_size):
    n_out, n_in = w.shape
    top = 2 ** (bits - 1) - 1
    scale = w.abs().max() / top
    q = torch.round(w / scale)
    return q.to(torch.int8), scale.expand(n_out, n_in // group_size)
''',
    },
    "dequantize_groupwise": {
        "keeps_the_scale_dtype": '''
def dequantize_groupwise(q, scale):
    out, n_in = q.shape
    G = scale.shape[1]
    groups = q.reshape(out, G, n_in // G) * scale[..., None]
    return groups.reshape(out, n_in)
''',
        "divides_by_scale": '''
def dequantize_groupwise(q, scale):
    n_out, n_in = q.shape
    g = n_in // scale.shape[1]
    return q.float() / scale.float().repeat_interleave(g, dim=1)
''',
        "tiles_the_scales": '''
def dequantize_groupwise(q, scale):
    n_out, n_in = q.shape
    g = n_in // scale.shape[1]
    return q.float() * scale.float().repeat(1, g)
''',
        "first_scale_only": '''
def dequantize_groupwise(q, scale):
    return q.float() * scale.float()[:, :1]
''',
        "keeps_the_groups": '''
def dequantize_groupwise(q, scale):
    n_out, n_in = q.shape
    G = scale.shape[1]
    return q.float().reshape(n_out, G, n_in // G) * scale.float()[..., None]
''',
    },
}
