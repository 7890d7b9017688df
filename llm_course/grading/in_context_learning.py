"""Checks for the chapter 15 exercises (in-context learning and emergence).

The student writes, with the signatures of :mod:`llm_course.icl`:

- ``induction_score(attention, tokens) -> (H,) tensor``
  (for every position i whose token occurred before, the attention weight from i to j + 1, j the
  most recent earlier occurrence of the token; averaged over all such positions of the batch)
- ``score_answers(model, prompts, answers) -> (log_likelihood (B,), exact_match (B,) bool)``
  (teacher forcing: the model reads the prompt and the answer's first m - 1 tokens; the mean
  per-token log-likelihood of the answer, and whether every answer token is the top prediction)

Each ``check_*`` runs hand-worked examples (``hidden=False``, the visible test cell) or seeded
random cases and edge cases compared with the reference (``hidden=True``, the hidden test cell).
When a result differs, the check compares it with what the usual mistakes give (the first
occurrence instead of the latest, the previous occurrence itself instead of the token after it,
an answer shifted by one position, a sum instead of a mean, ...) and says which one it looks like.
No model is trained while grading: the models are small random transformers and stand-ins.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import nn

from llm_course import icl
from llm_course.grading import call, expect_tensor, expect_value_error, fail, first_difference, forbid_reference, one_thread, passed, seeded, short
from llm_course.grading.edges import edge
from llm_course.transformer import Transformer, TransformerConfig


# --------------------------------------------------------------------------- induction_score
def _loop_score(attention: torch.Tensor, tokens: torch.Tensor, target: Callable, average: str = "positions") -> torch.Tensor:
    """A score computed with loops: `target(previous occurrences, i)` picks the key position (or None).

    average="positions": over all counted (b, i); "rows": mean of each sequence's mean;
    "all": positions without a previous occurrence count as 0.
    """
    B, H, T, _ = attention.shape
    per_row, total, count = [], torch.zeros(H, dtype=torch.float64), 0
    for b in range(B):
        row_total, row_count = torch.zeros(H, dtype=torch.float64), 0
        for i in range(T):
            previous = [j for j in range(i) if tokens[b, j] == tokens[b, i]]
            k = target(previous, i) if previous else None
            if k is not None and 0 <= k < T:
                row_total += attention[b, :, i, k].double()
            if previous or average == "all":
                row_count += 1
        total, count = total + row_total, count + row_count
        if row_count:
            per_row.append(row_total / row_count)
    if average == "rows":
        return torch.stack(per_row).mean(0)
    return total / max(count, 1)


_SCORE_MISTAKES = [
    (lambda prev, i: prev[0] + 1, "positions",
     "that uses the FIRST earlier occurrence of the token; use the most recent one (the last j < i with the same token)"),
    (lambda prev, i: prev[-1], "positions",
     "that is the attention to the previous occurrence itself (a duplicate-token head); "
     "an induction head attends to the token AFTER it, j + 1"),
    (lambda prev, i: i - 1, "positions",
     "that is the attention to the previous position i - 1 (a previous-token head); "
     "use j + 1, the token after the earlier occurrence"),
    (lambda prev, i: prev[-1] + 1, "all",
     "positions whose token has no earlier occurrence were counted (as 0) in the mean; leave them out"),
    (lambda prev, i: prev[-1] + 1, "rows",
     "that is the mean of each sequence's mean; average over all counted positions of the batch together"),
]


def _score_hint(attention, tokens, got: torch.Tensor) -> str:
    for target, average, hint in _SCORE_MISTAKES:
        value = _loop_score(attention, tokens, target, average)
        if got.shape == value.shape and torch.allclose(got.double(), value, atol=1e-5):
            return f" It looks like {hint}."
    return ""


def _compare_score(fn, attention: torch.Tensor, tokens: torch.Tensor, what: str = "") -> None:
    want = icl.induction_score(attention, tokens)
    got = expect_tensor(fn, call(fn, attention, tokens), "the score of each head, shape (H,)")
    args = f"induction_score(attention of shape {tuple(attention.shape)}, tokens={short(tokens.tolist(), 80)}){what}"
    if got.shape != want.shape:
        hint = " (average over the batch and the positions: one number per head)" if got.dim() > 1 else ""
        fail(f"{args} should have shape {tuple(want.shape)} (one score per head), got {tuple(got.shape)}{hint}")
    if not torch.is_floating_point(got):
        fail(f"{args} should be a float tensor (attention weights averaged), got {got.dtype}")
    if not torch.allclose(got.double(), want.double(), atol=1e-5):
        fail(f"{args}: {first_difference(got, want)} (expected {short(want.tolist(), 80)}).{_score_hint(attention, tokens, got)}")


def _causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    T = scores.shape[-1]
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def _worked_attention() -> tuple[torch.Tensor, torch.Tensor]:
    """The notebook's example: tokens 5 6 7 5 6 7; head 0 a perfect induction head, head 1 a previous-token head."""
    tokens = torch.tensor([[5, 6, 7, 5, 6, 7]])
    attention = torch.zeros(1, 2, 6, 6)
    for i in range(6):
        attention[0, 0, i, i - 2 if i >= 3 else 0] = 1.0  # previous copy of token i is at i - 3: attend to i - 2
        attention[0, 1, i, max(i - 1, 0)] = 1.0
    return attention, tokens


