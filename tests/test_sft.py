"""Supervised fine-tuning (llm_course.sft): masked loss by hand, the chat template, seeded data, SFT on the Trainer."""

import math
import random
from collections import Counter

import pytest
import torch

from llm_course import sft
from llm_course.lora import apply_lora, count_trainable
from llm_course.optim import warmup_cosine_scheduler
from llm_course.tokenizer import Tokenizer
from llm_course.trainer import TrainConfig, Trainer
from llm_course.transformer import Transformer, tiny


def test_masked_loss_equals_hand_computation():
    # One sequence of 3 positions, vocabulary 2; only positions 1 and 2 are response.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(4.0)]]])
    targets = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[False, True, True]])
    # p(target) at 1 = 3/4, at 2 = 4/5; the prompt position 0 (p = 1/2) is ignored.
    want = -(math.log(3 / 4) + math.log(4 / 5)) / 2
    assert sft.masked_sft_loss(logits, targets, mask).item() == pytest.approx(want, rel=1e-6)


def test_masked_loss_averages_over_all_response_tokens_of_the_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.bool)
    nll = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(sft.masked_sft_loss(logits, targets, mask), nll[mask].mean())
    torch.testing.assert_close(
        sft.masked_sft_loss(logits, targets, mask),
        torch.nn.functional.cross_entropy(logits[mask], targets[mask]),
    )


@pytest.fixture(scope="module")
def tok():
    t = Tokenizer.train("Last word: list tuple dict. Repeat twice: yield yield. " * 20, 300, special_tokens=["<|endoftext|>"])
    sft.add_chat_tokens(t)
    return t


def test_template_round_trip_and_mask(tok):
    ex = sft.Example("last", "Last word: list tuple dict", "dict")
    text = sft.format_chat(ex)
    assert text == "<|user|>Last word: list tuple dict<|assistant|> dict<|endoftext|>"
    assert sft.parse_chat(text) == sft.Example("", ex.instruction, ex.response)
    inputs, targets, mask = sft.encode_example(ex, tok)
    ids = tok.encode(text, allowed_special="all")
    assert inputs == ids[:-1] and targets == ids[1:]
    n_prompt = len(tok.encode(sft.format_prompt(ex.instruction), allowed_special="all"))
    assert mask == [False] * (n_prompt - 1) + [True] * (len(ids) - n_prompt)
    assert tok.decode([t for t, m in zip(targets, mask) if m]) == " dict<|endoftext|>"
    assert ids[n_prompt - 1] == tok.special_tokens[sft.ASSISTANT]


def test_add_chat_tokens_is_idempotent(tok):
    before = dict(tok.special_tokens)
    assert sft.add_chat_tokens(tok) == {k: before[k] for k in (sft.USER, sft.ASSISTANT)}
    assert tok.special_tokens == before


def test_data_is_seeded_and_split():
    words = sft.corpus_words("alpha beta gamma delta epsilon zeta theta iota kappa lambda " * 3)
    assert words == sorted(words) and len(words) == 10
    train, held = sft.split_words(words, 0.3, seed=0)
    assert set(train).isdisjoint(held) and len(held) == 3
    a, b = sft.make_instructions(20, train, seed=5), sft.make_instructions(20, train, seed=5)
    assert a == b and a != sft.make_instructions(20, train, seed=6)
    assert {e.task for e in a} == set(sft.TASKS)
    for e in a:
        w = e.instruction.split(":")[1].split()
        assert e.response == sft.TASKS[e.task][2](w)
        assert set(w) <= set(train)


def test_resize_keeps_rows_and_ties():
    model = Transformer(tiny(50), generator=torch.Generator().manual_seed(0))
    old = model.token_embedding.weight.detach().clone()
    sft.resize_token_embeddings(model, 53)
    assert model.token_embedding.weight.shape == (53, model.config.d_model)
    assert model.lm_head.weight is model.token_embedding.weight
    torch.testing.assert_close(model.token_embedding.weight[:50], old)
    torch.testing.assert_close(model.token_embedding.weight[52], old.mean(0))
    assert model(torch.tensor([[52, 1]])).shape == (1, 2, 53)


