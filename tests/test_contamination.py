"""Tests for llm_course.contamination: n-gram overlap, Min-K% Prob, AUC, and a planted leak found in a trained model."""

import itertools
import math

import pytest
import torch

from llm_course.contamination import (
    LeakTraining,
    auc,
    leak_batches,
    min_k_percent,
    ngram_overlap,
    padded_lm_loss,
    split_leaked,
    token_log_probs,
    train_with_leak,
    word_ngrams,
)
from llm_course.tokenizer import Tokenizer
from llm_course.transformer import Transformer, TransformerConfig


def test_word_ngrams_ignore_case_spacing_and_punctuation():
    assert word_ngrams("The cat, the\nCAT.", 2) == {("the", "cat"), ("cat", "the")}
    assert word_ngrams("a b", 3) == set()
    with pytest.raises(ValueError):
        word_ngrams("a", 0)


def test_ngram_overlap_finds_a_planted_copy():
    training = "lorem ipsum dolor sit amet " * 3 + "The assert statement is a convenient way to insert debugging assertions."
    grams = word_ngrams(training, 5)
    copy = "the ASSERT statement is a convenient way to insert debugging assertions"  # reformatted copy
    partial = "assert statement is a convenient way to check a completely different thing"
    clean = "a while loop repeats its body for as long as its condition stays true"
    assert ngram_overlap(copy, grams, 5) == 1.0
    # 12 words, 8 5-grams; 3 are in the training text: "assert ... convenient", "statement ... way", "is ... to".
    assert ngram_overlap(partial, grams, 5) == pytest.approx(3 / 8)
    assert ngram_overlap(clean, grams, 5) == 0.0
    assert math.isnan(ngram_overlap("too short", grams, 5))
    with pytest.raises(ValueError):
        ngram_overlap(copy, grams, 4)


def test_min_k_percent_worked_example():
    lp = torch.tensor([-0.1, -5.0, -0.2, -3.0, -0.3])
    assert min_k_percent(lp, 0.2) == pytest.approx(-5.0)  # ceil(0.2 * 5) = 1 token
    assert min_k_percent(lp, 0.4) == pytest.approx(-4.0)
    assert min_k_percent(lp, 1.0) == pytest.approx(float(lp.mean()))
    ten = -torch.arange(10.0)  # 0, -1, ..., -9
    assert min_k_percent(ten, 0.7) == pytest.approx(float(ten[3:].mean()))  # exactly 7 tokens, not 8
    # Same mean, different tails: Min-K% separates what the mean cannot.
    member, non_member = torch.full((10,), -1.0), torch.tensor([-0.1] * 9 + [-9.1])
    assert float(member.mean()) == pytest.approx(float(non_member.mean()))
    assert min_k_percent(member, 0.1) > min_k_percent(non_member, 0.1)
    with pytest.raises(ValueError):
        min_k_percent(lp, 0.0)


def test_token_log_probs_match_the_model():
    tok = Tokenizer.train("alpha beta gamma delta " * 20, vocab_size=270)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.n_vocab, context_length=6, d_model=16, n_layers=1, n_heads=2)).eval()
    text = "alpha gamma beta delta alpha beta gamma"
    ids = tok.encode_ordinary(text)[:7]  # the context (6) plus one token
    got = token_log_probs(model, tok, text)
    with torch.no_grad():
        lp = model(torch.tensor(ids[:-1])[None])[0].log_softmax(-1)
    assert got.shape == (len(ids) - 1,)
    assert torch.allclose(got, torch.stack([lp[t, ids[t + 1]] for t in range(len(ids) - 1)]), atol=1e-6)
    with pytest.raises(ValueError):
        token_log_probs(model, tok, "a")


