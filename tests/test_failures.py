"""Tests for llm_course.failures: the retrieval task, accuracy by position, calibration, token splits."""

import dataclasses
import math
import shutil

import pytest
import torch

from llm_course import cache
from llm_course.failures import (
    RetrievalBatches,
    RetrievalTask,
    RetrievalTraining,
    accuracy_by_position,
    answer_cross_entropy,
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
    retrieval_cache_dir,
    retrieval_prompt,
    retrieval_train_config,
)
from llm_course.long_context import variant
from llm_course.tokenizer import Tokenizer
from llm_course.trainer import Trainer
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
    # A sliding window of 3 tokens (the last fact, the query marker, the key) hides every other fact:
    # the values are uniform and independent of the keys, so the model can only guess them.
    windowed = variant(model, attention_window=3)
    hidden = retrieval_accuracy_by_position(windowed, cfg.task, 200, torch.Generator().manual_seed(0))["accuracy"][:-1]
    assert hidden.max() < 0.25 < result["accuracy"].mean()


def test_retrieval_model_cache_follows_settings_and_imported_code(tmp_path, monkeypatch):
    """The key covers what failures.py imports (attention.py through the transformer), not only failures.py."""
    cfg = RetrievalTraining(steps=10)
    folder = retrieval_cache_dir(cfg, tmp_path)
    assert folder.parent == tmp_path / "failures" and folder == retrieval_cache_dir(cfg, tmp_path)
    assert retrieval_cache_dir(dataclasses.replace(cfg, seed=1), tmp_path) != folder
    copy = shutil.copytree(cache.PACKAGE_ROOT, tmp_path / "llm_course", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE_ROOT", copy)
    assert retrieval_cache_dir(cfg, tmp_path) == folder
    (copy / "bpe.py").write_text((copy / "bpe.py").read_text() + "\n\ndef edited():\n    return 1\n")
    assert retrieval_cache_dir(cfg, tmp_path) == folder  # the retrieval model never imports the tokenizer
    (copy / "attention.py").write_text((copy / "attention.py").read_text() + "\n\ndef edited():\n    return 1\n")
    assert retrieval_cache_dir(cfg, tmp_path) != folder


def test_retrieval_batches_follow_the_curriculum_and_resume_exactly():
    cfg = RetrievalTraining(task=RetrievalTask(n_pairs=6, n_keys=8, n_values=4), batch_size=5, min_pairs=2,
                            curriculum_steps=10)  # fmt: skip
    data = RetrievalBatches(cfg)
    batches = [data.next_batch() for _ in range(30)]
    lengths = [ids.shape[1] for ids, _ in batches]
    assert all(cfg.task.seq_len(2) <= n <= cfg.task.seq_len(6) for n in lengths)
    assert lengths[0] == cfg.task.seq_len(2) and max(lengths[10:]) == cfg.task.seq_len(6)  # starts short, reaches full
    for ids, targets in batches:
        assert ids.shape[0] == targets.shape[0] == 5
        values = targets - cfg.task.n_facts - cfg.task.n_keys  # the answer is a value token
        assert ((0 <= values) & (values < cfg.task.n_values)).all()
    resumed = RetrievalBatches(cfg)
    resumed.load_state_dict(RetrievalBatches(cfg, drawn=17).state_dict())
    assert all(torch.equal(a, b) for a, b in zip(resumed.next_batch(), batches[17]))


def test_answer_cross_entropy_reads_the_last_position_only():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=11, context_length=8, d_model=16, n_layers=1, n_heads=2)).eval()
    ids, targets = torch.randint(0, 11, (3, 8)), torch.tensor([1, 5, 7])
    loss, metrics = answer_cross_entropy(model, (ids, targets))
    log_probs = model(ids)[:, -1].log_softmax(-1)  # (B, V)
    assert metrics == {} and torch.allclose(loss, -log_probs[torch.arange(3), targets].mean())


def test_retrieval_training_resumes_exactly_from_a_checkpoint(tmp_path):
    """The retrieval model trains on the course's Trainer: a run stopped at step 3 and resumed ends where
    an uninterrupted one does."""
    cfg = RetrievalTraining(task=RetrievalTask(n_pairs=4, n_keys=8, n_values=8), d_model=16, steps=6, batch_size=8)

    def fresh(out_dir):
        model = Transformer(cfg.model_config(), generator=torch.Generator().manual_seed(cfg.seed))
        return Trainer(model, retrieval_train_config(cfg), data=RetrievalBatches(cfg), objective=answer_cross_entropy,
                       out_dir=out_dir, log=None)  # fmt: skip

    whole = fresh(tmp_path / "whole")
    whole.train()
    stopped = fresh(tmp_path / "stopped")
    stopped.train(until_step=3)
    resumed = Trainer.resume(tmp_path / "stopped", data=RetrievalBatches(cfg), objective=answer_cross_entropy, log=None)
    resumed.train()
    assert resumed.history["loss"] == whole.history["loss"]  # the first 3 restored from the checkpoint
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
