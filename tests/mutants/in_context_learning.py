"""Planted bugs for the chapter 15 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the names the notebook's setup cell imports).
"""

MUTANTS = {
    "induction_score": {
        "first_occurrence": '''
def induction_score(attention, tokens):
    B, H, T, _ = attention.shape
    total = torch.zeros(H, dtype=torch.float64)
    count = 0
    for b in range(B):
        first_seen = {}
        for i in range(T):
            token = int(tokens[b, i])
            if token in first_seen:
                total += attention[b, :, i, first_seen[token] + 1].double()
                count += 1
            else:
                first_seen[token] = i
    if count == 0:
        raise ValueError("no repeated tokens")
    return (total / count).to(attention.dtype)
''',
        "attends_to_the_occurrence_itself": '''
def induction_score(attention, tokens):
    B, H, T, _ = attention.shape
    total = torch.zeros(H, dtype=torch.float64)
    count = 0
    for b in range(B):
        last_seen = {}
        for i in range(T):
            token = int(tokens[b, i])
            if token in last_seen:
                total += attention[b, :, i, last_seen[token]].double()
                count += 1
            last_seen[token] = i
    if count == 0:
        raise ValueError("no repeated tokens")
    return (total / count).to(attention.dtype)
''',
        "new_tokens_count_as_zero": '''
def induction_score(attention, tokens):
    B, H, T, _ = attention.shape
    total = torch.zeros(H, dtype=torch.float64)
    repeats = 0
    for b in range(B):
        last_seen = {}
        for i in range(T):
            token = int(tokens[b, i])
            if token in last_seen:
                total += attention[b, :, i, last_seen[token] + 1].double()
                repeats += 1
            last_seen[token] = i
    if repeats == 0:
        raise ValueError("no repeated tokens")
    return (total / (B * T)).to(attention.dtype)
''',
        "mean_of_sequence_means": '''
def induction_score(attention, tokens):
    B, H, T, _ = attention.shape
    means = []
    for b in range(B):
        total, count, last_seen = torch.zeros(H, dtype=torch.float64), 0, {}
        for i in range(T):
            token = int(tokens[b, i])
            if token in last_seen:
                total += attention[b, :, i, last_seen[token] + 1].double()
                count += 1
            last_seen[token] = i
        if count:
            means.append(total / count)
    if not means:
        raise ValueError("no repeated tokens")
    return torch.stack(means).mean(0).to(attention.dtype)
''',
        "vectorized_with_earliest_match": '''
def induction_score(attention, tokens):
    B, H, T, _ = attention.shape
    same = tokens[:, :, None] == tokens[:, None, :]
    earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)
    candidates = same & earlier
    has_previous = candidates.any(-1)
    if not has_previous.any():
        raise ValueError("no repeated tokens")
    previous = candidates.float().argmax(-1)  # argmax returns the FIRST True: the earliest occurrence
    target = (previous + 1).clamp(max=T - 1)
    weight = attention.gather(-1, target[:, None, :, None].expand(B, H, T, 1))[..., 0]
    mask = has_previous[:, None, :].to(weight.dtype)
    return (weight * mask).sum((0, 2)) / mask.sum((0, 2))
''',
        "no_error_without_repeats": '''
def induction_score(attention, tokens):
    B, H, T, _ = attention.shape
    total = torch.zeros(H, dtype=torch.float64)
    count = 0
    for b in range(B):
        last_seen = {}
        for i in range(T):
            token = int(tokens[b, i])
            if token in last_seen:
                total += attention[b, :, i, last_seen[token] + 1].double()
                count += 1
            last_seen[token] = i
    return (total / max(count, 1)).to(attention.dtype)
''',
    },
    "score_answers": {
        "one_position_late": '''
def score_answers(model, prompts, answers):
    m = answers.shape[1]
    ids = torch.cat([prompts, answers], dim=1)
    logits = model(ids)[:, -m:].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    token_ll = log_probs.gather(-1, answers.unsqueeze(-1)).squeeze(-1)
    return token_ll.mean(dim=1), (logits.argmax(-1) == answers).all(dim=1)
''',
        "no_teacher_forcing": '''
def score_answers(model, prompts, answers):
    m = answers.shape[1]
    logits = model(prompts)[:, -1:].float().expand(-1, m, -1)
    log_probs = torch.log_softmax(logits, dim=-1)
    token_ll = log_probs.gather(-1, answers.unsqueeze(-1)).squeeze(-1)
    return token_ll.mean(dim=1), (logits.argmax(-1) == answers).all(dim=1)
''',
        "summed_log_likelihood": '''
def score_answers(model, prompts, answers):
    m = answers.shape[1]
    ids = torch.cat([prompts, answers[:, :-1]], dim=1)
    logits = model(ids)[:, -m:].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    token_ll = log_probs.gather(-1, answers.unsqueeze(-1)).squeeze(-1)
    return token_ll.sum(dim=1), (logits.argmax(-1) == answers).all(dim=1)
''',
        "any_token_is_a_match": '''
def score_answers(model, prompts, answers):
    m = answers.shape[1]
    ids = torch.cat([prompts, answers[:, :-1]], dim=1)
    logits = model(ids)[:, -m:].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    token_ll = log_probs.gather(-1, answers.unsqueeze(-1)).squeeze(-1)
    return token_ll.mean(dim=1), (logits.argmax(-1) == answers).any(dim=1)
''',
        "mean_probability": '''
def score_answers(model, prompts, answers):
    m = answers.shape[1]
    ids = torch.cat([prompts, answers[:, :-1]], dim=1)
    logits = model(ids)[:, -m:].float()
    probs = torch.softmax(logits, dim=-1)
    token_p = probs.gather(-1, answers.unsqueeze(-1)).squeeze(-1)
    return token_p.mean(dim=1), (logits.argmax(-1) == answers).all(dim=1)
''',
        "first_token_decides": '''
def score_answers(model, prompts, answers):
    m = answers.shape[1]
    ids = torch.cat([prompts, answers[:, :-1]], dim=1)
    logits = model(ids)[:, -m:].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    token_ll = log_probs.gather(-1, answers.unsqueeze(-1)).squeeze(-1)
    return token_ll.mean(dim=1), logits[:, 0].argmax(-1) == answers[:, 0]
''',
    },
}
