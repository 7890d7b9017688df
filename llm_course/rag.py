"""Retrieval-augmented generation on the course corpus (chapter 14).

Implements (Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP
Tasks"; Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond"):

- `corpus_passages`: the CPython documentation (`llm_course.data`) cut into short passages of
  whole words, each marked as seen in pretraining or held out (the last 10% of the corpus, which
  the chapter 06 model never trained on);
- `bm25_scores`: the BM25 score of every passage for a query, written out as the formula (the
  teaching version), and `BM25Retriever`, the same ranking from the `bm25s` library (the one
  used for retrieval; the tests check the two agree);
- `cloze_questions`: questions built from passages deterministically: the words before a word
  of a passage are the question, that word is the answer;
- `rag_prompt` and `answer_log_likelihood`: the reader, any causal language model of the
  course, scored on the answer with no passage, with the retrieved passages, or with the
  passage the question came from (`recall_at_k` scores the retriever alone).

Shapes: N passages, Q questions, K passages retrieved per question, B batch, T sequence length,
V vocabulary.
Left out: dense (embedding) retrievers, training the retriever and the reader together as
Lewis et al. do, and generating free-form answers (the answer is scored, not sampled).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import bm25s
import numpy as np
import torch
import torch.nn.functional as F
from bm25s.stopwords import STOPWORDS_EN

from llm_course.data import default_corpus, train_val_split

# ---------------------------------------------------------------------------------------
# Passages
# ---------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
STOPWORDS = frozenset(STOPWORDS_EN)  # the 33 English stopwords of bm25s (a, the, is, ...)


def tokenize(text: str) -> list[str]:
    """BM25's terms: lower-cased runs of letters, digits and underscores, stopwords removed."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


@dataclass(frozen=True)
class Passage:
    """A retrievable unit: a few dozen consecutive words of one documentation topic."""

    topic: str  # the pydoc_data.topics key it comes from ("assert", "typesseq", ...)
    text: str  # its words joined by single spaces
    held_out: bool  # True if the topic lies in the corpus tail that pretraining held out


def corpus_passages(words_per_passage: int = 30, val_fraction: float = 0.1) -> list[Passage]:
    """The default corpus (`data.default_corpus`: every topic, sorted, joined by blank lines) cut
    into passages of `words_per_passage` whitespace-separated words (a topic's last one may be
    shorter). A passage is held out when its topic starts inside the held-out tail of
    `train_val_split(corpus, val_fraction)`; the topic that straddles the cut counts as seen."""
    from pydoc_data.topics import topics

    if words_per_passage < 1:
        raise ValueError(f"words_per_passage must be at least 1, got {words_per_passage}")
    cut = len(train_val_split(default_corpus(), val_fraction)[0])  # first held-out character
    passages, offset = [], 0
    for name in sorted(topics):
        text = topics[name].strip()
        words = text.split()
        for begin in range(0, len(words), words_per_passage):
            passages.append(Passage(name, " ".join(words[begin : begin + words_per_passage]), offset >= cut))
        offset += len(text) + 2
    return passages


# ---------------------------------------------------------------------------------------
# BM25
# ---------------------------------------------------------------------------------------


def bm25_scores(query: list[str], documents: list[list[str]], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """BM25 score of each document for the query terms: (N,) float64.

        score(q, d) = sum over terms t of q:  idf(t) * tf(t, d) (k1 + 1) / (tf(t, d) + k1 (1 - b + b |d| / avgdl))
        idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

    tf(t, d): occurrences of t in d; |d|: terms in d; avgdl: mean |d|; df(t): documents holding
    t; N: documents. A term repeated in the query counts once per repetition. k1 bounds how much
    repeating a term in a document can add (the term saturates), b how much long documents are
    discounted. The idf is Lucene's, which is never negative (Robertson & Zaragoza's original,
    ln((N - df + 0.5) / (df + 0.5)), is negative for terms in over half the documents).
    """
    if not documents:
        raise ValueError("bm25_scores needs at least one document")
    n_docs = len(documents)
    lengths = np.array([len(d) for d in documents], dtype=np.float64)  # (N,)
    avgdl = lengths.mean()
    if avgdl == 0:
        raise ValueError("every document is empty: there is nothing to score")
    counts = [dict() for _ in documents]
    for c, doc in zip(counts, documents):
        for term in doc:
            c[term] = c.get(term, 0) + 1
    scores = np.zeros(n_docs)
    for term in query:
        tf = np.array([c.get(term, 0) for c in counts], dtype=np.float64)  # (N,)
        df = float((tf > 0).sum())
        if df == 0:
            continue
        idf = np.log(1 + (n_docs - df + 0.5) / (df + 0.5))
        scores += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths / avgdl))
    return scores


