"""Planted bugs for the chapter 06 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: math, torch).
"""

MUTANTS = {
    "cross_entropy": {
        "one_maximum_for_all_rows": '''
def cross_entropy(logits, targets, ignore_index=-100):
    m = logits.max()
    shifted = logits - m
    log_probs = shifted - shifted.exp().sum(dim=-1, keepdim=True).log()
    keep = targets != ignore_index
    picked = log_probs[keep].gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    return -picked.mean()
''',
        "hard_coded_minus_100": '''
def cross_entropy(logits, targets, ignore_index=-100):
    m = logits.max(dim=-1, keepdim=True).values
    shifted = logits - m
    log_probs = shifted - shifted.exp().sum(dim=-1, keepdim=True).log()
    keep = targets != -100
    picked = log_probs[keep].gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    return -picked.mean()
''',
        "naive_softmax_overflows": '''
def cross_entropy(logits, targets, ignore_index=-100):
    probs = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)
    keep = targets != ignore_index
    picked = probs[keep].gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    return -picked.log().mean()
''',
        "log_of_softmax_underflows": '''
def cross_entropy(logits, targets, ignore_index=-100):
    log_probs = torch.log(torch.softmax(logits, dim=-1))
    keep = targets != ignore_index
    return -log_probs[keep].gather(-1, targets[keep].unsqueeze(-1)).mean()
''',
        "mean_over_ignored_positions_too": '''
def cross_entropy(logits, targets, ignore_index=-100):
    m = logits.max(dim=-1, keepdim=True).values
    log_probs = (logits - m) - (logits - m).exp().sum(dim=-1, keepdim=True).log()
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    nll = -log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * keep
    return nll.sum() / len(targets)
''',
        "softmax_over_positions": '''
def cross_entropy(logits, targets, ignore_index=-100):
    m = logits.max(dim=0, keepdim=True).values
    log_probs = (logits - m) - (logits - m).exp().sum(dim=0, keepdim=True).log()
    keep = targets != ignore_index
    return -log_probs[keep].gather(-1, targets[keep].unsqueeze(-1)).mean()
''',
        "sum_not_mean": '''
def cross_entropy(logits, targets, ignore_index=-100):
    m = logits.max(dim=-1, keepdim=True).values
    log_probs = (logits - m) - (logits - m).exp().sum(dim=-1, keepdim=True).log()
    keep = targets != ignore_index
    return -log_probs[keep].gather(-1, targets[keep].unsqueeze(-1)).sum()
''',
        "forgets_ignore_index": '''
def cross_entropy(logits, targets, ignore_index=-100):
    m = logits.max(dim=-1, keepdim=True).values
    log_probs = (logits - m) - (logits - m).exp().sum(dim=-1, keepdim=True).log()
    return -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
''',
    },
    "adamw_step": {
        "step_counted_from_zero": '''
def adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    beta1, beta2 = betas
    param = param * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** (step + 1))
    v_hat = v / (1 - beta2 ** (step + 1))
    param = param - lr * m_hat / (v_hat.sqrt() + eps)
    return param, m, v
''',
        "decays_the_updated_parameter": '''
def adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    param = param - lr * m_hat / (v_hat.sqrt() + eps)
    param = param * (1 - lr * weight_decay)
    return param, m, v
''',
        "no_bias_correction": '''
def adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    beta1, beta2 = betas
    param = param * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    return param - lr * m / (v.sqrt() + eps), m, v
''',
        "l2_regularization_not_decoupled": '''
def adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    beta1, beta2 = betas
    grad = grad + weight_decay * param
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v
''',
        "weight_decay_without_lr": '''
def adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    beta1, beta2 = betas
    param = param * (1 - weight_decay)
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v
''',
        "eps_inside_sqrt": '''
def adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    beta1, beta2 = betas
    param = param * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return param - lr * m_hat / torch.sqrt(v_hat + eps), m, v
''',
        "updates_in_place": '''
def adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    beta1, beta2 = betas
    param.mul_(1 - lr * weight_decay)
    m.mul_(beta1).add_((1 - beta1) * grad)
    v.mul_(beta2).add_((1 - beta2) * grad * grad)
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return param, m, v
''',
        "betas_swapped": '''
def adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    beta2, beta1 = betas
    param = param * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v
''',
    },
    "warmup_cosine": {
        "min_lr_when_total_equals_warmup": '''
def warmup_cosine(step, warmup, total, max_lr, min_lr=0.0):
    if step < warmup:
        return max_lr * step / warmup
    if total <= warmup:
        return min_lr
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
''',
        "warmup_reaches_max_one_step_early": '''
def warmup_cosine(step, warmup, total, max_lr, min_lr=0.0):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
''',
        "warmup_off_by_one": '''
def warmup_cosine(step, warmup, total, max_lr, min_lr=0.0):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
''',
        "cosine_over_total_steps": '''
def warmup_cosine(step, warmup, total, max_lr, min_lr=0.0):
    if step < warmup:
        return max_lr * step / warmup
    progress = min(1.0, step / total)
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
''',
        "decays_to_zero": '''
def warmup_cosine(step, warmup, total, max_lr, min_lr=0.0):
    if step < warmup:
        return max_lr * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return max_lr * 0.5 * (1 + math.cos(math.pi * progress))
''',
        "no_clamp_after_total": '''
def warmup_cosine(step, warmup, total, max_lr, min_lr=0.0):
    if step < warmup:
        return max_lr * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
''',
        "full_cosine_period": '''
def warmup_cosine(step, warmup, total, max_lr, min_lr=0.0):
    if step < warmup:
        return max_lr * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(2 * math.pi * progress))
''',
    },
    "clip_grad_norm": {
        "norm_of_the_largest_tensor": '''
def clip_grad_norm(grads, max_norm):
    total_norm = max(g.norm() for g in grads)
    coef = min(1.0, max_norm / (float(total_norm) + 1e-6))
    return [g * coef for g in grads], total_norm
''',
        "clips_each_tensor_separately": '''
def clip_grad_norm(grads, max_norm):
    total_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    clipped = []
    for g in grads:
        norm = g.norm()
        clipped.append(g * min(1.0, max_norm / (float(norm) + 1e-6)))
    return clipped, total_norm
''',
        "always_rescales": '''
def clip_grad_norm(grads, max_norm):
    total_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    coef = max_norm / (total_norm + 1e-6)
    return [g * coef for g in grads], total_norm
''',
        "returns_norm_after_clipping": '''
def clip_grad_norm(grads, max_norm):
    total_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    coef = min(1.0, max_norm / (float(total_norm) + 1e-6))
    clipped = [g * coef for g in grads]
    return clipped, torch.sqrt(sum((g**2).sum() for g in clipped))
''',
        "forgets_square_root": '''
def clip_grad_norm(grads, max_norm):
    total_norm = sum((g**2).sum() for g in grads)
    coef = min(1.0, max_norm / (float(total_norm) + 1e-6))
    return [g * coef for g in grads], total_norm
''',
        "clips_in_place": '''
def clip_grad_norm(grads, max_norm):
    total_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    coef = min(1.0, max_norm / (float(total_norm) + 1e-6))
    for g in grads:
        g.mul_(coef)
    return grads, total_norm
''',
    },
    "is_spike": {
        "greater_or_equal_at_threshold": '''
def is_spike(value, history, threshold=6.0, min_history=20):
    if not math.isfinite(value):
        return True
    if len(history) < min_history:
        return False
    mean = sum(history) / len(history)
    std = (sum((h - mean) ** 2 for h in history) / len(history)) ** 0.5
    return value >= mean + threshold * std
''',
        "z_score_at_zero_spread": '''
def is_spike(value, history, threshold=6.0, min_history=20):
    if not math.isfinite(value):
        return True
    if len(history) < min_history:
        return False
    mean = sum(history) / len(history)
    std = (sum((h - mean) ** 2 for h in history) / len(history)) ** 0.5
    z = (value - mean) / std if std > 0 else float("inf")
    return z > threshold
''',
        "two_sided": '''
def is_spike(value, history, threshold=6.0, min_history=20):
    if not math.isfinite(value):
        return True
    if len(history) < min_history:
        return False
    mean = sum(history) / len(history)
    std = (sum((h - mean) ** 2 for h in history) / len(history)) ** 0.5
    return abs(value - mean) > threshold * std
''',
        "nan_is_not_a_spike": '''
def is_spike(value, history, threshold=6.0, min_history=20):
    if len(history) < min_history:
        return False
    mean = sum(history) / len(history)
    std = (sum((h - mean) ** 2 for h in history) / len(history)) ** 0.5
    return value > mean + threshold * std
''',
        "ignores_min_history": '''
def is_spike(value, history, threshold=6.0, min_history=20):
    if not math.isfinite(value):
        return True
    if not history:
        return False
    mean = sum(history) / len(history)
    std = (sum((h - mean) ** 2 for h in history) / len(history)) ** 0.5
    return value > mean + threshold * std
''',
        "sample_standard_deviation": '''
def is_spike(value, history, threshold=6.0, min_history=20):
    if not math.isfinite(value):
        return True
    if len(history) < min_history:
        return False
    h = torch.tensor(history, dtype=torch.float64)
    return value > h.mean().item() + threshold * h.std().item()
''',
        "threshold_not_in_std_units": '''
def is_spike(value, history, threshold=6.0, min_history=20):
    if not math.isfinite(value):
        return True
    if len(history) < min_history:
        return False
    mean = sum(history) / len(history)
    return value > mean + threshold
''',
    },
}