def test_auc_against_all_pairs():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 5, (7,), generator=g).float(), torch.randint(0, 5, (9,), generator=g).float()
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos.tolist(), neg.tolist())]
    assert auc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))
    assert auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auc(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0
    with pytest.raises(ValueError):
        auc(torch.tensor([]), neg)


def test_split_leaked_is_a_seeded_partition():
    leaked, clean = split_leaked(11, 0.5, seed=1)
    assert sorted(leaked + clean) == list(range(11)) and len(leaked) == round(5.5)
    assert (leaked, clean) == split_leaked(11, 0.5, seed=1) and leaked != split_leaked(11, 0.5, seed=2)[0]


def test_leak_batches_repeat_the_leak_and_mask_padding():
    tok = Tokenizer.train("alpha beta gamma delta epsilon " * 20, vocab_size=270)
    cfg = LeakTraining(leaked=("alpha beta gamma",), filler=("delta epsilon", "beta beta"), copies=3, batch_size=5)
    data = leak_batches(cfg, tok, context_length=16)
    assert len(data.items) == 2 + 3
    inputs, targets = data.next_batch()
    assert inputs.shape == targets.shape and inputs.shape[0] == 5
    for x, y in zip(inputs, targets):
        n = int((y != -100).sum())
        assert n >= 1 and bool((y[n:] == -100).all())
        assert torch.equal(x[1:n], y[: n - 1])  # targets are the inputs shifted by one


def test_a_planted_leak_is_memorised_and_found_by_min_k():
    """A small model trained on half of a set of random 'benchmark' texts: the leaked half gets a higher
    Min-K% score than the clean half, and a lower loss. (Random words: nothing but memorisation can help.)"""
    words = [f"w{i}" for i in range(40)]
    g = torch.Generator().manual_seed(0)
    items = [" ".join(words[int(j)] for j in torch.randint(0, 40, (12,), generator=g)) for _ in range(16)]
    tok = Tokenizer.train(" ".join(words) * 5, vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.n_vocab, context_length=32, d_model=32, n_layers=1, n_heads=2))
    leaked, clean = split_leaked(len(items), 0.5, seed=0)
    cfg = LeakTraining(leaked=tuple(items[i] for i in leaked), filler=(), copies=1, steps=120, batch_size=8, lr=3e-3)
    losses = train_with_leak(model, tok, cfg)
    assert losses[-1] < losses[0]
    scores = torch.tensor([min_k_percent(token_log_probs(model, tok, t), 0.2) for t in items])
    assert auc(scores[leaked], scores[clean]) > 0.9
    # The objective is the cross-entropy of the non-padding targets.
    x, y = leak_batches(cfg, tok, 32).next_batch()
    with torch.no_grad():
        loss, _ = padded_lm_loss(model, (x, y))
        lp = model(x).log_softmax(-1)
    keep = y != -100
    assert loss.item() == pytest.approx(float(-lp[keep].gather(1, y[keep][:, None]).mean()), rel=1e-5)


def test_load_contaminated_trains_once_then_reads_the_cache(tmp_path, monkeypatch):
    """The cached path, with a small stand-in for the chapter 06 model (the real one takes minutes to train)."""
    import llm_course.pretrained as pretrained
    from llm_course.contamination import load_contaminated

    tok = Tokenizer.train("alpha beta gamma delta " * 20, vocab_size=270)

    def small_model(*args, **kwargs):
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(vocab_size=tok.n_vocab, context_length=16, d_model=16, n_layers=1, n_heads=2))
        return model.eval(), tok

    monkeypatch.setattr(pretrained, "load_pretrained", small_model)
    monkeypatch.setattr(pretrained, "pretrained_dir", lambda *args, **kwargs: tmp_path / "tiny-stand-in")
    cfg = LeakTraining(leaked=("alpha beta gamma",), filler=("delta alpha",), copies=2, steps=3, batch_size=2)
    model, _, info = load_contaminated(cfg, cache=tmp_path)
    assert len(info["losses"]) == 3 and info["settings"]["leaked"] == ["alpha beta gamma"]
    again, _, info2 = load_contaminated(cfg, cache=tmp_path)  # read back, not retrained
    assert info2["seconds"] == info["seconds"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), small_model()[0].state_dict().values()))
    assert len(list((tmp_path / "contamination").glob("leak-*"))) == 1
