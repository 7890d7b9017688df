"""Tests of llm_course.data_quality (filters, mixing) and llm_course.data_pipeline (the chapter's pipeline and runs)."""

from __future__ import annotations

import math

import pytest
import torch

from llm_course import data_pipeline
from llm_course.data_pipeline import FilterRun, load_filter_run, plant_junk, plant_near_duplicates, run_pipeline
from llm_course.data_quality import CODE_RULES, GOPHER_RULES, MixtureBatches, Rule, apply_rules, removed_share, text_stats

PROSE = ("The model reads the text and predicts the next token of the sequence, and it learns to do that with "
         "gradient descent on a large corpus of documents that have been cleaned before training. ") * 3  # fmt: skip


def test_stats_worked_example():
    text = "ab cd #\nab cd #\nxyz...\n- item"
    s = text_stats(text)
    assert s["words"] == 9
    assert s["mean_word_length"] == pytest.approx(sum(map(len, text.split())) / 9)
    assert s["symbol_ratio"] == pytest.approx(3 / 9)  # two "#" and one "..."
    assert s["ellipsis_lines"] == pytest.approx(1 / 4)
    assert s["bullet_lines"] == pytest.approx(1 / 4)
    assert s["duplicate_lines"] == pytest.approx(2 / 4)
    assert s["duplicate_line_chars"] == pytest.approx(14 / (7 + 7 + 6 + 6))
    assert s["alpha_words"] == pytest.approx(6 / 9)  # "#", "#" and "-" have no letter
    assert s["top_bigram_chars"] == pytest.approx(2 * 4 / sum(map(len, text.split())))  # "ab cd" twice
    assert text_stats("")["words"] == 0


def test_gopher_rules_pass_prose_and_catch_each_kind_of_junk():
    assert apply_rules([PROSE], GOPHER_RULES) == [None]
    cases = {
        "too short": ("The cat and the dog.", "word count outside 50 .. 100,000"),
        "repeated lines": ("\n".join(["Subscribe to the newsletter and have fun with it"] * 10), "over 30% of lines are duplicated"),
        "symbols": (PROSE + " #" * 40, "symbol-to-word ratio above 0.1"),
        "no stop words": (" ".join(["python", "download", "free", "cheap", "online"] * 20), "fewer than 2 of the 8 stop words"),
        "ellipsis lines": ("\n".join([PROSE] + ["and then the text was cut ..."] * 3), "over 30% of lines end in an ellipsis"),
    }
    for name, (text, rule) in cases.items():
        assert apply_rules([text], GOPHER_RULES) == [rule], name


def test_code_rules_keep_ordinary_code():
    code = "\n".join(f"def f{i}(x):\n    if x:\n        return x + {i}\n    else:\n        return None\n" for i in range(12))
    assert apply_rules([code], GOPHER_RULES) != [None]  # prose rules reject code
    assert apply_rules([code], CODE_RULES) == [None]
    assert apply_rules([code + "\n" + "x" * 1200], CODE_RULES) == ["a line longer than 1,000 characters"]


def test_unknown_statistic_and_bad_document_are_errors():
    with pytest.raises(ValueError, match="unknown statistic 'nope'"):
        apply_rules(["a"], [Rule("x", "nope")])
    with pytest.raises(TypeError, match="must be a str"):
        text_stats(None)


def test_removed_share_counts_the_flagged_sizes():
    assert removed_share([None, "x", None, "y"], [1, 2, 3, 4]) == pytest.approx(0.6)


