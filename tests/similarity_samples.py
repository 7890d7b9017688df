"""Samples for the copy detection (instructor/similarity.py): independent correct solutions, and disguises.

:data:`INDEPENDENT` holds, for nine graded functions, several correct implementations
written independently of each other and of the reference (different algorithms, not
the reference reworded): what honest students hand in. ``tests/test_similarity.py``
checks that each one passes the exercise's hidden test, and that no two of them (nor
any of them and the reference) are listed as copies.

The disguises turn a copied function into what a student who copies hands in:
:func:`rename` (every local name replaced), :func:`add_noise` (comments, blank lines,
a docstring), :func:`reorder` (adjacent independent statements swapped). They work
on the text, so the layout of the rest is kept as written.
"""

from __future__ import annotations

import ast
import io
import tokenize

INDEPENDENT: dict[str, dict[str, str]] = {
    "merge": {
        "skip_flag": '''\
def merge(ids, pair, new_id):
    result = []
    skip = False
    for position, token in enumerate(ids):
        if skip:
            skip = False
            continue
        nxt = ids[position + 1] if position + 1 < len(ids) else None
        if (token, nxt) == tuple(pair):
            result.append(new_id)
            skip = True
        else:
            result.append(token)
    return result
''',
        "stack": '''\
def merge(ids, pair, new_id):
    out, fresh = [], []
    for token in ids:
        if fresh and fresh[-1] and (out[-1], token) == tuple(pair):
            out[-1] = new_id
            fresh[-1] = False
        else:
            out.append(token)
            fresh.append(True)
    return out
''',
        "index_search": '''\
def merge(ids, pair, new_id):
    ids = list(ids)
    merged = []
    start = 0
    while True:
        try:
            hit = ids.index(pair[0], start)
        except ValueError:
            break
        if hit + 1 < len(ids) and ids[hit + 1] == pair[1]:
            merged.extend(ids[start:hit])
            merged.append(new_id)
            start = hit + 2
        else:
            merged.extend(ids[start:hit + 1])
            start = hit + 1
    merged.extend(ids[start:])
    return merged
''',
    },
    "scaled_dot_product_attention": {
        "einsum_stable": '''\
def scaled_dot_product_attention(q, k, v, mask=None):
    scale = q.size(-1) ** -0.5
    logits = torch.einsum("...qd,...kd->...qk", q, k) * scale
    if mask is not None:
        logits = torch.where(mask, logits, torch.full_like(logits, float("-inf")))
    logits = logits - logits.amax(dim=-1, keepdim=True)
    e = logits.exp()
    return torch.einsum("...qk,...kd->...qd", e / e.sum(dim=-1, keepdim=True), v)
''',
        "bmm_flat": '''\
def scaled_dot_product_attention(q, k, v, mask=None):
    *lead, tq, d = q.shape
    tk = k.shape[-2]
    q2 = q.reshape(-1, tq, d)
    k2 = k.expand(*lead, tk, d).reshape(-1, tk, d)
    v2 = v.expand(*lead, tk, v.shape[-1]).reshape(-1, tk, v.shape[-1])
    att = torch.bmm(q2, k2.transpose(1, 2)).div(d ** 0.5).view(*lead, tq, tk)
    if mask is not None:
        att = att + torch.zeros_like(att).masked_fill(~mask, float("-inf"))
    w = F.softmax(att, dim=-1).reshape(-1, tq, tk)
    return torch.bmm(w, v2).view(*lead, tq, v.shape[-1])
''',
    },
    "gae": {
        "per_row_loop": '''\
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    advantages = torch.zeros_like(values)
    n_rows, n_steps = values.shape
    for b in range(n_rows):
        running, value_after = 0.0, 0.0
        for t in range(n_steps - 1, -1, -1):
            if not mask[b, t]:
                running, value_after = 0.0, 0.0
                continue
            delta = rewards[b, t] + gamma * value_after - values[b, t]
            running = delta + gamma * lam * running
            advantages[b, t] = running
            value_after = values[b, t]
    returns = torch.where(mask.bool(), advantages + values, torch.zeros_like(values))
    return advantages, returns
''',
        "deltas_then_scan": '''\
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    keep = mask.bool()
    zero = torch.zeros_like(values)
    v_next = torch.cat([torch.where(keep, values, zero)[:, 1:], zero[:, :1]], dim=1)
    delta = torch.where(keep, rewards + gamma * v_next - values, zero)
    carry = zero[:, 0]
    columns = []
    for d, k in zip(delta.flip(1).unbind(1), keep.flip(1).unbind(1)):
        carry = torch.where(k, d + gamma * lam * carry, torch.zeros_like(carry))
        columns.append(carry)
    adv = torch.stack(columns[::-1], dim=1)
    return adv, torch.where(keep, adv + values, zero)
''',
    },
    "top_p_filter": {
        "min_of_kept": '''\
def top_p_filter(logits, top_p):
    if top_p <= 0 or top_p > 1:
        raise ValueError(f"top_p should be in (0, 1], got {top_p}")
    if top_p == 1:
        return logits.clone()
    probs = torch.softmax(logits.float(), dim=-1)
    desc = torch.sort(probs, dim=-1, descending=True)[0]
    above = torch.cumsum(desc, dim=-1) - desc
    cutoff = torch.where(above < top_p, desc, torch.ones_like(desc)).amin(dim=-1, keepdim=True)
    return torch.where(probs >= cutoff, logits, torch.full_like(logits, -float("inf")))
''',
        "scatter_back": '''\
def top_p_filter(logits, top_p):
    if not (0.0 < top_p <= 1.0):
        raise ValueError("top_p must lie in (0, 1]")
    p = F.softmax(logits.double(), dim=-1)
    ranked, order = p.sort(dim=-1, descending=True)
    drop_ranked = ranked.cumsum(-1) - ranked >= top_p
    threshold = ranked.masked_fill(drop_ranked, 2.0).min(-1, keepdim=True).values
    drop = torch.zeros_like(drop_ranked).scatter(-1, order, drop_ranked) & (p < threshold)
    result = logits.clone()
    result[drop] = float("-inf")
    return result
''',
    },
    "get_pair_counts": {
        "counter": '''\
def get_pair_counts(ids):
    from collections import Counter

    return dict(Counter(zip(ids, ids[1:])))
''',
        "if_else_index": '''\
def get_pair_counts(ids):
    result = {}
    for i in range(1, len(ids)):
        key = (ids[i - 1], ids[i])
        if key in result:
            result[key] += 1
        else:
            result[key] = 1
    return result
''',
    },
    "ppo_clip_loss": {
        "max_of_negatives": '''\
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    r = (logprobs - old_logprobs).exp()
    unclipped = -advantages * r
    clipped = -advantages * torch.clamp(r, 1.0 - clip, 1.0 + clip)
    per_token = torch.max(unclipped, clipped)
    return per_token[mask.bool()].mean()
''',
        "sign_cases": '''\
def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    capped = torch.where(advantages >= 0, ratio.clamp(max=1 + clip), ratio.clamp(min=1 - clip))
    objective = capped * advantages
    weights = mask.to(objective.dtype)
    return -(objective * weights).sum() / weights.sum()
''',
    },
    "cross_entropy": {
        "row_loop": '''\
def cross_entropy(logits, targets, ignore_index=-100):
    losses = []
    for row, target in zip(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).tolist()):
        if target == ignore_index:
            continue
        top = row.max()
        losses.append(top + (row - top).exp().sum().log() - row[target])
    if not losses:
        return logits.new_tensor(float("nan"))
    return torch.stack(losses).mean()
''',
        "one_hot": '''\
def cross_entropy(logits, targets, ignore_index=-100):
    flat = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    keep = t != ignore_index
    shifted = flat - flat.amax(dim=1, keepdim=True)
    log_z = shifted.exp().sum(dim=1).log()
    onehot = torch.zeros_like(flat).scatter_(1, t.clamp(min=0).unsqueeze(1), 1.0)
    nll = log_z - (shifted * onehot).sum(dim=1)
    return nll[keep].sum() / keep.sum()
''',
    },
    "rnn_gradient_norms": {
        "autograd": '''\
def rnn_gradient_norms(W_hh, W_xh, xs, h0):
    with torch.enable_grad():
        h = h0.detach().clone().requires_grad_(True)
        hidden = []
        for x in xs:
            h = torch.tanh(W_hh.detach() @ h + W_xh.detach() @ x)
            h.retain_grad()
            hidden.append(h)
        hidden[-1].sum().backward()
    return [state.grad.norm().item() for state in hidden]
''',
        "cosh_jacobian": '''\
def rnn_gradient_norms(W_hh, W_xh, xs, h0):
    pre = []
    h = h0
    for x in xs:
        a = W_hh @ h + W_xh @ x
        h = a.tanh()
        pre.append(a)
    grad = torch.ones(h.shape, dtype=h.dtype)
    out = []
    for a in reversed(pre):
        out.append(float(torch.linalg.vector_norm(grad)))
        grad = W_hh.T @ (grad / torch.cosh(a) ** 2)
    return list(reversed(out))
''',
    },
    "fit_power_law": {
        "sums": '''\
def fit_power_law(x, y):
    u = [math.log(v) for v in x]
    w = [math.log(v) for v in y]
    n = len(u)
    su, sw = sum(u), sum(w)
    suu = sum(a * a for a in u)
    suw = sum(a * b for a, b in zip(u, w))
    slope = (n * suw - su * sw) / (n * suu - su * su)
    return math.exp((sw - slope * su) / n), slope
''',
        "normal_equations": '''\
def fit_power_law(x, y):
    design = np.column_stack([np.ones(len(x)), np.log(np.array(x, dtype=np.float64))])
    target = np.log(np.array(y, dtype=np.float64))
    intercept, exponent = np.linalg.solve(design.T @ design, design.T @ target)
    return float(np.exp(intercept)), float(exponent)
''',
    },
}


