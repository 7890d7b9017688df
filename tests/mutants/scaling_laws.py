"""Planted bugs for the chapter 07 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the names the notebook's setup cell imports).
"""

MUTANTS = {
    "flops_per_token": {
        "head_only_when_untied": '''
def flops_per_token(config, include_head=False):
    n = non_embedding_parameters(config)
    forward = 2 * n + 2 * config.n_layers * config.context_length * config.d_model
    if include_head and not config.tie_embeddings:
        forward += 2 * config.d_model * config.vocab_size
    return 3 * forward
''',
        "counts_the_position_table": '''
def flops_per_token(config, include_head=False):
    n = non_embedding_parameters(config)
    if config.position == "learned":
        n += config.context_length * config.d_model  # the position table is a parameter too
    forward = 2 * n + 2 * config.n_layers * config.context_length * config.d_model
    if include_head:
        forward += 2 * config.d_model * config.vocab_size
    return 3 * forward
''',
        "forward_only": '''
def flops_per_token(config, include_head=False):
    n = non_embedding_parameters(config)
    forward = 2 * n + 2 * config.n_layers * config.context_length * config.d_model
    if include_head:
        forward += 2 * config.d_model * config.vocab_size
    return forward
''',
        "no_attention_term": '''
def flops_per_token(config, include_head=False):
    n = non_embedding_parameters(config)
    forward = 2 * n
    if include_head:
        forward += 2 * config.d_model * config.vocab_size
    return 3 * forward
''',
        "full_square_attention": '''
def flops_per_token(config, include_head=False):
    n = non_embedding_parameters(config)
    forward = 2 * n + 4 * config.n_layers * config.context_length * config.d_model
    if include_head:
        forward += 2 * config.d_model * config.vocab_size
    return 3 * forward
''',
        "head_always_counted": '''
def flops_per_token(config, include_head=False):
    n = non_embedding_parameters(config)
    forward = 2 * n + 2 * config.n_layers * config.context_length * config.d_model
    forward += 2 * config.d_model * config.vocab_size
    return 3 * forward
''',
        "all_parameters": '''
from llm_course.transformer import count_parameters

def flops_per_token(config, include_head=False):
    n = count_parameters(config)
    forward = 2 * n + 2 * config.n_layers * config.context_length * config.d_model
    if include_head:
        forward += 2 * config.d_model * config.vocab_size
    return 3 * forward
''',
    },
    "fit_power_law": {
        "sorts_x_but_not_y": '''
def fit_power_law(x, y):
    log_x = np.log(np.sort(np.asarray(x, dtype=float)))
    log_y = np.log(np.asarray(y, dtype=float))
    dx = log_x - log_x.mean()
    b = (dx * (log_y - log_y.mean())).sum() / (dx**2).sum()
    a = np.exp(log_y.mean() - b * log_x.mean())
    return float(a), float(b)
''',
        "returns_log_coefficient": '''
def fit_power_law(x, y):
    log_x = np.log(np.asarray(x, dtype=float))
    log_y = np.log(np.asarray(y, dtype=float))
    b, log_a = np.polyfit(log_x, log_y, 1)
    return float(log_a), float(b)
''',
        "swapped_outputs": '''
def fit_power_law(x, y):
    log_x = np.log(np.asarray(x, dtype=float))
    log_y = np.log(np.asarray(y, dtype=float))
    b, log_a = np.polyfit(log_x, log_y, 1)
    return float(b), float(np.exp(log_a))
''',
        "end_points_only": '''
def fit_power_law(x, y):
    log_x = np.log(np.asarray(x, dtype=float))
    log_y = np.log(np.asarray(y, dtype=float))
    b = (log_y[-1] - log_y[0]) / (log_x[-1] - log_x[0])
    return float(np.exp(log_y[0] - b * log_x[0])), float(b)
''',
        "regresses_x_on_y": '''
def fit_power_law(x, y):
    log_x = np.log(np.asarray(x, dtype=float))
    log_y = np.log(np.asarray(y, dtype=float))
    slope, intercept = np.polyfit(log_y, log_x, 1)   # log x = slope log y + intercept
    b = 1 / slope
    return float(np.exp(-intercept / slope)), float(b)
''',
        "linear_space": '''
def fit_power_law(x, y):
    b, a = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return float(a), float(b)
''',
        "positive_exponent": '''
def fit_power_law(x, y):
    log_x = np.log(np.asarray(x, dtype=float))
    log_y = np.log(np.asarray(y, dtype=float))
    b, log_a = np.polyfit(log_x, log_y, 1)
    return float(np.exp(log_a)), float(abs(b))
''',
    },
    "chinchilla_optimal": {
        "G_without_the_exponent_sum": '''
def chinchilla_optimal(compute, law=CHINCHILLA):
    s = law.alpha + law.beta
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (2 * law.alpha))
    n_opt = G * (compute / 6) ** (law.beta / s)
    d_opt = (compute / 6) ** (law.alpha / s) / G
    return n_opt, d_opt
''',
        "exponents_swapped": '''
def chinchilla_optimal(compute, law=CHINCHILLA):
    s = law.alpha + law.beta
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / s)
    n_opt = G * (compute / 6) ** (law.alpha / s)
    d_opt = (compute / 6) ** (law.beta / s) / G
    return n_opt, d_opt
''',
        "G_inverted": '''
def chinchilla_optimal(compute, law=CHINCHILLA):
    s = law.alpha + law.beta
    G = (law.beta * law.B / (law.alpha * law.A)) ** (1 / s)
    n_opt = G * (compute / 6) ** (law.beta / s)
    d_opt = (compute / 6) ** (law.alpha / s) / G
    return n_opt, d_opt
''',
        "forgot_the_six": '''
def chinchilla_optimal(compute, law=CHINCHILLA):
    s = law.alpha + law.beta
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / s)
    n_opt = G * compute ** (law.beta / s)
    d_opt = compute ** (law.alpha / s) / G
    return n_opt, d_opt
''',
        "twenty_tokens_rule": '''
def chinchilla_optimal(compute, law=CHINCHILLA):
    n_opt = (compute / 120) ** 0.5
    return n_opt, 20 * n_opt
''',
        "d_from_budget_without_six": '''
def chinchilla_optimal(compute, law=CHINCHILLA):
    s = law.alpha + law.beta
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / s)
    n_opt = G * (compute / 6) ** (law.beta / s)
    return n_opt, compute / n_opt
''',
    },
}
