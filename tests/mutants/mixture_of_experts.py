"""Planted bugs for the chapter 10 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: torch, F = torch.nn.functional).
"""

MUTANTS = {
    "top_k_routing": {
        "no_renormalization_for_one_expert": '''
def top_k_routing(logits, k, renormalize=True):
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    if renormalize and k > 1:  # one expert: nothing to share
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices
''',
        "never_renormalizes": '''
def top_k_routing(logits, k, renormalize=True):
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    return weights, indices
''',
        "softmax_over_the_chosen_logits": '''
def top_k_routing(logits, k, renormalize=True):
    top_logits, indices = torch.topk(logits.float(), k, dim=-1)
    weights = torch.softmax(top_logits, dim=-1)
    return weights, indices
''',
        "softmax_in_the_input_dtype": '''
def top_k_routing(logits, k, renormalize=True):
    probs = torch.softmax(logits, dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.float(), indices
''',
        "softmax_over_tokens": '''
def top_k_routing(logits, k, renormalize=True):
    probs = torch.softmax(logits.float(), dim=0)
    weights, indices = torch.topk(probs, k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices
''',
        "exp_without_max_subtraction": '''
def top_k_routing(logits, k, renormalize=True):
    e = torch.exp(logits.float())
    probs = e / e.sum(dim=-1, keepdim=True)
    weights, indices = torch.topk(probs, k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices
''',
    },
    "load_balancing_loss": {
        "counts_only_the_first_choice": '''
def load_balancing_loss(router_logits, k, n_experts):
    probs = torch.softmax(router_logits.float(), dim=-1).reshape(-1, n_experts)
    first = probs.argmax(dim=-1)
    f = torch.bincount(first, minlength=n_experts).float() / probs.shape[0]
    P = probs.mean(dim=0)
    return n_experts * (f * P).sum()
''',
        "divides_counts_by_n_times_k": '''
def load_balancing_loss(router_logits, k, n_experts):
    probs = torch.softmax(router_logits.float(), dim=-1).reshape(-1, n_experts)
    _, indices = torch.topk(probs, k, dim=-1)
    f = torch.bincount(indices.flatten(), minlength=n_experts).float() / indices.numel()
    P = probs.mean(dim=0)
    return n_experts * (f * P).sum()
''',
        "forgets_the_factor_e": '''
def load_balancing_loss(router_logits, k, n_experts):
    probs = torch.softmax(router_logits.float(), dim=-1).reshape(-1, n_experts)
    _, indices = torch.topk(probs, k, dim=-1)
    f = torch.bincount(indices.flatten(), minlength=n_experts).float() / probs.shape[0]
    P = probs.mean(dim=0)
    return (f * P).sum()
''',
        "p_from_renormalized_top_k": '''
def load_balancing_loss(router_logits, k, n_experts):
    probs = torch.softmax(router_logits.float(), dim=-1).reshape(-1, n_experts)
    top, indices = torch.topk(probs, k, dim=-1)
    f = torch.bincount(indices.flatten(), minlength=n_experts).float() / probs.shape[0]
    gates = torch.zeros_like(probs).scatter(1, indices, top / top.sum(dim=-1, keepdim=True))
    P = gates.mean(dim=0)
    return n_experts * (f * P).sum()
''',
        "returns_a_float": '''
def load_balancing_loss(router_logits, k, n_experts):
    probs = torch.softmax(router_logits.float(), dim=-1).reshape(-1, n_experts)
    _, indices = torch.topk(probs, k, dim=-1)
    f = torch.bincount(indices.flatten(), minlength=n_experts).float() / probs.shape[0]
    P = probs.mean(dim=0)
    return (n_experts * (f * P).sum()).item()
''',
        "forgets_to_flatten_batch_dims": '''
def load_balancing_loss(router_logits, k, n_experts):
    probs = torch.softmax(router_logits.float(), dim=-1)
    _, indices = torch.topk(probs, k, dim=-1)
    f = torch.bincount(indices.flatten(), minlength=n_experts).float() / probs.shape[0]
    P = probs.mean(dim=0)
    return n_experts * (f * P).sum()
''',
    },
    "moe_forward": {
        "float32_output_for_bfloat16": '''
def moe_forward(x, router_weight, w_gate, w_up, w_down, k):
    flat = x.reshape(-1, x.shape[-1])
    weights, indices = top_k_routing(flat @ router_weight.T, k)  # (N, k)
    chosen = torch.zeros(*indices.shape, flat.shape[-1], dtype=x.dtype)  # (N, k, C)
    for e in range(w_gate.shape[0]):
        rows, slot = torch.where(indices == e)
        h = flat[rows]
        chosen[rows, slot] = (F.silu(h @ w_gate[e].T) * (h @ w_up[e].T)) @ w_down[e].T
    return (weights[..., None] * chosen).sum(dim=1).reshape(x.shape)
''',
        "no_renormalization": '''
def moe_forward(x, router_weight, w_gate, w_up, w_down, k):
    h = x.reshape(-1, x.shape[-1])
    probs = torch.softmax((h @ router_weight.t()).float(), dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    out = torch.zeros_like(h)
    for e in range(router_weight.shape[0]):
        rows, choice = torch.where(indices == e)
        xe = h[rows]
        ye = (F.silu(xe @ w_gate[e].t()) * (xe @ w_up[e].t())) @ w_down[e].t()
        out = out.index_add(0, rows, (ye * weights[rows, choice, None]).to(out.dtype))
    return out.reshape(x.shape)
''',
        "gate_and_up_swapped": '''
def moe_forward(x, router_weight, w_gate, w_up, w_down, k):
    h = x.reshape(-1, x.shape[-1])
    probs = torch.softmax((h @ router_weight.t()).float(), dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(h)
    for e in range(router_weight.shape[0]):
        rows, choice = torch.where(indices == e)
        xe = h[rows]
        ye = (F.silu(xe @ w_up[e].t()) * (xe @ w_gate[e].t())) @ w_down[e].t()
        out = out.index_add(0, rows, (ye * weights[rows, choice, None]).to(out.dtype))
    return out.reshape(x.shape)
''',
        "weights_the_input_not_the_output": '''
def moe_forward(x, router_weight, w_gate, w_up, w_down, k):
    h = x.reshape(-1, x.shape[-1])
    probs = torch.softmax((h @ router_weight.t()).float(), dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(h)
    for e in range(router_weight.shape[0]):
        rows, choice = torch.where(indices == e)
        xe = h[rows] * weights[rows, choice, None]
        ye = (F.silu(xe @ w_gate[e].t()) * (xe @ w_up[e].t())) @ w_down[e].t()
        out = out.index_add(0, rows, ye.to(out.dtype))
    return out.reshape(x.shape)
''',
        "mixes_every_expert": '''
def moe_forward(x, router_weight, w_gate, w_up, w_down, k):
    h = x.reshape(-1, x.shape[-1])
    probs = torch.softmax((h @ router_weight.t()).float(), dim=-1)
    out = torch.zeros_like(h)
    for e in range(router_weight.shape[0]):
        ye = (F.silu(h @ w_gate[e].t()) * (h @ w_up[e].t())) @ w_down[e].t()
        out = out + probs[:, e, None] * ye
    return out.reshape(x.shape)
''',
        "only_the_first_choice_is_weighted": '''
def moe_forward(x, router_weight, w_gate, w_up, w_down, k):
    h = x.reshape(-1, x.shape[-1])
    probs = torch.softmax((h @ router_weight.t()).float(), dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(h)
    for e in range(router_weight.shape[0]):
        rows = torch.where(indices[:, 0] == e)[0]
        xe = h[rows]
        ye = (F.silu(xe @ w_gate[e].t()) * (xe @ w_up[e].t())) @ w_down[e].t()
        out = out.index_add(0, rows, (ye * weights[rows, 0, None]).to(out.dtype))
    return out.reshape(x.shape)
''',
    },
}
