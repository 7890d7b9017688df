"""Planted bugs for the chapter 05 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: torch).
"""

MUTANTS = {
    "layer_norm": {
        "computes_in_float32": '''
def layer_norm(x, weight=None, bias=None, eps=1e-5):
    x = x.float()  # statistics in float32 for stability
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    out = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out
''',
        "unbiased_variance": '''
def layer_norm(x, weight=None, bias=None, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True)
    out = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out
''',
        "eps_outside_sqrt": '''
def layer_norm(x, weight=None, bias=None, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).sqrt()
    out = (x - mean) / (std + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out
''',
        "statistics_over_all_elements": '''
def layer_norm(x, weight=None, bias=None, eps=1e-5):
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    out = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out
''',
        "shift_before_scale": '''
def layer_norm(x, weight=None, bias=None, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    out = (x - mean) / torch.sqrt(var + eps)
    if bias is not None:
        out = out + bias
    if weight is not None:
        out = out * weight
    return out
''',
        "variance_as_mean_square_minus_square_mean": '''
def layer_norm(x, weight=None, bias=None, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = (x * x).mean(dim=-1, keepdim=True) - mean * mean
    out = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out
''',
    },
    "rms_norm": {
        "computes_in_float32": '''
def rms_norm(x, weight=None, eps=1e-6):
    out = x.float() * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.float()
    return out
''',
        "subtracts_the_mean": '''
def rms_norm(x, weight=None, eps=1e-6):
    x = x - x.mean(dim=-1, keepdim=True)
    out = x / torch.sqrt((x ** 2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out
''',
        "l2_norm_not_rms": '''
def rms_norm(x, weight=None, eps=1e-6):
    out = x / torch.sqrt((x ** 2).sum(dim=-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out
''',
        "eps_outside_sqrt": '''
def rms_norm(x, weight=None, eps=1e-6):
    out = x / (torch.sqrt((x ** 2).mean(dim=-1, keepdim=True)) + eps)
    if weight is not None:
        out = out * weight
    return out
''',
        "forgets_keepdim": '''
def rms_norm(x, weight=None, eps=1e-6):
    rms = torch.sqrt((x ** 2).mean(dim=-1) + eps)
    out = x / rms
    if weight is not None:
        out = out * weight
    return out
''',
    },
    "block_forward": {
        "post_ln_by_default": '''
def block_forward(x, norm1, attn, norm2, ffn, pre_ln=False):
    if pre_ln:
        x = x + attn(norm1(x))
        x = x + ffn(norm2(x))
    else:
        x = norm1(x + attn(x))
        x = norm2(x + ffn(x))
    return x
''',
        "parallel_branches": '''
def block_forward(x, norm1, attn, norm2, ffn, pre_ln=True):
    if pre_ln:
        return x + attn(norm1(x)) + ffn(norm2(x))
    x = norm1(x + attn(x))
    return norm2(x + ffn(x))
''',
        "always_pre_ln": '''
def block_forward(x, norm1, attn, norm2, ffn, pre_ln=True):
    x = x + attn(norm1(x))
    x = x + ffn(norm2(x))
    return x
''',
        "residual_from_normalized": '''
def block_forward(x, norm1, attn, norm2, ffn, pre_ln=True):
    if pre_ln:
        h = norm1(x)
        x = h + attn(h)
        h = norm2(x)
        return h + ffn(h)
    x = norm1(x + attn(x))
    return norm2(x + ffn(x))
''',
        "post_ln_normalizes_branch_only": '''
def block_forward(x, norm1, attn, norm2, ffn, pre_ln=True):
    if pre_ln:
        x = x + attn(norm1(x))
        return x + ffn(norm2(x))
    x = x + norm1(attn(x))
    return x + norm2(ffn(x))
''',
        "in_place_add": '''
def block_forward(x, norm1, attn, norm2, ffn, pre_ln=True):
    if pre_ln:
        x += attn(norm1(x))
        x += ffn(norm2(x))
        return x
    x = norm1(x + attn(x))
    return norm2(x + ffn(x))
''',
    },
    "count_parameters": {
        "kv_biases_as_wide_as_q": '''
def count_parameters(config):
    C, V, F, L = config.d_model, config.vocab_size, config.d_ff, config.n_layers
    D = C // config.n_heads
    q, kv = config.n_heads * D, config.n_kv_heads * D
    b = 1 if config.bias else 0
    attention = C * q + 2 * C * kv + q * C + b * (3 * q + C)
    if config.activation == "swiglu":
        ffn = 3 * C * F + b * (2 * F + C)
    else:
        ffn = 2 * C * F + b * (F + C)
    norm = 2 * C if (config.norm == "layernorm" and config.bias) else C
    n_norms = 2 * L + (1 if config.pre_ln else 0)
    total = V * C + L * (attention + ffn) + n_norms * norm
    if config.position == "learned":
        total += config.context_length * C
    if not config.tie_embeddings:
        total += V * C
    return total
''',
        "head_always_counted": '''
def count_parameters(config):
    C, V, F, L = config.d_model, config.vocab_size, config.d_ff, config.n_layers
    b = 1 if config.bias else 0
    q = config.n_heads * (C // config.n_heads)
    kv = config.n_kv_heads * (C // config.n_heads)
    attention = C * q + 2 * C * kv + q * C + b * (q + 2 * kv + C)
    ffn = 3 * C * F + b * (2 * F + C) if config.activation == "swiglu" else 2 * C * F + b * (F + C)
    norm = 2 * C if config.norm == "layernorm" and config.bias else C
    total = 2 * V * C + L * (attention + ffn) + (2 * L + int(config.pre_ln)) * norm
    if config.position == "learned":
        total += config.context_length * C
    return total
''',
        "ignores_grouped_query_attention": '''
def count_parameters(config):
    C, V, F, L = config.d_model, config.vocab_size, config.d_ff, config.n_layers
    b = 1 if config.bias else 0
    attention = 4 * C * C + 4 * b * C
    ffn = 3 * C * F + b * (2 * F + C) if config.activation == "swiglu" else 2 * C * F + b * (F + C)
    norm = 2 * C if config.norm == "layernorm" and config.bias else C
    total = V * C + L * (attention + ffn) + (2 * L + int(config.pre_ln)) * norm
    if config.position == "learned":
        total += config.context_length * C
    if not config.tie_embeddings:
        total += V * C
    return total
''',
        "swiglu_with_two_matrices": '''
def count_parameters(config):
    C, V, F, L = config.d_model, config.vocab_size, config.d_ff, config.n_layers
    b = 1 if config.bias else 0
    q = config.n_heads * (C // config.n_heads)
    kv = config.n_kv_heads * (C // config.n_heads)
    attention = C * q + 2 * C * kv + q * C + b * (q + 2 * kv + C)
    ffn = 2 * C * F + b * (F + C)
    norm = 2 * C if config.norm == "layernorm" and config.bias else C
    total = V * C + L * (attention + ffn) + (2 * L + int(config.pre_ln)) * norm
    if config.position == "learned":
        total += config.context_length * C
    if not config.tie_embeddings:
        total += V * C
    return total
''',
        "rmsnorm_with_bias": '''
def count_parameters(config):
    C, V, F, L = config.d_model, config.vocab_size, config.d_ff, config.n_layers
    b = 1 if config.bias else 0
    q = config.n_heads * (C // config.n_heads)
    kv = config.n_kv_heads * (C // config.n_heads)
    attention = C * q + 2 * C * kv + q * C + b * (q + 2 * kv + C)
    ffn = 3 * C * F + b * (2 * F + C) if config.activation == "swiglu" else 2 * C * F + b * (F + C)
    norm = C + b * C
    total = V * C + L * (attention + ffn) + (2 * L + int(config.pre_ln)) * norm
    if config.position == "learned":
        total += config.context_length * C
    if not config.tie_embeddings:
        total += V * C
    return total
''',
        "final_norm_always": '''
def count_parameters(config):
    C, V, F, L = config.d_model, config.vocab_size, config.d_ff, config.n_layers
    b = 1 if config.bias else 0
    q = config.n_heads * (C // config.n_heads)
    kv = config.n_kv_heads * (C // config.n_heads)
    attention = C * q + 2 * C * kv + q * C + b * (q + 2 * kv + C)
    ffn = 3 * C * F + b * (2 * F + C) if config.activation == "swiglu" else 2 * C * F + b * (F + C)
    norm = 2 * C if config.norm == "layernorm" and config.bias else C
    total = V * C + L * (attention + ffn) + (2 * L + 1) * norm
    if config.position == "learned":
        total += config.context_length * C
    if not config.tie_embeddings:
        total += V * C
    return total
''',
    },
}
