"""Planted bugs for the chapter 08 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: math, torch, F, sampling).
"""

MUTANTS = {
    "apply_temperature": {
        "converts_to_float32": '''
def apply_temperature(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    return logits.float() / temperature
''',
        "multiplies": '''
def apply_temperature(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return logits * temperature
''',
        "returns_probabilities": '''
def apply_temperature(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return torch.softmax(logits / temperature, dim=-1)
''',
        "no_check_of_negative_temperature": '''
def apply_temperature(logits, temperature):
    return logits / temperature
''',
        "zero_temperature_divides": '''
def apply_temperature(logits, temperature):
    if temperature < 0:
        raise ValueError("temperature must not be negative")
    return logits / temperature
''',
        "in_place": '''
def apply_temperature(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    logits /= temperature
    return logits
''',
    },
    "top_k_filter": {
        "builds_a_float32_output": '''
def top_k_filter(logits, k):
    if k < 1:
        raise ValueError("k must be at least 1")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    out = torch.full(logits.shape, float("-inf"))
    keep = logits >= kth
    out[keep] = logits[keep].float()
    return out
''',
        "fills_with_zero": '''
def top_k_filter(logits, k):
    if k < 1:
        raise ValueError("k must be at least 1")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, 0.0)
''',
        "keeps_the_smallest": '''
def top_k_filter(logits, k):
    if k < 1:
        raise ValueError("k must be at least 1")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth, float("-inf"))
''',
        "drops_ties": '''
def top_k_filter(logits, k):
    if k < 1:
        raise ValueError("k must be at least 1")
    k = min(k, logits.shape[-1])
    top = torch.topk(logits, k, dim=-1)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, top.indices, top.values)
''',
        "one_too_many": '''
def top_k_filter(logits, k):
    if k < 1:
        raise ValueError("k must be at least 1")
    ranked = logits.sort(dim=-1, descending=True).values
    if k >= logits.shape[-1]:
        return logits.clone()
    return logits.masked_fill(logits < ranked[..., k:k + 1], float("-inf"))
''',
        "k_larger_than_vocabulary_fails": '''
def top_k_filter(logits, k):
    if k < 1:
        raise ValueError("k must be at least 1")
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))
''',
        "in_place": '''
def top_k_filter(logits, k):
    if k < 1:
        raise ValueError("k must be at least 1")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    logits[logits < kth] = float("-inf")
    return logits
''',
    },
    "top_p_filter": {
        "keeps_the_token_at_exactly_p": '''
def top_p_filter(logits, top_p):
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    probs = torch.softmax(logits, dim=-1)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    n_keep = (mass_before <= top_p).sum(dim=-1, keepdim=True)
    smallest_kept = sorted_probs.gather(-1, n_keep - 1)
    return logits.masked_fill(probs < smallest_kept, float("-inf"))
''',
        "returns_float32": '''
def top_p_filter(logits, top_p):
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    logits = logits.float()  # softmax and cumsum are more accurate in float32
    probs = torch.softmax(logits, dim=-1)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    n_keep = (mass_before < top_p).sum(dim=-1, keepdim=True)
    smallest_kept = sorted_probs.gather(-1, n_keep - 1)
    return logits.masked_fill(probs < smallest_kept, float("-inf"))
''',
        "drops_the_crossing_token": '''
def top_p_filter(logits, top_p):
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    remove_sorted = sorted_probs.cumsum(dim=-1) > top_p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
''',
        "mask_left_in_sorted_order": '''
def top_p_filter(logits, top_p):
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    probs = torch.softmax(logits, dim=-1)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    return logits.masked_fill(remove, float("-inf"))
''',
        "cumulates_logits": '''
def top_p_filter(logits, top_p):
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    remove_sorted = sorted_logits.cumsum(dim=-1) - sorted_logits >= top_p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
''',
        "ascending_sort": '''
def top_p_filter(logits, top_p):
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1)
    remove_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
''',
        "softmax_over_the_batch": '''
def top_p_filter(logits, top_p):
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    probs = torch.softmax(logits, dim=0)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    remove_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
''',
    },
    "sample_next": {
        "greedy_before_checking_the_settings": '''
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    sampling.check_sampling_settings(temperature, top_k, top_p)
    logits = sampling.apply_temperature(logits, temperature)
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
''',
        "greedy_divides_by_zero": '''
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    logits = logits / temperature
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
''',
        "ignores_the_generator": '''
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    sampling.check_sampling_settings(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = sampling.apply_temperature(logits, temperature)
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(-1)
''',
        "top_p_before_top_k": '''
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    sampling.check_sampling_settings(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = sampling.apply_temperature(logits, temperature)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
''',
        "temperature_after_the_filters": '''
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    sampling.check_sampling_settings(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
''',
        "keeps_the_sample_dimension": '''
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    sampling.check_sampling_settings(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = sampling.apply_temperature(logits, temperature)
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
''',
        "no_check_of_negative_temperature": '''
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
''',
    },
    "perplexity": {
        "stride_defaults_to_half_the_context": '''
def perplexity(model, ids, context_length=None, stride=None):
    context_length = context_length or model.config.context_length
    stride = stride or max(1, context_length // 2)
    n = len(ids) - 1
    total, scored = 0.0, 0
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + context_length, n)
            log_probs = F.log_softmax(model(ids[None, begin:end])[0].float(), dim=-1)
            nll = -log_probs.gather(-1, ids[begin + 1 : end + 1, None]).squeeze(-1)
            total += nll[scored - begin :].sum().item()
            scored = end
            if end == n:
                break
    return math.exp(total / n)
''',
        "forgets_the_exp": '''
def perplexity(model, ids, context_length=None, stride=None):
    context_length = context_length or model.config.context_length
    stride = stride or context_length
    n = len(ids) - 1
    total, scored = 0.0, 0
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + context_length, n)
            log_probs = F.log_softmax(model(ids[None, begin:end])[0], dim=-1)
            nll = -log_probs.gather(-1, ids[begin + 1 : end + 1, None]).squeeze(-1)
            total += nll[scored - begin :].sum().item()
            scored = end
            if end == n:
                break
    return total / n
''',
        "hugging_face_guide_windows": '''
def perplexity(model, ids, context_length=None, stride=None):
    # Windows of context_length tokens that predict the tokens inside them only.
    context_length = context_length or model.config.context_length
    stride = stride or context_length
    N = len(ids)
    nlls, prev_end = [], 0
    with torch.no_grad():
        for begin in range(0, N, stride):
            end = min(begin + context_length, N)
            new = end - prev_end
            log_probs = F.log_softmax(model(ids[None, begin:end])[0], dim=-1)
            nll = -log_probs[:-1].gather(-1, ids[begin + 1 : end, None]).squeeze(-1)
            nlls.append(nll[-new:] if new < len(nll) else nll)
            prev_end = end
            if end == N:
                break
    return math.exp(torch.cat(nlls).mean().item())
''',
        "counts_overlaps_twice": '''
def perplexity(model, ids, context_length=None, stride=None):
    context_length = context_length or model.config.context_length
    stride = stride or context_length
    n = len(ids) - 1
    nlls = []
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + context_length, n)
            log_probs = F.log_softmax(model(ids[None, begin:end])[0], dim=-1)
            nlls.append(-log_probs.gather(-1, ids[begin + 1 : end + 1, None]).squeeze(-1))
            if end == n:
                break
    return math.exp(torch.cat(nlls).mean().item())
''',
        "ignores_the_stride": '''
def perplexity(model, ids, context_length=None, stride=None):
    context_length = context_length or model.config.context_length
    n = len(ids) - 1
    total = 0.0
    with torch.no_grad():
        for begin in range(0, n, context_length):
            end = min(begin + context_length, n)
            log_probs = F.log_softmax(model(ids[None, begin:end])[0], dim=-1)
            total += -log_probs.gather(-1, ids[begin + 1 : end + 1, None]).sum().item()
    return math.exp(total / n)
''',
        "averages_window_perplexities": '''
def perplexity(model, ids, context_length=None, stride=None):
    context_length = context_length or model.config.context_length
    stride = stride or context_length
    n = len(ids) - 1
    ppls, scored = [], 0
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + context_length, n)
            log_probs = F.log_softmax(model(ids[None, begin:end])[0], dim=-1)
            nll = -log_probs.gather(-1, ids[begin + 1 : end + 1, None]).squeeze(-1)
            ppls.append(math.exp(nll[scored - begin :].mean().item()))
            scored = end
            if end == n:
                break
    return sum(ppls) / len(ppls)
''',
        "uses_the_model_context_length": '''
def perplexity(model, ids, context_length=None, stride=None):
    context_length = model.config.context_length
    stride = stride or context_length
    n = len(ids) - 1
    total, scored = 0.0, 0
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + context_length, n)
            log_probs = F.log_softmax(model(ids[None, begin:end])[0], dim=-1)
            nll = -log_probs.gather(-1, ids[begin + 1 : end + 1, None]).squeeze(-1)
            total += nll[scored - begin :].sum().item()
            scored = end
            if end == n:
                break
    return math.exp(total / n)
''',
    },
}