# --------------------------------------------------------------------------- disguises
def _locals(source: str) -> list[str]:
    """Parameters and assigned names of the functions in `source`, in order of appearance."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.arg):
            names.append(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append(node.id)
    return list(dict.fromkeys(names))


def rename(source: str, style: str = "short") -> str:
    """Every parameter and local variable renamed (the function's own name kept: the grader needs it)."""
    mapping = {name: (f"{name[0]}{i}" if style == "short" else f"my_{name}_value") for i, name in enumerate(_locals(source))}
    lines = source.splitlines(keepends=True)
    previous = None
    hits = []  # (row, col, old name): a name token that is not an attribute (after a dot)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string in mapping and not (previous and previous.string == "."):
            hits.append((tok.start[0] - 1, tok.start[1], tok.string))
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            previous = tok
    for row, col, name in reversed(hits):
        lines[row] = lines[row][:col] + mapping[name] + lines[row][col + len(name):]
    return "".join(lines)


def add_noise(source: str) -> str:
    """A docstring, a comment above every other line, trailing comments and blank lines."""
    out = []
    lines = source.splitlines()
    for i, line in enumerate(lines):
        indent = line[: len(line) - len(line.lstrip())]
        if i and i % 2 == 0 and line.strip():
            out += ["", f"{indent}# step {i}: this is where the work happens"]
        out.append(line + ("  # my own idea" if line.rstrip().endswith(")") else ""))
        if i == 0 and line.lstrip().startswith("def "):
            out.append(f'{indent}    """My implementation, written from scratch for the exercise."""')
    return "\n".join(out) + "\n"


def reorder(source: str) -> str | None:
    """The first two adjacent independent simple statements swapped (None when there are none)."""
    from instructor.similarity import SIMPLE, _names

    tree = ast.parse(source)
    lines = source.splitlines()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for first, second in zip(body, body[1:]):
            if not (isinstance(first, SIMPLE) and isinstance(second, SIMPLE)):
                continue
            (used1, changed1), (used2, changed2) = _names(first), _names(second)
            if changed1 & used2 or changed2 & used1:
                continue
            a = lines[first.lineno - 1: first.end_lineno]
            b = lines[second.lineno - 1: second.end_lineno]
            swapped = lines[: first.lineno - 1] + b + a + lines[second.end_lineno:]
            return "\n".join(swapped) + "\n"
    return None


DISGUISES = {
    "verbatim": lambda s: s,
    "renamed": rename,
    "renamed_long": lambda s: rename(s, "long"),
    "comments": add_noise,
    "reordered": lambda s: reorder(s) or s,
    "all_of_them": lambda s: add_noise(rename(reorder(s) or s)),
}