def test_sft_train_lowers_the_response_loss(tok):
    torch.manual_seed(0)
    model = Transformer(tiny(tok.n_vocab), generator=torch.Generator().manual_seed(0))
    data = sft.make_instructions(64, ["list", "tuple", "dict", "yield"], seed=0)
    before = sft.response_loss(model, data, tok)
    result = sft.sft_train(model, data, tok, steps=30, batch_size=8, lr=3e-3)
    assert len(result.losses) == 30 and result.trainable == count_trainable(model)[0]
    assert sft.response_loss(model, data, tok) < before - 1.0
    lora = apply_lora(model, r=2, alpha=4)
    result = sft.sft_train(lora, data, tok, steps=2, batch_size=8)
    assert result.trainable == count_trainable(lora)[0] < count_trainable(lora)[1] / 10
    assert len(sft.answers(model, tok, ["Last word: list tuple dict", "Repeat twice: yield"])) == 2


def test_sft_train_equals_a_plain_loop_with_pytorchs_adamw_and_scheduler(tok):
    # The oracle: the same batches, torch.optim.AdamW and the warmup + cosine LambdaLR, in a loop of our own.
    data = sft.make_instructions(40, ["list", "tuple", "dict", "yield"], seed=0)
    model = Transformer(tiny(tok.n_vocab), generator=torch.Generator().manual_seed(0))
    oracle = Transformer(tiny(tok.n_vocab), generator=torch.Generator().manual_seed(0))
    result = sft.sft_train(model, data, tok, steps=8, batch_size=4, lr=3e-3, seed=3, warmup_steps=2, min_lr_ratio=0.2)
    opt = torch.optim.AdamW(oracle.parameters(), lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    schedule = warmup_cosine_scheduler(opt, warmup=2, total=8, min_lr_ratio=0.2)
    batches = sft.instruction_batches(data, tok, batch_size=4, seed=3)
    losses = []
    for _ in range(8):
        inputs, targets, mask = batches.next_batch()
        loss = sft.masked_sft_loss(oracle(inputs), targets, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    assert result.losses == pytest.approx(losses, rel=1e-5, abs=1e-6)
    # Adam divides by sqrt(v): where a gradient is ~0 float rounding moves a weight by a fraction of a
    # step; 1e-4 is 3% of one step at lr 3e-3.
    for p, q in zip(model.parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)


def test_sft_on_the_trainer_resumes_exactly_from_a_checkpoint(tok, tmp_path):
    data = sft.make_instructions(40, ["list", "tuple", "dict", "yield"], seed=0)
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=6, lr=3e-3, warmup_steps=1, weight_decay=0.0,
                         checkpoint_interval=3, spike_threshold=0.0, eval_interval=0)  # fmt: skip

    def trainer(out):
        model = Transformer(tiny(tok.n_vocab), generator=torch.Generator().manual_seed(0))
        return Trainer(model, config, data=sft.instruction_batches(data, tok, 4), objective=sft.sft_objective,
                       out_dir=out, log=None)  # fmt: skip

    whole = trainer(tmp_path / "whole").train()["loss"]
    stopped = trainer(tmp_path / "stopped")
    stopped.train(until_step=3)
    resumed = trainer(tmp_path / "resumed")
    resumed.load_checkpoint(tmp_path / "stopped" / "step_0000003")
    assert resumed.train()["loss"] == whole


# --------------------------------------------------------------------------- few-shot prompts, scoring, forgetting
POOL = [
    sft.Example("last", "Last word: list tuple dict", "dict"),
    sft.Example("first", "First word: yield list", "yield"),
    sft.Example("last", "Last word: dict yield list", "list"),
    sft.Example("repeat", "Repeat twice: tuple", "tuple tuple"),
    sft.Example("last", "Last word: tuple list yield", "yield"),
]
QUERY = sft.Example("last", "Last word: yield dict tuple", "tuple")


def test_few_shot_prompt_exact_strings():
    assert sft.few_shot_prompt(QUERY, POOL, 0) == "<|user|>Last word: yield dict tuple<|assistant|>"
    one = [e for e in POOL if e.task == "last"][:1]
    assert sft.few_shot_prompt(QUERY, one + POOL[1:2], 1) == (
        "<|user|>Last word: list tuple dict<|assistant|> dict<|endoftext|>"
        "<|user|>Last word: yield dict tuple<|assistant|>"
    )
    # The three examples of the task, in the order random.Random(0).shuffle gives; the other tasks left out.
    order = [0, 2, 4]
    random.Random(0).shuffle(order)
    assert order == [0, 4, 2]
    assert sft.few_shot_prompt(QUERY, POOL, 3, seed=0) == (
        "<|user|>Last word: list tuple dict<|assistant|> dict<|endoftext|>"
        "<|user|>Last word: tuple list yield<|assistant|> yield<|endoftext|>"
        "<|user|>Last word: dict yield list<|assistant|> list<|endoftext|>"
        "<|user|>Last word: yield dict tuple<|assistant|>"
    )


def _demos(prompt: str) -> list[sft.Example]:
    chats = prompt.split(sft.END)[:-1]
    return [sft.parse_chat(c + sft.END) for c in chats]


def test_few_shot_prompt_is_seeded_nested_and_of_the_querys_task():
    words = ["list", "tuple", "dict", "yield", "range", "print", "class", "import"]
    pool = sft.make_instructions(200, words, seed=0)
    query = sft.make_instructions(8, words, seed=9)[2]
    assert sft.few_shot_prompt(query, pool, 4, seed=3) == sft.few_shot_prompt(query, pool, 4, seed=3)
    orders = {tuple(_demos(sft.few_shot_prompt(query, pool, 4, seed=s))) for s in range(6)}
    assert len(orders) > 1, "different seeds must draw different examples"
    by_instruction = {e.instruction: e for e in pool}
    for seed in range(3):
        demos = [_demos(sft.few_shot_prompt(query, pool, k, seed)) for k in range(6)]
        for k in range(5):
            assert demos[k] == demos[k + 1][:k], "a larger k must only add examples after the smaller k's"
        for d in demos[5]:  # real pool examples of the query's task, with their own answers
            assert by_instruction[d.instruction].task == query.task
            assert by_instruction[d.instruction].response == d.response
        # drawn without replacement (the pool may hold the same instruction twice, as a sampled set can)
        used, available = Counter(d.instruction for d in demos[5]), Counter(e.instruction for e in pool)
        assert all(n <= available[i] for i, n in used.items())
    assert sft.few_shot_prompts([query, query], pool, 2, seed=4) == [
        sft.few_shot_prompt(query, pool, 2, seed=4), sft.few_shot_prompt(query, pool, 2, seed=5)]  # fmt: skip


def test_few_shot_prompt_never_shows_the_querys_answer():
    # The pool holds the query itself: it must never be a demonstration, whatever the seed.
    pool = [QUERY, *POOL]
    n_other = sum(e.task == QUERY.task for e in POOL)
    for seed in range(20):
        prompt = sft.few_shot_prompt(QUERY, pool, n_other, seed)
        assert prompt.endswith(sft.format_prompt(QUERY.instruction))
        assert prompt.count(QUERY.instruction) == 1 and sft.format_chat(QUERY) not in prompt
        assert QUERY.instruction not in [d.instruction for d in _demos(prompt)]
    with pytest.raises(ValueError, match=f"only {n_other} of task 'last' other than the query"):
        sft.few_shot_prompt(QUERY, pool, n_other + 1)


@pytest.mark.parametrize("k", [-1, 1.5, True, "2"])
def test_few_shot_prompt_rejects_bad_k(k):
    with pytest.raises(ValueError, match="must be an int >= 0"):
        sft.few_shot_prompt(QUERY, POOL, k)


def test_few_shot_prompt_needs_the_querys_task():
    with pytest.raises(ValueError, match="task must be one of"):
        sft.few_shot_prompt(sft.Example("", QUERY.instruction, QUERY.response), POOL, 1)


@pytest.fixture(scope="module")
def trained(tok):
    """A tiny model fine-tuned just enough to answer some instructions and miss others."""
    model = Transformer(tiny(tok.n_vocab), generator=torch.Generator().manual_seed(0))
    data = sft.make_instructions(64, ["list", "tuple", "dict", "yield"], seed=0)
    sft.sft_train(model, data, tok, steps=30, batch_size=8, lr=3e-3)
    return model, data


def test_score_responses_loss_is_the_masked_loss_of_the_whole_batch(trained, tok):
    model, data = trained
    prompts = sft.few_shot_prompts(data[:12], data, 2, seed=1)
    for p in [None, prompts]:
        scores = sft.score_responses(model, data[:12], tok, prompts=p, batch_size=5)  # batches of 5, 5 and 2
        encoded = [sft.encode_example(e, tok, None if p is None else p[i]) for i, e in enumerate(data[:12])]
        inputs, targets, mask = sft.collate(encoded)
        with torch.no_grad():
            want = sft.masked_sft_loss(model(inputs), targets, mask).item()
        assert scores.loss == pytest.approx(want, rel=1e-5)
        assert scores.tokens.tolist() == mask.sum(1).tolist()
        assert sft.response_loss(model, data[:12], tok, batch_size=5, prompts=p) == scores.loss
    with pytest.raises(ValueError, match="one prompt per example"):
        sft.score_responses(model, data[:3], tok, prompts=prompts[:2])


def test_score_responses_exact_equals_greedy_generation(trained, tok):
    # The oracle: generate greedily (`complete`) and compare the text, token by token, for each example.
    model, data = trained
    queries = sft.make_instructions(40, ["list", "tuple", "dict", "yield"], seed=7)
    for k in [0, 2]:
        prompts = sft.few_shot_prompts(queries, data, k)
        got = sft.complete(model, tok, prompts)
        want = [g == " " + q.response for g, q in zip(got, queries)]
        assert 0 < sum(want) < len(want), "the test needs both right and wrong answers"
        assert sft.score_responses(model, queries, tok, prompts=prompts).greedy_exact.tolist() == want
    assert sft.score_responses(model, queries, tok).exact == pytest.approx(sft.exact_match(model, queries, tok))


def test_complete_refuses_a_prompt_that_does_not_fit(trained, tok):
    model, data = trained
    long = sft.few_shot_prompt(data[0], data, 12)
    n = len(tok.encode(long, allowed_special="all"))
    assert n + 12 > model.config.context_length
    with pytest.raises(ValueError, match=f"prompt 0 has {n} tokens: with max_new_tokens=12 it does not fit"):
        sft.complete(model, tok, [long])


def test_pretraining_loss_is_the_trainers_validation_loss():
    model = Transformer(tiny(50), generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 50, (5 * 16 + 1,), generator=torch.Generator().manual_seed(1))
    # The oracle: chapter 06's trainer, its validation batches covering every window (2 + 2 + 1).
    config = TrainConfig(batch_size=2, seq_len=16, max_steps=1, eval_batches=10, eval_interval=0)
    want = Trainer(model, config, tokens, tokens, log=None).evaluate()
    assert sft.pretraining_loss(model, tokens, seq_len=16, batch_size=2) == pytest.approx(want, rel=1e-6)
    # By hand: with equal batches it is the mean over all windows' tokens.
    windows = tokens[: 4 * 16 + 1]
    x = torch.stack([windows[i * 16 : i * 16 + 16] for i in range(4)])
    y = torch.stack([windows[i * 16 + 1 : i * 16 + 17] for i in range(4)])
    with torch.no_grad():
        hand = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert sft.pretraining_loss(model, windows, seq_len=16, batch_size=2) == pytest.approx(hand, rel=1e-5)
    with pytest.raises(ValueError, match="exceeds the model's context_length"):
        sft.pretraining_loss(model, tokens, seq_len=model.config.context_length + 1)


def test_pretraining_loss_over_part_of_the_vocabulary():
    # The softmax over the first 40 of 50 ids only, by hand; the ids past 40 cannot occur in the text.
    model = Transformer(tiny(50), generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 40, (4 * 16 + 1,), generator=torch.Generator().manual_seed(2))
    x = torch.stack([tokens[i * 16 : i * 16 + 16] for i in range(4)])
    y = torch.stack([tokens[i * 16 + 1 : i * 16 + 17] for i in range(4)])
    with torch.no_grad():
        logits = model(x)
    hand = -torch.log_softmax(logits[..., :40], -1).gather(-1, y[..., None]).mean().item()
    assert sft.pretraining_loss(model, tokens, 16, batch_size=4, vocab_size=40) == pytest.approx(hand, rel=1e-5)
    # Leaving ids out of the softmax can only raise the probability of the others.
    whole = sft.pretraining_loss(model, tokens, 16)
    assert sft.pretraining_loss(model, tokens, 16, vocab_size=40) < whole
    assert sft.pretraining_loss(model, tokens, 16, vocab_size=50) == whole
    assert sft.pretraining_losses(model, tokens, [None, 40, 50], 16, batch_size=4) == pytest.approx(
        [whole, hand, whole], rel=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="outside the first vocab_size=30 ids"):
        sft.pretraining_loss(model, tokens, seq_len=16, vocab_size=30)
    with pytest.raises(ValueError, match=r"vocab_size must be in \[1, 50\]"):
        sft.pretraining_loss(model, tokens, seq_len=16, vocab_size=51)
