"""Planted bugs for the chapter 11 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: math, torch, F).
"""

MUTANTS = {
    "masked_sft_loss": {
        "indexes_with_the_mask": '''
def masked_sft_loss(logits, targets, response_mask):
    log_probs = F.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return -picked[response_mask].mean()
''',
        "mean_over_all_positions": '''
def masked_sft_loss(logits, targets, response_mask):
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return nll.mean()
''',
        "loss_on_the_prompt": '''
def masked_sft_loss(logits, targets, response_mask):
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return nll[~response_mask.bool()].mean()
''',
        "divides_by_all_positions": '''
def masked_sft_loss(logits, targets, response_mask):
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (nll * response_mask.float()).sum() / nll.numel()
''',
        "mean_per_sequence": '''
def masked_sft_loss(logits, targets, response_mask):
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    m = response_mask.float()
    return ((nll * m).sum(-1) / m.sum(-1)).mean()
''',
        "log_of_softmax_overflows": '''
def masked_sft_loss(logits, targets, response_mask):
    p = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    nll = -torch.log(p.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    return nll[response_mask.bool()].mean()
''',
    },
    "lora_forward": {
        "flattens_the_leading_dimensions": '''
def lora_forward(x, weight, bias, A, B, scale):
    flat = x.flatten(0, -2)  # (N, in)
    y = flat @ weight.T + scale * (flat @ A.T) @ B.T
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])
''',
        "no_scale": '''
def lora_forward(x, weight, bias, A, B, scale):
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y + (x @ A.T) @ B.T
''',
        "scale_on_everything": '''
def lora_forward(x, weight, bias, A, B, scale):
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return scale * (y + (x @ A.T) @ B.T)
''',
        "bias_forgotten": '''
def lora_forward(x, weight, bias, A, B, scale):
    return x @ weight.T + scale * (x @ A.T) @ B.T
''',
        "weight_not_transposed": '''
def lora_forward(x, weight, bias, A, B, scale):
    y = x @ weight
    if bias is not None:
        y = y + bias
    return y + scale * (x @ A.T) @ B.T
''',
        "detached_adapter": '''
def lora_forward(x, weight, bias, A, B, scale):
    y = F.linear(x, weight, bias)
    return y + scale * (x @ A.detach().T) @ B.detach().T
''',
    },
    "merge_weight": {
        "no_scale": '''
def merge_weight(weight, A, B, scale):
    return weight + B @ A
''',
        "transposed_update": '''
def merge_weight(weight, A, B, scale):
    return weight + scale * (A.T @ B.T)
''',
        "in_place": '''
def merge_weight(weight, A, B, scale):
    weight += scale * (B @ A)
    return weight
''',
        "scale_on_weight": '''
def merge_weight(weight, A, B, scale):
    return scale * (weight + B @ A)
''',
    },
}
