"""Planted bugs for the chapter 03 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: math, torch, F).
"""

MUTANTS = {
    "one_hot_embedding": {
        "stacks_one_row_per_id": '''
def one_hot_embedding(idx, weight):
    rows = [F.one_hot(i, num_classes=weight.shape[0]).to(weight.dtype) @ weight for i in idx.flatten()]
    return torch.stack(rows).reshape(*idx.shape, weight.shape[1])
''',
        "one_hot_without_num_classes": '''
def one_hot_embedding(idx, weight):
    return F.one_hot(idx).to(weight.dtype) @ weight
''',
        "flattens_the_batch": '''
def one_hot_embedding(idx, weight):
    one_hot = F.one_hot(idx.flatten(), num_classes=weight.shape[0]).to(weight.dtype)
    return one_hot @ weight
''',
        "always_float32": '''
def one_hot_embedding(idx, weight):
    return F.one_hot(idx, num_classes=weight.shape[0]).float() @ weight
''',
        "int64_one_hot": '''
def one_hot_embedding(idx, weight):
    return F.one_hot(idx, num_classes=weight.shape[0]) @ weight
''',
        "detached_result": '''
def one_hot_embedding(idx, weight):
    one_hot = F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype)
    return torch.tensor((one_hot @ weight).tolist(), dtype=weight.dtype).reshape(*idx.shape, weight.shape[1])
''',
    },
    "sinusoidal_encoding": {
        "sin_cos_swapped": '''
def sinusoidal_encoding(seq_len, d_model, base=10000.0):
    freqs = base ** (-torch.arange(0, d_model, 2).float() / d_model)
    angles = torch.arange(seq_len).float()[:, None] * freqs
    pe = torch.zeros(seq_len, d_model)
    pe[:, 0::2] = angles.cos()
    pe[:, 1::2] = angles.sin()
    return pe
''',
        "sines_then_cosines": '''
def sinusoidal_encoding(seq_len, d_model, base=10000.0):
    freqs = base ** (-torch.arange(0, d_model, 2).float() / d_model)
    angles = torch.arange(seq_len).float()[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
''',
        "column_index_as_i": '''
def sinusoidal_encoding(seq_len, d_model, base=10000.0):
    pe = torch.zeros(seq_len, d_model)
    for pos in range(seq_len):
        for j in range(d_model):
            angle = pos / base ** (j / d_model)
            pe[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return pe
''',
        "missing_factor_two": '''
def sinusoidal_encoding(seq_len, d_model, base=10000.0):
    freqs = base ** (-torch.arange(d_model // 2).float() / d_model)
    angles = torch.arange(seq_len).float()[:, None] * freqs
    pe = torch.zeros(seq_len, d_model)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe
''',
        "ignores_base": '''
def sinusoidal_encoding(seq_len, d_model, base=10000.0):
    freqs = 10000.0 ** (-torch.arange(0, d_model, 2).float() / d_model)
    angles = torch.arange(seq_len).float()[:, None] * freqs
    pe = torch.zeros(seq_len, d_model)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe
''',
    },
    "sinusoidal_shift_matrix": {
        "offset_rounded_to_an_int": '''
def sinusoidal_shift_matrix(offset, d_model, base=10000.0):
    pairs = torch.arange(0, d_model, 2, dtype=torch.float64)
    angles = int(offset) * base ** (-pairs / d_model)
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i, a in enumerate(angles.tolist()):
        c, s = math.cos(a), math.sin(a)
        m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = c, s
        m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = -s, c
    return m.float()
''',
        "rotates_backwards": '''
def sinusoidal_shift_matrix(offset, d_model, base=10000.0):
    m = torch.zeros(d_model, d_model)
    for i in range(d_model // 2):
        a = offset * base ** (-2 * i / d_model)
        m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = math.cos(a), -math.sin(a)
        m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = math.sin(a), math.cos(a)
    return m
''',
        "half_layout_blocks": '''
def sinusoidal_shift_matrix(offset, d_model, base=10000.0):
    half = d_model // 2
    m = torch.zeros(d_model, d_model)
    for i in range(half):
        a = offset * base ** (-2 * i / d_model)
        m[i, i], m[i, i + half] = math.cos(a), math.sin(a)
        m[i + half, i], m[i + half, i + half] = -math.sin(a), math.cos(a)
    return m
''',
        "forgets_the_offset": '''
def sinusoidal_shift_matrix(offset, d_model, base=10000.0):
    m = torch.zeros(d_model, d_model)
    for i in range(d_model // 2):
        a = base ** (-2 * i / d_model)
        m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = math.cos(a), math.sin(a)
        m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = -math.sin(a), math.cos(a)
    return m
''',
        "missing_factor_two": '''
def sinusoidal_shift_matrix(offset, d_model, base=10000.0):
    m = torch.zeros(d_model, d_model)
    for i in range(d_model // 2):
        a = offset * base ** (-i / d_model)
        m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = math.cos(a), math.sin(a)
        m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = -math.sin(a), math.cos(a)
    return m
''',
        "ignores_base": '''
def sinusoidal_shift_matrix(offset, d_model, base=10000.0):
    m = torch.zeros(d_model, d_model)
    for i in range(d_model // 2):
        a = offset * 10000.0 ** (-2 * i / d_model)
        m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = math.cos(a), math.sin(a)
        m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = -math.sin(a), math.cos(a)
    return m
''',
    },
    "apply_rope": {
        "interleaved_pairs": '''
def apply_rope(x, cos, sin, positions=None):
    T = x.shape[-2]
    if positions is None:
        cos, sin = cos[:T], sin[:T]
    else:
        cos, sin = cos[positions], sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    cos, sin = cos[..., :half].to(x.dtype), sin[..., :half].to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
''',
        "rotate_half_sign": '''
def apply_rope(x, cos, sin, positions=None):
    T = x.shape[-2]
    if positions is None:
        cos, sin = cos[:T], sin[:T]
    else:
        cos, sin = cos[positions], sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, -x1), dim=-1) * sin
''',
        "ignores_positions": '''
def apply_rope(x, cos, sin, positions=None):
    T = x.shape[-2]
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
''',
        "no_head_dimension": '''
def apply_rope(x, cos, sin, positions=None):
    T = x.shape[-2]
    if positions is None:
        cos, sin = cos[:T], sin[:T]
    else:
        cos, sin = cos[positions], sin[positions]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
''',
        "keeps_cache_dtype": '''
def apply_rope(x, cos, sin, positions=None):
    T = x.shape[-2]
    if positions is None:
        cos, sin = cos[:T], sin[:T]
    else:
        cos, sin = cos[positions], sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
''',
        "rotates_in_place": '''
def apply_rope(x, cos, sin, positions=None):
    T = x.shape[-2]
    if positions is None:
        cos, sin = cos[:T], sin[:T]
    else:
        cos, sin = cos[positions], sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x.mul_(cos).add_(rotated * sin)
''',
    },
}