def check_induction_score(fn, hidden: bool = False) -> None:
    """induction_score(attention (B, H, T, T), tokens (B, T)) -> (H,): mean attention from i to j + 1.

    Edges the exercise defines, all in the hidden test: a token seen twice before (the most recent
    occurrence counts); a token repeated at once (j = i - 1, so j + 1 = i: the attention to itself);
    positions whose token is new are left out of the mean, also when a whole sequence of the batch
    has no repeat; float64 attention; no repeat anywhere raises ValueError.
    """
    forbid_reference(fn, icl.induction_score)
    with one_thread():
        _check_induction_score(fn, hidden)


def _check_induction_score(fn, hidden: bool) -> None:
    if not hidden:
        attention, tokens = _worked_attention()
        _compare_score(fn, attention, tokens, " (the worked example: scores [1, 0])")
        causal_uniform = _causal_softmax(torch.zeros(1, 1, 6, 6))
        _compare_score(fn, causal_uniform, tokens, " (uniform causal attention: (1/4 + 1/5 + 1/6) / 3)")
        g = seeded(150)
        tokens = torch.tensor([[1, 2, 1, 1, 3, 2, 1, 4]])  # a token seen twice, an immediate repeat
        _compare_score(fn, _causal_softmax(torch.randn(1, 3, 8, 8, generator=g)), tokens, " (repeats of all kinds)")
        passed(fn, "the worked example, uniform attention and a sequence with every kind of repeat are right")
        return
    g = seeded(151)
    cases = 0
    for B, H, T, vocab in [(1, 1, 2, 1), (2, 2, 10, 3), (3, 4, 16, 5), (4, 3, 30, 12), (2, 8, 24, 40), (5, 2, 12, 4)]:
        tokens = torch.randint(0, vocab, (B, T), generator=g)
        if not (tokens[:, :, None] == tokens[:, None, :]).tril(-1).any():
            tokens[0, -1] = tokens[0, 0]
        _compare_score(fn, _causal_softmax(torch.randn(B, H, T, T, generator=g) * 2), tokens)
        cases += 1
    repeated = icl.repeated_random_tokens(4, 10, range(50), g, bos=99)  # what the chapter measures on
    _compare_score(fn, _causal_softmax(torch.randn(4, 2, 21, 21, generator=g)), repeated, " (repeated random tokens)")
    edges = {
        "a token seen twice before: the most recent occurrence counts": torch.tensor([[7, 8, 7, 9, 7, 8]]),
        "a token repeated at once: j + 1 = i, the attention to itself": torch.tensor([[4, 4, 5, 5, 5, 6]]),
        "a sequence of the batch without any repeat": torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 1, 2, 3, 3]]),
    }
    for name, tokens in edges.items():
        with edge(name):
            B, T = tokens.shape
            _compare_score(fn, _causal_softmax(torch.randn(B, 2, T, T, generator=g)), tokens)
    with edge("float64 attention"):
        tokens = torch.randint(0, 4, (2, 9), generator=g)
        _compare_score(fn, _causal_softmax(torch.randn(2, 3, 9, 9, generator=g, dtype=torch.float64)), tokens)
    with edge("no token repeats: raise ValueError"):
        expect_value_error(fn, (_causal_softmax(torch.zeros(1, 1, 4, 4)), torch.tensor([[1, 2, 3, 4]])),
                           "induction_score with tokens [[1, 2, 3, 4]] (no repeats) should raise ValueError")
    cases += len(edges) + 3
    passed(fn, f"all {cases} random and edge cases (1 .. 5 sequences, 1 .. 8 heads, immediate and multiple repeats) match")


