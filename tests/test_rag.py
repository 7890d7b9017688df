"""Tests for llm_course.rag: passages, BM25 (by hand and against bm25s), recall, questions, the reader's score."""

import math

import numpy as np
import pytest
import torch

from llm_course.data import default_corpus, train_val_split
from llm_course.rag import (
    BM25Retriever,
    Question,
    answer_log_likelihood,
    bm25_scores,
    cloze_questions,
    corpus_passages,
    rag_prompt,
    recall_at_k,
    tokenize,
)
from llm_course.tokenizer import Tokenizer
from llm_course.transformer import Transformer, TransformerConfig


def test_tokenize_lowercases_and_drops_stopwords():
    assert tokenize("The assert statement, and __debug__!") == ["assert", "statement", "__debug__"]


def test_bm25_worked_example():
    # Two documents; the query term "x" is in one of them, twice. N = 2, df = 1, avgdl = 2.5.
    docs = [["x", "x", "y"], ["y", "z"]]
    k1, b = 1.5, 0.75
    idf = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    want = idf * 2 * (k1 + 1) / (2 + k1 * (1 - b + b * 3 / 2.5))
    assert bm25_scores(["x"], docs, k1, b) == pytest.approx([want, 0.0])
    assert bm25_scores(["x", "x"], docs, k1, b) == pytest.approx([2 * want, 0.0])  # a repeated query term counts twice
    assert bm25_scores(["absent"], docs).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        bm25_scores(["x"], [])


def test_bm25_matches_bm25s_on_random_corpora():
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(30)]
    for k1, b in [(1.5, 0.75), (1.2, 0.3), (0.9, 1.0)]:
        texts = [" ".join(rng.choice(vocabulary, size=rng.integers(1, 25), p=np.r_[[0.2], np.full(29, 0.8 / 29)]))
                 for _ in range(40)]  # fmt: skip
        retriever = BM25Retriever(texts, k1, b)
        documents = [tokenize(t) for t in texts]
        for _ in range(10):
            query = " ".join(rng.choice(vocabulary, size=4))  # may repeat a term
            ours = bm25_scores(tokenize(query), documents, k1, b)
            assert retriever.scores(query) == pytest.approx(ours, rel=1e-5, abs=1e-6)
            top = retriever.retrieve([query], 5)[0]
            assert ours[top].tolist() == sorted(ours, reverse=True)[:5]
    assert retriever.scores("nothing here").tolist() == [0.0] * 40
    with pytest.raises(ValueError):
        retriever.retrieve(["w1"], 41)


def test_recall_at_k():
    retrieved = np.array([[3, 1, 2], [0, 4, 5], [7, 8, 9]])
    gold = np.array([1, 0, 6])
    assert recall_at_k(retrieved, gold, 1) == pytest.approx(1 / 3)
    assert recall_at_k(retrieved, gold, 2) == pytest.approx(2 / 3)
    assert recall_at_k(retrieved, gold, 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        recall_at_k(retrieved, gold, 4)


def test_corpus_passages_cover_the_corpus_and_mark_the_held_out_tail():
    from pydoc_data.topics import topics

    passages = corpus_passages(30)
    assert all(len(p.text.split(" ")) <= 30 for p in passages)
    for name in ("assert", "while"):
        assert " ".join(p.text for p in passages if p.topic == name) == " ".join(topics[name].split())
    held = [p.held_out for p in passages]
    assert any(held) and not held[0] and held == sorted(held)  # the held-out passages are a tail
    # Every held-out passage's topic lies wholly in the text that pretraining held out.
    _, tail = train_val_split(default_corpus(), 0.1)
    assert all(topics[p.topic].strip() in tail for p in passages if p.held_out)
    with pytest.raises(ValueError):
        corpus_passages(0)


def test_cloze_questions_are_deterministic_and_answerable_from_their_passage():
    passages = corpus_passages(30)
    questions = cloze_questions(passages, 50, seed=3)
    assert questions == cloze_questions(passages, 50, seed=3) and questions != cloze_questions(passages, 50, seed=4)
    assert len(questions) == 50 and len({q.passage for q in questions}) == 50
    for q in questions:
        assert passages[q.passage].held_out
        assert f"{q.prefix} {q.answer}" in passages[q.passage].text
        assert len(q.prefix.split(" ")) == 8 and q.answer.isalpha() and len(q.answer) >= 4
    seen = cloze_questions(passages, 20, held_out=False)
    assert not any(passages[q.passage].held_out for q in seen)


def test_rag_prompt_puts_the_best_passage_next_to_the_question():
    assert rag_prompt(["best", "second"], "q") == "second\n\nbest\n\nq"
    assert rag_prompt([], "q") == "q"


def test_answer_log_likelihood_matches_a_direct_computation():
    tok = Tokenizer.train("the cat sat on the mat. the dog sat on the log. " * 30, vocab_size=280)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.n_vocab, context_length=12, d_model=16, n_layers=1, n_heads=2)).eval()
    prompts = ["the cat sat on the", "the dog sat on the log. the cat sat on the mat. the dog sat on the"]
    answers = ["mat", "log"]
    out = answer_log_likelihood(model, tok, prompts, answers, batch_size=1)
    batched = answer_log_likelihood(model, tok, prompts, answers, batch_size=2)  # padding changes nothing
    assert torch.allclose(out["log_prob"], batched["log_prob"], atol=1e-5) and torch.equal(out["exact"], batched["exact"])
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        a = tok.encode_ordinary(" " + answer)
        p = tok.encode_ordinary(prompt)[-(12 - len(a)) :]  # the long prompt is cut from the left
        ids = torch.tensor(p + a)
        with torch.no_grad():
            lp = model(ids[None, :-1])[0].log_softmax(-1)
        want = sum(lp[len(p) - 1 + j, a[j]] for j in range(len(a)))
        greedy = all(int(lp[len(p) - 1 + j].argmax()) == a[j] for j in range(len(a)))
        assert out["log_prob"][i] == pytest.approx(float(want), abs=1e-5)
        assert bool(out["exact"][i]) == greedy and int(out["tokens"][i]) == len(a)
    with pytest.raises(ValueError):
        answer_log_likelihood(model, tok, prompts, answers[:1])


def test_question_is_a_frozen_record():
    q = Question(3, "a b", "c")
    with pytest.raises(AttributeError):
        q.answer = "d"
