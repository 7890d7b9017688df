"""Planted bugs for the chapter 12 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: math, torch, F).
"""

MUTANTS = {
    "pairwise_loss": {
        "sign_flipped": '''
def pairwise_loss(r_chosen, r_rejected):
    return -F.logsigmoid(r_rejected - r_chosen).mean()
''',
        "log_of_sigmoid_overflows": '''
def pairwise_loss(r_chosen, r_rejected):
    return -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean()
''',
        "sum_instead_of_mean": '''
def pairwise_loss(r_chosen, r_rejected):
    return -F.logsigmoid(r_chosen - r_rejected).sum()
''',
        "sigmoid_without_log": '''
def pairwise_loss(r_chosen, r_rejected):
    return (1 - torch.sigmoid(r_chosen - r_rejected)).mean()
''',
        "softplus_by_hand_overflows": '''
def pairwise_loss(r_chosen, r_rejected):
    return torch.log(1 + torch.exp(r_rejected - r_chosen)).mean()
''',
    },
    "gae": {
        "next_value_by_roll": '''
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    m = mask.to(values.dtype)
    next_values = torch.roll(values * m, shifts=-1, dims=1)  # V_{t+1}, 0 after the last token
    deltas = (rewards + gamma * next_values - values) * m
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        last = (deltas[:, t] + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * m
''',
        "forward_recursion": '''
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    m = mask.to(values.dtype)
    B, T = values.shape
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in range(T):
        next_value = values[:, t + 1] * m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * m
''',
        "missing_lam": '''
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    m = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * next_advantage) * m[:, t]
        next_value = values[:, t] * m[:, t]
        next_advantage = advantages[:, t]
    return advantages, (advantages + values) * m
''',
        "bootstraps_from_padding": '''
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    m = mask.to(values.dtype)
    B, T = values.shape
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * m
''',
        "returns_are_advantages": '''
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    m = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m[:, t]
        next_value = values[:, t] * m[:, t]
        next_advantage = advantages[:, t]
    return advantages, advantages.clone()
''',
        "ignores_mask": '''
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = delta + gamma * lam * next_advantage
        next_value = values[:, t]
        next_advantage = advantages[:, t]
    return advantages, advantages + values
''',
        "float32_buffers": '''
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    B, T = values.shape
    m = mask.float()
    advantages = torch.zeros(B, T)
    next_value = torch.zeros(B)
    next_advantage = torch.zeros(B)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m[:, t]
        next_value = values[:, t] * m[:, t]
        next_advantage = advantages[:, t]
    return advantages, (advantages + values) * m
''',
    },
    "ppo_clip_loss": {
        "indexes_with_the_mask": '''
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    objective = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -objective[mask].mean()
''',
        "max_instead_of_min": '''
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.maximum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    m = mask.float()
    return -(surrogate * m).sum() / m.sum()
''',
        "clips_the_advantage": '''
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.minimum(ratio * advantages, ratio * advantages.clamp(1 - clip, 1 + clip))
    m = mask.float()
    return -(surrogate * m).sum() / m.sum()
''',
        "ratio_not_exponentiated": '''
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    ratio = logprobs - old_logprobs
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    m = mask.float()
    return -(surrogate * m).sum() / m.sum()
''',
        "mean_over_padding": '''
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -(surrogate * mask).mean()
''',
        "sign_flipped": '''
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    m = mask.float()
    return (surrogate * m).sum() / m.sum()
''',
        "ratio_without_gradient": '''
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    with torch.no_grad():
        ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    m = mask.float()
    return -(surrogate * m).sum() / m.sum()
''',
    },
    "dpo_loss": {
        "beta_outside_logsigmoid": '''
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -beta * F.logsigmoid(margin).mean()
''',
        "reference_added": '''
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    margin = (policy_chosen + ref_chosen) - (policy_rejected + ref_rejected)
    return -F.logsigmoid(beta * margin).mean()
''',
        "chosen_rejected_swapped": '''
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    margin = (policy_rejected - ref_rejected) - (policy_chosen - ref_chosen)
    return -F.logsigmoid(beta * margin).mean()
''',
        "sum_instead_of_mean": '''
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).sum()
''',
        "missing_reference": '''
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    return -F.logsigmoid(beta * (policy_chosen - policy_rejected)).mean()
''',
        "log_of_sigmoid_overflows": '''
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -torch.log(torch.sigmoid(margin)).mean()
''',
    },
}