# --------------------------------------------------------------------------- score_answers
class _BigramModel(nn.Module):
    """A stand-in language model whose logits at a position depend only on the token there: table[token]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)  # (V, V)
        self.config = types.SimpleNamespace(vocab_size=table.shape[0], context_length=64)

    def forward(self, idx: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.table[idx]  # (B, T, V)


def _random_transformer(seed: int, **changes) -> Transformer:
    """A small random transformer with weights 10x GPT-2's: its predictions depend on the context."""
    sizes = dict(vocab_size=24, context_length=24, d_model=16, n_layers=2, n_heads=2)
    model = Transformer(TransformerConfig(**{**sizes, **changes}), generator=seeded(seed)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(10.0)
    return model


@torch.no_grad()
def _answer_variants(model, prompts: torch.Tensor, answers: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(hint, log-likelihood, exact match) of the usual mistakes, computed here."""
    m = answers.shape[1]
    full = torch.cat([prompts, answers], dim=1)
    teacher = model(full[:, :-1]).float().log_softmax(-1)[:, -m:]  # the right logits
    shifted = model(full).float().log_softmax(-1)[:, -m:]  # one position too late
    last = model(prompts).float().log_softmax(-1)[:, -1:].expand(-1, m, -1)  # no teacher forcing

    def scores(log_probs):
        ll = log_probs.gather(-1, answers[..., None])[..., 0]
        return ll, (log_probs.argmax(-1) == answers)

    variants = []
    ll, hit = scores(shifted)
    variants.append(("the logits are one position late: the logit at position t predicts token t + 1, so answer token j "
                     "is predicted at position T - 1 + j (feed the prompt and answers[:, :-1] only)", ll.mean(1), hit.all(1)))
    ll, hit = scores(last)
    variants.append(("every answer token was scored with the prediction after the prompt; feed the answer's first m - 1 "
                     "tokens too (teacher forcing), so that each token is predicted from everything before it", ll.mean(1), hit.all(1)))
    ll, hit = scores(teacher)
    variants.append(("the log-likelihood is summed over the answer's tokens; the exercise asks for the mean per token",
                     ll.sum(1), hit.all(1)))
    variants.append(("that is the mean probability, not the mean log-probability", ll.exp().mean(1), hit.all(1)))
    variants.append(("exact match is true when ANY answer token is the top prediction; it needs ALL of them", ll.mean(1), hit.any(1)))
    variants.append(("exact match compares only the first answer token", ll.mean(1), hit[:, 0]))
    return variants


def _compare_answers(fn, model, prompts: torch.Tensor, answers: torch.Tensor, what: str = "") -> None:
    with torch.no_grad():
        want_ll, want_exact = icl.score_answers(model, prompts, answers)
    got = call(fn, model, prompts, answers)
    args = f"score_answers(model, prompts of shape {tuple(prompts.shape)}, answers={short(answers.tolist(), 60)}){what}"
    if not isinstance(got, tuple) or len(got) != 2:
        fail(f"{args} should return a tuple (log_likelihood, exact_match), got {type(got).__name__}: {short(got)}")
    ll = expect_tensor(fn, got[0], "the mean log-likelihood per answer token, shape (B,)")
    exact = expect_tensor(fn, got[1], "whether each answer is exactly right, shape (B,) bool")
    B = prompts.shape[0]
    if ll.shape != (B,):
        fail(f"{args}: log_likelihood should have shape ({B},), one value per answer, got {tuple(ll.shape)}")
    if exact.shape != (B,) or exact.dtype != torch.bool:
        fail(f"{args}: exact_match should be a bool tensor of shape ({B},), got {exact.dtype} of shape {tuple(exact.shape)}")
    ll = ll.detach()
    ok_ll = torch.allclose(ll.double(), want_ll.double(), atol=1e-4)
    ok_exact = torch.equal(exact, want_exact)
    if ok_ll and ok_exact:
        return
    for hint, v_ll, v_exact in _answer_variants(model, prompts, answers):
        if torch.allclose(ll.double(), v_ll.double(), atol=1e-4) and torch.equal(exact, v_exact) and not (
            torch.allclose(v_ll.double(), want_ll.double(), atol=1e-4) and torch.equal(v_exact, want_exact)
        ):
            fail(f"{args} is wrong: it looks like {hint}.")
    if not ok_ll:
        fail(f"{args}: log_likelihood {first_difference(ll, want_ll)} (expected {short([round(v, 4) for v in want_ll.tolist()], 80)}).")
    fail(f"{args}: exact_match should be {want_exact.tolist()}, got {exact.tolist()}: an answer is exact when every "
         "one of its tokens is the model's most likely token at its position.")


def _greedy(model, prompts: torch.Tensor, m: int) -> torch.Tensor:
    """The model's own greedy answers of m tokens (B, m): exactly right by definition."""
    ids = prompts
    with torch.no_grad():
        for _ in range(m):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, -m:]


def _mixed_answers(model, prompts: torch.Tensor, m: int, vocab: int, g: torch.Generator) -> torch.Tensor:
    """Answers that are greedy for some rows, greedy but for one token for others, random for the rest."""
    answers = _greedy(model, prompts, m)
    B = prompts.shape[0]
    for b in range(B):
        kind = b % 3
        if kind == 1:  # one token changed: not exact
            j = int(torch.randint(0, m, (1,), generator=g))
            answers[b, j] = (answers[b, j] + 1 + int(torch.randint(0, vocab - 1, (1,), generator=g))) % vocab
        elif kind == 2:
            answers[b] = torch.randint(0, vocab, (m,), generator=g)
    return answers


def check_score_answers(fn, hidden: bool = False) -> None:
    """score_answers(model, prompts (B, T), answers (B, m)) -> (mean log-likelihood (B,), exact match (B,) bool).

    Edges the exercise defines, all in the hidden test: a one-token answer (nothing to feed in); a
    prompt of one token; answers that are exactly right, right but for one token, or random; a
    Llama-style model (RoPE); the model is called with the prompt and the answer's first m - 1 tokens.
    """
    forbid_reference(fn, icl.score_answers)
    with one_thread():
        _check_score_answers(fn, hidden)


def _check_score_answers(fn, hidden: bool) -> None:
    if not hidden:
        # The worked example: a bigram model over 4 tokens whose next token after t is (t + 1) mod 4 with prob. 1/2.
        table = torch.full((4, 4), 0.0)
        for t in range(4):
            table[t, (t + 1) % 4] = torch.log(torch.tensor(3.0)).item()  # e^log3 / (e^log3 + 3) = 1/2
        bigram = _BigramModel(table)
        prompts = torch.tensor([[0, 1], [2, 3]])
        answers = torch.tensor([[2, 3], [0, 2]])  # row 0 follows the cycle (exact); row 1 breaks it at token 2
        _compare_answers(fn, bigram, prompts, answers, " (the worked example: log-likelihoods [log 1/2, (log 1/2 + log 1/6) / 2])")
        model = _random_transformer(152)
        g = seeded(153)
        prompts = torch.randint(0, 24, (6, 7), generator=g)
        _compare_answers(fn, model, prompts, _mixed_answers(model, prompts, 3, 24, g), " (a small random transformer)")
        passed(fn, "the worked example with a bigram model and a small random transformer (exact, near and random answers) are right")
        return
    g = seeded(154)
    cases = 0
    for seed, changes in [(155, {}), (156, dict(norm="rmsnorm", activation="swiglu", position="rope", bias=False))]:
        model = _random_transformer(seed, **changes)
        for B, T, m in [(9, 5, 2), (6, 10, 4), (12, 3, 3), (3, 12, 5)]:
            prompts = torch.randint(0, 24, (B, T), generator=g)
            _compare_answers(fn, model, prompts, _mixed_answers(model, prompts, m, 24, g))
            cases += 1
    model = _random_transformer(157)
    edges = {
        "a one-token answer": (torch.randint(0, 24, (6, 8), generator=g), 1),
        "a prompt of one token": (torch.randint(0, 24, (6, 1), generator=g), 3),
    }
    for name, (prompts, m) in edges.items():
        with edge(name):
            _compare_answers(fn, model, prompts, _mixed_answers(model, prompts, m, 24, g))
    cases += len(edges)
    passed(fn, f"all {cases} cases (GPT- and Llama-style models, answers of 1 .. 5 tokens, exact, near and random) match")
