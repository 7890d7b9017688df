"""Tests for llm_course.failures: the retrieval task, accuracy by position, calibration, token splits."""

import math

import pytest
import torch

from llm_course.failures import (
    RetrievalTask,
    RetrievalTraining,
    accuracy_by_position,
    answer_position_weights,
    expected_calibration_error,
    letters_in_tokens,
    load_retrieval_model,
    make_retrieval_batch,
    make_retrieval_example,
    next_token_predictions,
    number_splits,
    reliability_bins,
    retrieval_accuracy_by_position,
    retrieval_prompt,
)
from llm_course.tokenizer import Tokenizer
from llm_course.transformer import Transformer, TransformerConfig


def test_retrieval_prompt_worked_example():
    # 4 keys, 2 values: facts 0 .. 7 (k * 2 + v), key tokens 8 .. 11, value tokens 12, 13, query marker 14.
    ids, target = retrieval_prompt([3, 1, 2], [1, 0, 1], 1, 4, 2)
    assert ids.tolist() == [7, 2, 5, 14, 9]
    assert ids.dtype == torch.long
    assert target == 12
    with pytest.raises(IndexError):
        retrieval_prompt([3], [1], 1, 4, 2)
    with pytest.raises(ValueError):
        retrieval_prompt([3, 2], [1], 0, 4, 2)


def test_batch_layout_and_answers():
    task = RetrievalTask(n_pairs=8, n_keys=20, n_values=5)
    assert task.vocab_size == 20 * 5 + 20 + 5 + 1
    ids, targets, positions = make_retrieval_batch(task, 200, torch.Generator().manual_seed(0))
    assert ids.shape == (200, task.seq_len()) and targets.shape == positions.shape == (200,)
    facts = ids[:, :8]
    assert bool((facts < task.n_facts).all())
    assert all(len(set((row // task.n_values).tolist())) == 8 for row in facts)  # distinct keys
    assert bool((ids[:, -2] == task.query_token).all())
    for row, target, position in zip(ids, targets, positions):
        keys, values = (row[:8] // task.n_values).tolist(), (row[:8] % task.n_values).tolist()
        want_ids, want_target = retrieval_prompt(keys, values, int(position), task.n_keys, task.n_values)
        assert torch.equal(row, want_ids) and int(target) == want_target
    # Every position occurs, and positions can be fixed.
    assert set(positions.tolist()) == set(range(8))
    fixed = torch.full((5,), 3)
    _, _, got = make_retrieval_batch(task, 5, torch.Generator().manual_seed(1), answer_positions=fixed)
    assert torch.equal(got, fixed)
    ids, target = make_retrieval_example(task, 7, torch.Generator().manual_seed(2))
    assert ids[-1] - task.n_facts == ids[7] // task.n_values
    assert target - task.n_facts - task.n_keys == ids[7] % task.n_values
    with pytest.raises(ValueError):
        make_retrieval_batch(task, 1, torch.Generator(), n_pairs=21)


def test_answer_position_weights():
    w = answer_position_weights(5, 0.1)
    assert w.tolist() == pytest.approx([1.0, 0.55, 0.1, 0.55, 1.0])
    assert answer_position_weights(4, 1.0).tolist() == [1.0] * 4 and answer_position_weights(1, 0.0).tolist() == [1.0]


def test_accuracy_by_position_worked_example():
    acc = accuracy_by_position(torch.tensor([5, 6, 7, 5]), torch.tensor([5, 6, 0, 0]), torch.tensor([0, 1, 1, 2]), 4)
    assert acc[:3].tolist() == [1.0, 0.5, 0.0] and math.isnan(acc[3].item())


def test_calibration_worked_example():
    probs = torch.tensor([0.9, 0.9, 0.6, 0.2])
    correct = torch.tensor([True, False, True, False])
    conf, acc, counts = reliability_bins(probs, correct, 2)
    assert counts.tolist() == [1, 3]
    assert conf.tolist() == pytest.approx([0.2, 0.8]) and acc.tolist() == pytest.approx([0.0, 2 / 3])
    # (1/4) |0 - 0.2| + (3/4) |2/3 - 0.8| = 0.05 + 0.1
    assert expected_calibration_error(probs, correct, 2) == pytest.approx(0.15)
    # p = 1 falls in the last bin; a perfectly calibrated bin contributes nothing.
    assert reliability_bins(torch.tensor([1.0]), torch.tensor([True]), 10)[2][-1] == 1
    assert expected_calibration_error(torch.tensor([0.5, 0.5]), torch.tensor([True, False]), 10) == pytest.approx(0.0)


def test_ece_of_a_calibrated_sampler_is_small():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(200_000, generator=g)
    correct = torch.rand(200_000, generator=g) < probs
    assert expected_calibration_error(probs, correct, 10) < 0.01
    assert expected_calibration_error(probs, ~correct, 10) > 0.3


def test_next_token_predictions_match_the_model():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=11, context_length=8, d_model=16, n_layers=1, n_heads=2)).eval()
    ids = torch.randint(0, 11, (20,))
    out = next_token_predictions(model, ids)
    assert out["predicted"].shape == (19,) and torch.equal(out["target"], ids[1:])
    with torch.no_grad():
        p = model(ids[None, 8:16])[0].softmax(-1)  # the second window
    assert torch.allclose(out["prob"][8:16], p.max(-1).values, atol=1e-6)
    assert torch.equal(out["correct"], out["predicted"] == ids[1:])


def test_token_helpers():
    tok = Tokenizer.train("12345 12345 abc abc abcd " * 20, vocab_size=270)
    for split in number_splits(tok, "12345"):
        assert "12345" in "".join(split)  # the pieces cover the number's digits
    pieces = letters_in_tokens(tok, "abcd")
    assert "".join(s for s, _ in pieces) == "abcd" and sum(n for _, n in pieces) == 4


def test_retrieval_training_learns_and_is_cached(tmp_path):
    cfg = RetrievalTraining(task=RetrievalTask(n_pairs=4, n_keys=8, n_values=8), d_model=32, steps=300, batch_size=32,
                            lr=3e-3, min_pairs=1, curriculum_steps=100)  # fmt: skip
    model, info = load_retrieval_model(cfg, cache=tmp_path)
    assert len(info["losses"]) == 300
    again, info2 = load_retrieval_model(cfg, cache=tmp_path)  # read back, not retrained
    assert info2["seconds"] == info["seconds"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    result = retrieval_accuracy_by_position(model, cfg.task, 50, torch.Generator().manual_seed(0))
    assert result["accuracy"].shape == result["stderr"].shape == result["prob_correct"].shape == (4,)
    assert result["accuracy"].mean() > 1 / 8  # better than guessing a value