# --------------------------------------------------------------------------- mixing
def test_mixture_realises_its_weights():
    streams = {"a": torch.arange(1000), "b": torch.arange(1000) + 5000, "c": torch.arange(200) + 9000}
    weights = {"a": 6.0, "b": 3.0, "c": 1.0}
    mix = MixtureBatches(streams, weights, batch_size=50, seq_len=8, seed=3)
    n = 0
    for _ in range(60):
        x, y = mix.next_batch()
        assert x.shape == y.shape == (50, 8) and torch.equal(x[:, 1:], y[:, :-1])
        n += 50
    shares = mix.realised_shares()
    for name, w in weights.items():
        p = w / 10
        assert abs(shares[name] - p) < 4 * math.sqrt(p * (1 - p) / n), (name, shares[name], p)
    # every window comes from one source only (its ids lie in that source's range)
    x, _ = mix.next_batch()
    assert ((x // 1000).max(1).values - (x // 1000).min(1).values).max() <= 1  # a ranges 0-999, b 5000-5999, ...


def test_mixture_resumes_exactly():
    streams = {"a": torch.arange(300), "b": torch.arange(300) + 1000}
    one = MixtureBatches(streams, {"a": 1, "b": 1}, 4, 5, seed=1)
    one.next_batch()
    state = one.state_dict()
    want = one.next_batch()
    two = MixtureBatches(streams, {"a": 1, "b": 1}, 4, 5, seed=9)
    two.load_state_dict(state)
    got = two.next_batch()
    assert torch.equal(want[0], got[0]) and two.counts == one.counts


@pytest.mark.parametrize(
    ("weights", "message"),
    [({"a": 1}, "name every source"), ({"a": 1, "b": -1}, "non-negative"), ({"a": 0, "b": 0}, "positive sum")],
)
def test_mixture_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        MixtureBatches({"a": torch.arange(50), "b": torch.arange(50)}, weights, 2, 4)


def test_mixture_short_stream():
    with pytest.raises(ValueError, match="at least seq_len \\+ 1 = 9"):
        MixtureBatches({"a": torch.arange(5)}, {"a": 1}, 2, 8)


# --------------------------------------------------------------------------- the pipeline
def test_pipeline_removes_what_was_planted():
    clean = [PROSE.replace("model", f"model{i}").replace("corpus", f"corpus {i} {i * 7}")
             + " ".join(f"word{i}x{j}" for j in range(60)) for i in range(6)]  # fmt: skip
    near, sources = plant_near_duplicates(clean, 2, 2, 0.01, seed=0)
    assert len(sources) == 4 and sources[0] == sources[1] and sources[2] == sources[3] != sources[0]
    junk = plant_junk(4, seed=0)
    docs = clean + [clean[1].upper()] + near + junk
    result = run_pipeline(docs, ["prose"] * len(docs))
    stage = result["stage"]
    assert stage[:6] == [None] * 6
    assert stage[6] == "exact" and result["duplicate_of"][6] == 1
    assert set(stage[7:11]) <= {"exact", "near"} and "near" in stage[7:11]  # a copy with no edit is exact
    assert all(s in ("quality", "near") for s in stage[11:])
    with pytest.raises(ValueError, match="n_docs must be in 1 .. 6"):
        plant_near_duplicates(clean, 7, 1, 0.1)
    with pytest.raises(ValueError, match="kinds must be"):
        run_pipeline(docs[:1], ["html"])


def test_filter_run_is_cached(tmp_path, monkeypatch):
    run = FilterRun(d_model=16, n_layers=1, n_heads=2, seq_len=16, batch_size=4, steps=3)
    train, val = [PROSE] * 3, [PROSE[::-1]]
    model, info = load_filter_run(run, "test", train, val, cache=tmp_path)
    assert info["run"]["steps"] == 3 and len(info["val_history"]["loss"]) >= 1

    def no_training(*args):
        raise AssertionError("trained again although cached")

    monkeypatch.setattr(data_pipeline, "train_filter_run", no_training)
    again, info_again = load_filter_run(run, "test", train, val, cache=tmp_path)
    assert info_again == info
    x = torch.randint(0, 256, (2, 16))
    assert torch.equal(model(x), again(x))
    with pytest.raises(AssertionError, match="trained again"):  # other documents: a new entry
        load_filter_run(run, "test", train + [PROSE], val, cache=tmp_path)


def test_held_out_loss_is_the_mean_cross_entropy_of_consecutive_windows():
    from llm_course.data_pipeline import byte_tokens, held_out_loss
    from llm_course.transformer import Transformer

    run = FilterRun(d_model=16, n_layers=1, n_heads=2, seq_len=8)
    model = Transformer(run.model_config(), generator=torch.Generator().manual_seed(0)).eval()
    docs = ["abc def ghi", "jkl mno pqr stu"]
    tokens = byte_tokens(docs)  # 28 bytes: 3 windows of 8 + 1
    assert len(tokens) == len("abc def ghi\n\njkl mno pqr stu")
    want = []
    for w in range(3):
        x, y = tokens[w * 8 : w * 8 + 8], tokens[w * 8 + 1 : w * 8 + 9]
        want.append(torch.nn.functional.cross_entropy(model(x[None])[0], y, reduction="none"))
    assert held_out_loss(model, docs, 8) == pytest.approx(torch.cat(want).mean().item(), rel=1e-5)
    assert held_out_loss(model, docs, 8, n_windows=1) == pytest.approx(want[0].mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        held_out_loss(model, ["ab"], 8)