class BM25Retriever:
    """BM25 over a list of texts with the `bm25s` library (a sparse index, fast on thousands of passages).

    bm25s's default "lucene" variant drops the constant factor (k1 + 1) of `bm25_scores`, which
    scales every score alike and leaves the ranking unchanged: `scores` multiplies it back.
    """

    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75):
        if not texts:
            raise ValueError("BM25Retriever needs at least one text to index")
        self.k1, self.b, self.n_docs = k1, b, len(texts)
        self.index = bm25s.BM25(k1=k1, b=b, method="lucene")
        self.index.index([tokenize(t) for t in texts], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """(N,) BM25 scores of every indexed text for `query` (as `bm25_scores` defines them)."""
        terms = [t for t in tokenize(query) if t in self.index.vocab_dict]  # bm25s rejects unknown terms
        if not terms:
            return np.zeros(self.n_docs)
        return (self.k1 + 1) * self.index.get_scores(terms).astype(np.float64)

    def retrieve(self, queries: list[str], k: int) -> np.ndarray:
        """(Q, k) ids of the k best texts for each query, best first (ties: the lower id first)."""
        if not 1 <= k <= self.n_docs:
            raise ValueError(f"k must be in 1 .. {self.n_docs} (the indexed texts), got {k}")
        return np.stack([np.argsort(-self.scores(q), kind="stable")[:k] for q in queries])


def recall_at_k(retrieved: np.ndarray, gold: np.ndarray, k: int) -> float:
    """Share of the queries whose gold passage is among the first k retrieved: retrieved (Q, K >= k), gold (Q,)."""
    if retrieved.ndim != 2 or len(retrieved) != len(gold):
        raise ValueError(f"retrieved must be (Q, K) with Q = len(gold) = {len(gold)}, got shape {retrieved.shape}")
    if k > retrieved.shape[1]:
        raise ValueError(f"only {retrieved.shape[1]} passages were retrieved per query, cannot score recall@{k}")
    return float((retrieved[:, :k] == np.asarray(gold)[:, None]).any(axis=1).mean())


# ---------------------------------------------------------------------------------------
# Questions and the reader
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """A cloze question: `prefix` is followed by `answer` in passage number `passage`."""

    passage: int  # index of the gold passage in the list the question was built from
    prefix: str  # the question: the words just before the answer
    answer: str  # one word, preceded by a space when scored


def cloze_questions(passages: list[Passage], n: int, seed: int = 0, prefix_words: int = 8, held_out: bool = True,
                    min_answer_chars: int = 4) -> list[Question]:  # fmt: skip
    """Up to `n` questions, at most one per passage, from the held-out passages (or the seen ones):
    a passage is drawn at random (seeded), then one of its words that has `prefix_words` words
    before it, is alphabetic, has at least `min_answer_chars` letters and is not a stopword; the
    words before it are the question and the word is the answer."""
    if n < 1 or prefix_words < 1:
        raise ValueError(f"n and prefix_words must be at least 1, got n={n}, prefix_words={prefix_words}")
    rng = random.Random(seed)
    pool = [i for i, p in enumerate(passages) if p.held_out == held_out]
    rng.shuffle(pool)
    questions = []
    for i in pool:
        words = passages[i].text.split(" ")
        candidates = [j for j in range(prefix_words, len(words)) if words[j].isalpha()
                      and len(words[j]) >= min_answer_chars and words[j].lower() not in STOPWORDS]  # fmt: skip
        if candidates:
            j = rng.choice(candidates)
            questions.append(Question(i, " ".join(words[j - prefix_words : j]), words[j]))
        if len(questions) == n:
            break
    return questions


def rag_prompt(passages: list[str], question: str) -> str:
    """The reader's input: the passages, the best one last (next to the question), then the question,
    separated by blank lines as the corpus separates its topics. `passages` is given best first."""
    return "\n\n".join([*reversed(passages), question])


@torch.no_grad()
def answer_log_likelihood(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """How well a causal LM predicts " " + answer after each prompt.

    The prompt is cut from the left so that prompt and answer fit the model's context. Returns
    (N,) tensors: "log_prob" (sum over the answer's tokens, nats), "tokens" (the answer's length in
    tokens), "exact" (True if greedy decoding would write the answer: every answer token is the
    argmax given the tokens before it).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    context = model.config.context_length
    rows = []  # (tokens, number of prompt tokens)
    for prompt, answer in zip(prompts, answers):
        a = tokenizer.encode_ordinary(" " + answer)
        if not 1 <= len(a) < context:
            raise ValueError(f"the answer {answer!r} has {len(a)} tokens; it needs 1 .. {context - 1}")
        p = tokenizer.encode_ordinary(prompt)[-(context - len(a)) :]
        if not p:
            raise ValueError("every prompt needs at least one token before the answer")
        rows.append((p + a, len(p)))
    log_prob, exact = [], []
    for begin in range(0, len(rows), batch_size):
        chunk = rows[begin : begin + batch_size]
        T = max(len(t) for t, _ in chunk) - 1
        ids = torch.zeros(len(chunk), T + 1, dtype=torch.long)  # right-padded: padding comes after, unseen
        for i, (t, _) in enumerate(chunk):
            ids[i, : len(t)] = torch.tensor(t)
        logits = model(ids[:, :-1])  # (B, T, V)
        for i, (t, n_prompt) in enumerate(chunk):
            steps = torch.arange(n_prompt - 1, len(t) - 1)  # positions that predict the answer's tokens
            target = ids[i, n_prompt : len(t)]
            lp = F.log_softmax(logits[i, steps].float(), dim=-1)  # (len(answer), V)
            log_prob.append(lp.gather(1, target[:, None]).sum())
            exact.append(bool((lp.argmax(-1) == target).all()))
    tokens = torch.tensor([len(t) - n for t, n in rows])
    return {"log_prob": torch.stack(log_prob), "tokens": tokens, "exact": torch.tensor(exact)}
