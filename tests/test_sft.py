"""Supervised fine-tuning (llm_course.sft): masked loss by hand, the chat template, seeded data, SFT on the Trainer."""

import math

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
