"""Tests of llm_course.icl: the mapping task, answer scoring, induction scores, ablation, the shell.

Oracles: Python loops over positions (induction score, sequence layout), one forward pass per answer
token and greedy decoding (answer scoring), a perfect in-context learner written as a lookup
(the ideal curve), zeroed output-projection columns (ablation), the attention module's own output
(attention patterns) and Monte Carlo sampling of the ball (shell volume).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llm_course import icl
from llm_course.icl import (
    ICLRun,
    MappingBatches,
    MappingTask,
    ablate_heads,
    attention_patterns,
    icl_curve,
    ideal_curve,
    induction_score,
    load_icl_run,
    make_prompts,
    make_sequences,
    repeated_random_tokens,
    score_answers,
    shell_volume_fraction,
)
from llm_course.transformer import Transformer, TransformerConfig

TASK = MappingTask(n_keys=5, n_values=7, answer_len=3, n_examples=6)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_model(vocab_size: int, position: str = "rope", seed: int = 0, context_length: int = 40) -> Transformer:
    config = TransformerConfig(vocab_size=vocab_size, context_length=context_length, d_model=16, n_layers=2,
                               n_heads=2, position=position)  # fmt: skip
    return Transformer(config, generator=gen(seed)).eval()


# --------------------------------------------------------------------------- the task
def test_task_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_keys"):
        MappingTask(n_keys=0)
    with pytest.raises(ValueError, match="answer_len"):
        MappingTask(answer_len=1.5)
    assert TASK.vocab_size == 5 + 7 + 1 and TASK.bos == 12 and TASK.seq_len() == 1 + 6 * 4


def test_sequences_follow_their_mapping():
    ids, mapping, keys = make_sequences(TASK, 20, 6, gen())
    assert ids.shape == (20, TASK.seq_len()) and mapping.shape == (20, 5, 3) and keys.shape == (20, 6)
    for b in range(20):
        assert ids[b, 0] == TASK.bos
        for i in range(6):
            start = 1 + i * 4
            key = int(ids[b, start])
            assert key == keys[b, i] and 0 <= key < TASK.n_keys
            answer = ids[b, start + 1 : start + 4].tolist()
            assert all(TASK.n_keys <= t < TASK.bos for t in answer)
            assert answer == mapping[b, key].tolist()  # the same key always gets the same answer


def test_mappings_are_fresh_per_sequence():
    _, mapping, _ = make_sequences(MappingTask(n_keys=8, n_values=64), 50, 3, gen())
    distinct = {tuple(m.flatten().tolist()) for m in mapping}
    assert len(distinct) == 50


def test_prompts_answers_and_seen_flag():
    for query in ("any", "seen"):
        prompts, answers, seen = make_prompts(TASK, 200, 3, gen(1), query)
        assert prompts.shape == (200, 2 + 3 * 4) and answers.shape == (200, 3)
        for b in range(200):
            row = prompts[b].tolist()
            shown = {row[1 + i * 4]: row[2 + i * 4 : 5 + i * 4] for i in range(3)}
            q = row[-1]
            assert 0 <= q < TASK.n_keys
            assert bool(seen[b]) == (q in shown)
            if q in shown:
                assert answers[b].tolist() == shown[q]
        if query == "seen":
            assert seen.all()
        else:
            assert 0 < seen.float().mean() < 1


def test_prompts_reject_bad_arguments():
    with pytest.raises(ValueError, match="query"):
        make_prompts(TASK, 2, 3, gen(), query="unseen")
    with pytest.raises(ValueError, match="at least one example"):
        make_prompts(TASK, 2, 0, gen(), query="seen")
    with pytest.raises(ValueError, match="n_examples"):
        make_sequences(TASK, 2, -1, gen())


def test_batches_resume_exactly():
    a = MappingBatches(TASK, 4, seed=3)
    a.next_batch()
    state = a.state_dict()
    x1, y1 = a.next_batch()
    b = MappingBatches(TASK, 4, seed=0)
    b.load_state_dict(state)
    x2, y2 = b.next_batch()
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1]) and x1.shape == (4, TASK.seq_len() - 1)


# --------------------------------------------------------------------------- scoring answers
def test_score_answers_matches_one_pass_per_token_and_greedy_decoding():
    model = tiny_model(TASK.vocab_size)
    prompts, answers, _ = make_prompts(TASK, 6, 2, gen(2))
    # Make some answers the model's own greedy ones, so that exact match is True somewhere.
    with torch.no_grad():
        ll, exact = score_answers(model, prompts, answers)
        ids = prompts.clone()
        for _ in range(3):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
        greedy = ids[:, -3:]
        answers[:3] = greedy[:3]
        ll, exact = score_answers(model, prompts, answers)
    for b in range(6):
        total = 0.0
        for j in range(3):
            prefix = torch.cat([prompts[b], answers[b, :j]])[None]
            with torch.no_grad():
                logp = torch.log_softmax(model(prefix)[0, -1].double(), dim=-1)
            total += logp[answers[b, j]].item()
        assert ll[b].item() == pytest.approx(total / 3, abs=1e-5)
        assert bool(exact[b]) == torch.equal(greedy[b], answers[b])
    assert exact[:3].all()


def test_score_answers_rejects_bad_shapes():
    model = tiny_model(TASK.vocab_size)
    with pytest.raises(ValueError, match="same B"):
        score_answers(model, torch.zeros(2, 5, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        score_answers(model, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long))


class PerfectLearner(nn.Module):
    """Reads the prompt like a perfect in-context learner: answers a key it has seen, guesses otherwise."""

    def __init__(self, task: MappingTask):
        super().__init__()
        self.task = task
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        t, m = self.task, self.task.answer_len
        B, T = ids.shape
        logits = torch.full((B, T, t.vocab_size), -1e9)
        logits[:, :, t.n_keys : t.bos] = 0.0  # uniform over the value tokens
        for b in range(B):
            for pos in range(T):
                j = (pos + 1 - 1) % (1 + m)  # offset of the next token within its example (0: a key)
                if j == 0:
                    continue
                key_pos = pos + 1 - j
                earlier = [p for p in range(1, key_pos, 1 + m) if ids[b, p] == ids[b, key_pos]]
                if earlier:
                    logits[b, pos, ids[b, earlier[-1] + j]] = 50.0
        return logits + 0 * self.dummy


def test_ideal_curve_is_what_a_perfect_learner_scores():
    task = MappingTask(n_keys=4, n_values=5, answer_len=2, n_examples=8)
    ns = [0, 1, 3, 6]
    measured = icl_curve(PerfectLearner(task), task, ns, 400, gen(4))
    ideal = ideal_curve(task, ns)
    assert torch.allclose(measured["seen"], ideal["seen"], atol=0.08)
    # On an unseen key the learner's guess (its argmax, the first value token) is right with chance V^-m.
    assert torch.allclose(measured["exact_match"], ideal["exact_match"], atol=0.08)
    assert torch.allclose(measured["log_likelihood"], ideal["log_likelihood"], atol=0.1)
    seen = icl_curve(PerfectLearner(task), task, [1, 5], 100, gen(5), query="seen")
    assert torch.equal(seen["exact_match"], torch.ones(2, dtype=torch.float64))
    assert torch.equal(ideal_curve(task, [0, 2], query="seen")["exact_match"], torch.ones(2, dtype=torch.float64))


# --------------------------------------------------------------------------- attention and induction
def brute_induction_score(attention, tokens):
    B, H, T, _ = attention.shape
    total, count = torch.zeros(H, dtype=torch.float64), 0
    for b in range(B):
        for i in range(T):
            previous = [j for j in range(i) if tokens[b, j] == tokens[b, i]]
            if previous:
                total += attention[b, :, i, previous[-1] + 1].double()
                count += 1
    return total / count


def test_induction_score_matches_a_loop_on_random_attention():
    g = gen(6)
    tokens = torch.randint(0, 5, (3, 12), generator=g)  # many repeats, some adjacent
    attention = torch.rand(3, 4, 12, 12, generator=g).tril().softmax(-1)
    got = induction_score(attention, tokens)
    assert got.shape == (4,)
    assert torch.allclose(got.double(), brute_induction_score(attention, tokens), atol=1e-6)


def test_induction_score_of_a_perfect_induction_head_and_of_a_previous_token_head():
    tokens = repeated_random_tokens(2, 6, range(20), gen(7))  # (2, 12)
    T = tokens.shape[1]
    induction = torch.zeros(2, 2, T, T)
    for i in range(T):
        induction[:, 0, i, i - 6 + 1 if i >= 6 else 0] = 1.0  # head 0: the token after the previous copy
        induction[:, 1, i, max(i - 1, 0)] = 1.0  # head 1: the previous token
    score = induction_score(induction, tokens)
    assert score.tolist() == [1.0, 0.0]


def test_induction_score_rejects_bad_input():
    with pytest.raises(ValueError, match="needs repeated tokens"):
        induction_score(torch.ones(1, 1, 3, 3), torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"\(B, H, T, T\)"):
        induction_score(torch.ones(1, 3, 3), torch.tensor([[1, 2, 1]]))
    with pytest.raises(ValueError, match="share T"):
        induction_score(torch.ones(1, 1, 3, 3), torch.tensor([[1, 2, 1, 2]]))


def test_repeated_random_tokens():
    seqs = repeated_random_tokens(5, 8, [3, 5, 7, 9, 11, 13, 15, 17, 19], gen(8), bos=0)
    assert seqs.shape == (5, 17) and (seqs[:, 0] == 0).all()
    first, second = seqs[:, 1:9], seqs[:, 9:]
    assert torch.equal(first, second)
    for row in first:
        assert len(set(row.tolist())) == 8 and set(row.tolist()) <= {3, 5, 7, 9, 11, 13, 15, 17, 19}
    with pytest.raises(ValueError, match="distinct"):
        repeated_random_tokens(1, 10, range(5), gen())


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_attention_patterns_are_the_weights_the_model_uses(position):
    model = tiny_model(TASK.vocab_size, position)
    ids = torch.randint(0, TASK.vocab_size, (2, 9), generator=gen(9))
    patterns = attention_patterns(model, ids)
    assert patterns.shape == (2, 2, 2, 9, 9)
    assert torch.allclose(patterns.sum(-1), torch.ones(2, 2, 2, 9), atol=1e-5)
    assert (patterns.triu(diagonal=1) == 0).all()  # causal
    outputs = []
    hooks = [b.attn.register_forward_hook(lambda mod, args, out, store=outputs: store.append((mod, args, out)))
             for b in model.blocks]  # fmt: skip
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    for layer, (module, args, out) in enumerate(outputs):
        _, _, v = module.project(*args[:2]) if len(args) > 1 else module.project(args[0])
        heads = patterns[layer] @ v  # (B, H, T, D)
        rebuilt = module.w_o(heads.transpose(1, 2).flatten(2))
        assert torch.allclose(rebuilt, out, atol=1e-5)


def test_ablating_a_head_equals_zeroing_its_output_columns():
    model = tiny_model(TASK.vocab_size)
    ids = torch.randint(0, TASK.vocab_size, (2, 10), generator=gen(10))
    with torch.no_grad():
        before = model(ids)
        with ablate_heads(model, [(1, 0), (0, 1)]):
            ablated = model(ids)
        after = model(ids)
        reference = tiny_model(TASK.vocab_size)
        D = reference.config.d_head
        reference.blocks[1].attn.w_o.weight[:, 0:D] = 0
        reference.blocks[0].attn.w_o.weight[:, D : 2 * D] = 0
        expected = reference(ids)
    assert torch.allclose(ablated, expected, atol=1e-5)
    assert not torch.allclose(ablated, before, atol=1e-4)
    assert torch.equal(before, after)  # the hooks are gone
    with pytest.raises(ValueError, match="outside"):
        with ablate_heads(model, [(2, 0)]):
            pass


# --------------------------------------------------------------------------- training and the cache
def test_run_rejects_snapshots_outside_the_run():
    with pytest.raises(ValueError, match="snapshot"):
        ICLRun(steps=10, snapshots=(0, 5))
    with pytest.raises(ValueError, match="snapshot"):
        ICLRun(steps=10, snapshots=(11,))


def test_training_is_cached_and_snapshots_differ(tmp_path, monkeypatch):
    run = ICLRun(task=MappingTask(n_keys=3, n_values=4, n_examples=4), d_model=8, n_heads=2, steps=4,
                 batch_size=4, snapshots=(2,))  # fmt: skip
    final, models, info = load_icl_run(run, cache=tmp_path)
    assert sorted(models) == [2, 4] and len(info["loss"]) == 4
    assert not torch.equal(models[2].lm_head.weight, models[4].lm_head.weight)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached run was trained again")

    monkeypatch.setattr(icl, "train_icl_model", no_training)
    again, models_again, _ = load_icl_run(run, cache=tmp_path)
    for name, value in final.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])
    # The same run trained again from scratch gives the same weights (seeded data and init).
    monkeypatch.undo()
    fresh, _, _ = icl.train_icl_model(run)
    for name, value in fresh.state_dict().items():
        assert torch.allclose(value, final.state_dict()[name])


# --------------------------------------------------------------------------- the shell
def test_shell_fraction_closed_form_and_precision():
    assert shell_volume_fraction(1, 0.1).item() == pytest.approx(0.1)
    assert shell_volume_fraction(2, 0.5).item() == pytest.approx(0.75)
    assert shell_volume_fraction(1000, 0.01).item() == pytest.approx(1 - 0.99**1000, rel=1e-12)
    tiny = shell_volume_fraction(10, 1e-18).item()  # 1 - (1 - 1e-18)^10 = 1e-17 (naive float: 0)
    assert tiny == pytest.approx(1e-17, rel=1e-9)
    n = torch.tensor([10, 100, 1000])
    # The article's radius sqrt(1 - 1/n): the shell outside it holds 1 - (1 - 1/n)^(n/2) -> 1 - e^-1/2.
    outside = shell_volume_fraction(n, 1 - torch.sqrt(1 - 1 / n.double()))
    assert torch.allclose(outside, 1 - (1 - 1 / n.double()) ** (n / 2))
    assert outside[-1].item() == pytest.approx(1 - math.exp(-0.5), abs=1e-3)
    with pytest.raises(ValueError, match="eps"):
        shell_volume_fraction(3, 1.5)
    with pytest.raises(ValueError, match="dimension"):
        shell_volume_fraction(0, 0.1)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_shell_fraction_against_monte_carlo(n):
    """Uniform points in the ball by rejection from the cube [-1, 1]^n (no use of the r^n law)."""
    g = gen(n)
    cube = torch.rand(400_000, n, generator=g, dtype=torch.float64) * 2 - 1
    radius = cube.norm(dim=1)
    radius = radius[radius <= 1]  # uniform in the ball: 32,000 points or more for n = 6
    for eps in (0.05, 0.2):
        share = (radius > 1 - eps).double().mean().item()
        tolerance = 4 * math.sqrt(share * (1 - share) / len(radius))
        assert share == pytest.approx(shell_volume_fraction(n, eps).item(), abs=tolerance)
