"""Tests for llm_course.generation: greedy and sampled generation equal Hugging Face's generate()
with the same weights (GPT-2 and Llama), end of sequence, the context window, perplexity against
Hugging Face's loss and a token-by-token oracle, and the command line in a subprocess."""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

from llm_course.checkpoints import from_hf_state_dict, save_model, to_hf_config
from llm_course.beam_search import beam_search
from llm_course.generation import (
    generate,
    load_checkpoint,
    next_token_logits,
    perplexity,
    token_nlls,
    truncate_at_stop,
)
from llm_course.tokenizer import Tokenizer
from llm_course.transformer import Transformer, llama_tiny, tiny

transformers = pytest.importorskip("transformers")
V = 101


def small(make, **changes):
    return dataclasses.replace(make(V), n_layers=2, context_length=48, **changes)


def hf_and_ours(make, **changes):
    """A Hugging Face model with random weights (std 0.2: peaked distributions) and ours with the same."""
    config = small(make, **changes)
    torch.manual_seed(0)
    cls = transformers.GPT2LMHeadModel if config.norm == "layernorm" else transformers.LlamaForCausalLM
    hf = cls(to_hf_config(config, attn_implementation="eager", initializer_range=0.2)).eval()
    return hf, from_hf_state_dict(hf.state_dict(), hf.config)


def prompt(batch=3, length=5, seed=1):
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_generate(hf, idx, **kwargs):
    kwargs.setdefault("eos_token_id", None)
    kwargs.setdefault("pad_token_id", 0)
    with torch.no_grad():
        return hf.generate(idx, attention_mask=torch.ones_like(idx), **kwargs)


MODELS = pytest.mark.parametrize("make", [tiny, llama_tiny], ids=["gpt2", "llama"])


# ----------------------------------------------------------------------------- oracle: Hugging Face
@pytest.fixture(scope="module")
def gpt2_pair():
    return hf_and_ours(tiny)


@MODELS
def test_greedy_equals_hugging_face(make):
    hf, ours = hf_and_ours(make)
    idx = prompt()
    expected = hf_generate(hf, idx, do_sample=False, max_new_tokens=30)
    assert torch.equal(generate(ours, idx, 30, temperature=0), expected)


@MODELS
@pytest.mark.parametrize("settings", [(0.7, 20, 0.9), (1.3, None, 0.8), (1.0, 5, None), (1.0, None, None)], ids=str)
def test_sampling_equals_hugging_face_with_the_same_seed(make, settings):
    """Hugging Face draws with torch.multinomial from the global generator, we from an explicit one:
    seeded alike, the same filters give the same tokens."""
    temperature, k, p = settings
    hf, ours = hf_and_ours(make)
    idx = prompt()
    torch.manual_seed(5)
    expected = hf_generate(hf, idx, do_sample=True, max_new_tokens=30, temperature=temperature, top_k=k or 0, top_p=p)
    got = generate(ours, idx, 30, temperature, k, p, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, expected)


@MODELS
def test_end_of_sequence_equals_hugging_face(make):
    hf, ours = hf_and_ours(make)
    idx = prompt(batch=4)
    # Pick as end-of-sequence a token that greedy decoding produces early in some rows.
    free = generate(ours, idx, 20, temperature=0)[:, idx.shape[1] :]
    eos = free[0, 3].item()
    expected = hf_generate(hf, idx, do_sample=False, max_new_tokens=20, eos_token_id=eos, pad_token_id=eos)
    got = generate(ours, idx, 20, temperature=0, eos_id=eos)
    assert torch.equal(got, expected)
    first = (got[0, idx.shape[1] :] == eos).nonzero()[0].item()
    assert (got[0, idx.shape[1] + first :] == eos).all()  # a finished row is padded with eos


def test_stops_early_when_every_row_is_finished():
    _, ours = hf_and_ours(tiny)
    idx = prompt(batch=1)
    free = generate(ours, idx, 10, temperature=0)
    eos = free[0, -8].item()  # the 3rd new token (or an earlier one equal to it)
    stopped = generate(ours, idx, 10, temperature=0, eos_id=eos)
    assert stopped.shape[1] < free.shape[1] and stopped[0, -1] == eos
    assert torch.equal(stopped, free[:, : stopped.shape[1]])


# ----------------------------------------------------------------------------- the loop itself
def test_seeded_generation_is_reproducible():
    _, ours = hf_and_ours(llama_tiny)
    idx = prompt()
    run = lambda seed: generate(ours, idx, 20, 1.0, 10, 0.95, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    assert torch.equal(run(3)[:, : idx.shape[1]], idx)  # the prompt is kept


def test_prompt_longer_than_the_context_is_cropped():
    _, ours = hf_and_ours(tiny)
    L = ours.config.context_length
    idx = prompt(batch=2, length=L + 7)
    out = generate(ours, idx, 5, temperature=0)
    assert out.shape == (2, L + 12) and torch.equal(out[:, : L + 7], idx)
    # Each step sees only the last L tokens.
    for step in range(5):
        logits = ours(out[:, step + 7 : L + 7 + step])[:, -1]  # the L tokens before new token `step`
        assert torch.equal(logits.argmax(-1), out[:, L + 7 + step])
    assert torch.equal(next_token_logits(ours, idx), ours(idx[:, -L:])[:, -1])


def test_eval_mode_during_generation_and_restored_after():
    _, ours = hf_and_ours(tiny)
    model = Transformer(dataclasses.replace(ours.config, dropout=0.5))
    model.load_state_dict(ours.state_dict())
    model.train()
    idx = prompt(batch=1)
    assert torch.equal(generate(model, idx, 10, temperature=0), generate(ours, idx, 10, temperature=0))
    assert model.training
    assert not any(p.grad is not None for p in model.parameters())


def test_zero_new_tokens_and_errors():
    _, ours = hf_and_ours(tiny)
    idx = prompt()
    assert torch.equal(generate(ours, idx, 0), idx)
    with pytest.raises(ValueError, match="top_p"):
        generate(ours, idx, 5, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        generate(ours, idx, 5, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(ours, idx, 5, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(ours, idx, -1)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        generate(ours, idx[0], 5)
    with pytest.raises(ValueError, match="token ids must be in"):
        generate(ours, idx + V, 5)


# ----------------------------------------------------------------------------- perplexity
def test_uniform_model_has_perplexity_V():
    model = Transformer(small(tiny))
    torch.nn.init.zeros_(model.lm_head.weight)  # tied: the embedding is zero too; every logit is 0
    ids = torch.randint(0, V, (100,), generator=torch.Generator().manual_seed(0))
    assert perplexity(model, ids, 16, 8) == pytest.approx(V, rel=1e-5)


@MODELS
def test_perplexity_of_one_window_equals_hugging_face_loss(make):
    hf, ours = hf_and_ours(make)
    ids = prompt(batch=1, length=ours.config.context_length)[0]  # 47 predictions: one window
    with torch.no_grad():
        loss = hf(ids[None], labels=ids[None]).loss
    assert perplexity(ours, ids) == pytest.approx(math.exp(loss.item()), rel=1e-5)


@MODELS
def test_stride_one_gives_each_token_its_full_context(make):
    """Token-by-token oracle with Hugging Face: token t is predicted from the L tokens before it."""
    hf, ours = hf_and_ours(make)
    L, N = 8, 30
    ids = prompt(batch=1, length=N, seed=2)[0]
    expected = []
    with torch.no_grad():
        for t in range(1, N):
            logits = hf(ids[None, max(0, t - L) : t]).logits[0, -1]
            expected.append(-torch.log_softmax(logits, -1)[ids[t]])
    torch.testing.assert_close(token_nlls(ours, ids, L, stride=1), torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_every_token_is_scored_once_with_enough_context():
    _, ours = hf_and_ours(llama_tiny)
    ids = prompt(batch=1, length=103, seed=3)[0]
    L = 16
    full = token_nlls(ours, ids, L, stride=1)
    for stride in [1, 3, 8, 16]:
        nlls = token_nlls(ours, ids, L, stride)
        assert nlls.shape == (102,)
        # The first window's L predictions are the same whatever the stride; a target is never skipped.
        torch.testing.assert_close(nlls[:L], full[:L])
    # Non-overlapping windows: each window restarts without context, so window starts differ.
    assert not torch.allclose(token_nlls(ours, ids, L, stride=L), full)
    # Strides that divide evenly agree with the token-by-token oracle where the context matches.
    nll_8 = token_nlls(ours, ids, L, stride=8)
    window_2 = ours(ids[None, 8:24])[0].log_softmax(-1)  # second window: positions 8..23, scores 16..23
    torch.testing.assert_close(nll_8[16:24], -window_2[8:].gather(-1, ids[17:25, None]).squeeze(-1).detach())


def test_perplexity_errors():
    _, ours = hf_and_ours(tiny)
    ids = prompt(batch=1, length=20)[0]
    with pytest.raises(ValueError, match="stride"):
        perplexity(ours, ids, 8, 9)
    with pytest.raises(ValueError, match="context_length"):
        perplexity(ours, ids, 100)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(ours, ids[:1])
    with pytest.raises(ValueError, match="1-D"):
        perplexity(ours, ids[None])
    assert perplexity(ours, ids.tolist(), 8, 4) == perplexity(ours, ids, 8, 4)


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    tok = Tokenizer.train("the cat sat on the mat. the dog sat on the log. " * 20, 280, ["<|endoftext|>"])
    config = dataclasses.replace(tiny(tok.n_vocab), n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, context_length=32)
    model = Transformer(config)
    save_model(model, folder)
    tok.save(folder / "tokenizer.json")
    return folder


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "llm_course", "generate", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_cli_generates_reproducibly(checkpoint):
    args = ["--checkpoint", checkpoint, "--prompt", "the cat", "--max-new-tokens", 12, "--device", "cpu"]
    first = run(*args, "--temperature", 0.8, "--top-k", 50, "--top-p", 0.9, "--seed", 1)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("the cat")
    again = run(*args, "--temperature", 0.8, "--top-k", 50, "--top-p", 0.9, "--seed", 1)
    assert again.stdout == first.stdout
    # The same as the library with the same model, tokenizer and seed.
    model, tok = load_checkpoint(checkpoint)
    idx = torch.tensor([tok.encode("the cat")])
    out = generate(model, idx, 12, 0.8, 50, 0.9, torch.Generator().manual_seed(1))
    assert first.stdout.rstrip("\n") == tok.decode(out[0].tolist())


def test_cli_errors_are_one_clear_line(checkpoint, tmp_path):
    bad = run("--checkpoint", checkpoint, "--prompt", "x", "--top-p", 1.5)
    assert bad.returncode == 2 and "top_p must be in (0, 1]" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    (tmp_path / "llm_course_config.json").write_text((checkpoint / "llm_course_config.json").read_text())
    no_tok = run("--checkpoint", tmp_path, "--prompt", "x")
    assert no_tok.returncode == 2 and "has no tokenizer" in no_tok.stderr and "Traceback" not in no_tok.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    no_model = run("--checkpoint", empty, "--prompt", "x")
    assert no_model.returncode == 2 and "has no llm_course_config.json" in no_model.stderr


# ----------------------------------------------------------------------------- beam search
@pytest.mark.parametrize(("num_beams", "length_penalty"), [(2, 1.0), (4, 0.0), (3, 2.0)])
def test_beam_search_equals_hugging_face(gpt2_pair, num_beams, length_penalty):
    hf, ours = gpt2_pair
    idx = prompt()
    expected = hf_generate(
        hf, idx, do_sample=False, num_beams=num_beams, max_new_tokens=8, length_penalty=length_penalty
    )
    got = beam_search(ours, idx, 8, num_beams, length_penalty=length_penalty)
    assert torch.equal(got, expected)
    if num_beams == 4:  # the beams found something greedy decoding did not
        assert not torch.equal(got, generate(ours, idx, 8, temperature=0))


@pytest.mark.parametrize(("length_penalty", "early_stopping"), [(1.0, True), (2.0, False), (0.0, False)])
def test_beam_search_with_end_of_sequence_equals_hugging_face(gpt2_pair, length_penalty, early_stopping):
    """Beams that end at different lengths: the length penalty, which candidates may finish, and when
    the search stops all change the result (each setting here tells a variant of one of them apart)."""
    hf, ours = gpt2_pair
    idx = prompt(batch=4)
    free = beam_search(ours, idx, 10, 3)[:, idx.shape[1] :]
    eos = 53  # one of the two tokens these beams produce most often (7 times, in 3 of the 4 rows)
    assert torch.bincount(free.flatten())[eos] == torch.bincount(free.flatten()).max()
    expected = hf_generate(
        hf, idx, do_sample=False, num_beams=3, max_new_tokens=10, eos_token_id=eos, pad_token_id=eos,
        length_penalty=length_penalty, early_stopping=early_stopping,
    )
    got = beam_search(ours, idx, 10, 3, length_penalty=length_penalty, eos_id=eos, early_stopping=early_stopping)
    assert (got[:, idx.shape[1] :] == eos).any(), "the end-of-sequence path was not exercised"
    assert torch.equal(got, expected)


def test_beam_search_with_llama_equals_hugging_face():
    hf, ours = hf_and_ours(llama_tiny)
    idx = prompt(batch=2)
    expected = hf_generate(hf, idx, do_sample=False, num_beams=3, max_new_tokens=6)
    assert torch.equal(beam_search(ours, idx, 6, 3), expected)


def test_one_beam_is_greedy_and_errors(gpt2_pair):
    _, ours = gpt2_pair
    idx = prompt()
    assert torch.equal(beam_search(ours, idx, 10, 1), generate(ours, idx, 10, temperature=0))
    assert torch.equal(beam_search(ours, idx, 0, 2), idx)
    with pytest.raises(ValueError, match="num_beams must be at least 1"):
        beam_search(ours, idx, 5, 0)
    with pytest.raises(TypeError, match="num_beams must be an int"):
        beam_search(ours, idx, 5, 2.0)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 0"):
        beam_search(ours, idx, -1, 2)
    with pytest.raises(ValueError, match=r"\(B, T\) tensor"):
        beam_search(ours, idx[0], 5, 2)


# ----------------------------------------------------------------------------- penalties and min-p
@pytest.mark.parametrize("penalty", [1.5, 0.8])
def test_greedy_with_repetition_penalty_equals_hugging_face(gpt2_pair, penalty):
    hf, ours = gpt2_pair
    idx = prompt()
    expected = hf_generate(hf, idx, do_sample=False, max_new_tokens=20, repetition_penalty=penalty)
    assert torch.equal(generate(ours, idx, 20, temperature=0, repetition_penalty=penalty), expected)
    assert not torch.equal(expected, generate(ours, idx, 20, temperature=0))  # the penalty changed something


def test_sampling_with_min_p_and_repetition_penalty_equals_hugging_face(gpt2_pair):
    hf, ours = gpt2_pair
    idx = prompt()
    torch.manual_seed(5)
    expected = hf_generate(
        hf, idx, do_sample=True, max_new_tokens=20, temperature=1.2, top_k=0, min_p=0.1, repetition_penalty=1.2
    )
    got = generate(ours, idx, 20, 1.2, generator=torch.Generator().manual_seed(5), min_p=0.1, repetition_penalty=1.2)
    assert torch.equal(got, expected)


def test_frequency_penalty_counts_only_new_tokens(gpt2_pair):
    """A huge frequency penalty forbids repeating a generated token, but not the prompt's tokens."""
    _, ours = gpt2_pair
    idx = prompt(batch=2)
    out = generate(ours, idx, 30, temperature=0, frequency_penalty=1e4)[:, idx.shape[1] :]
    for row in out.tolist():
        assert len(set(row)) == len(row)
    free = generate(ours, idx, 30, temperature=0)[:, idx.shape[1] :]
    assert any(len(set(row)) < len(row) for row in free.tolist())  # without it, greedy decoding repeats


# ----------------------------------------------------------------------------- stop strings
class Letters:
    """A decoder for the tests: token i is a short string, so stop strings span and split tokens."""

    def __init__(self, vocab_size=V):
        self.pieces = [chr(97 + i % 5) * (1 + i % 3) for i in range(vocab_size)]  # 'a', 'bb', 'ccc', 'd', ...

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def test_stop_strings_halt_exactly_where_the_text_first_contains_one(gpt2_pair):
    """Oracle: decode every prefix of a free greedy run; the stopped run ends at the first prefix with a stop."""
    _, ours = gpt2_pair
    letters = Letters()
    idx = prompt(batch=1)
    free = generate(ours, idx, 40, temperature=0)[0, idx.shape[1] :].tolist()
    text = letters.decode(free)
    for stop in (text[5:8], text[11:13] + "x", text[20:23]):  # spanning tokens, starting or ending inside one
        ends = [n for n in range(1, len(free) + 1) if any(s in letters.decode(free[:n]) for s in [stop, "zz"])]
        got = generate(ours, idx, 40, temperature=0, stop=[stop, "zz"], tokenizer=letters)[0, idx.shape[1] :].tolist()
        assert got == free[: ends[0]] if ends else got == free
    assert truncate_at_stop("abcXdefYg", ["Y", "X"]) == "abc"
    assert truncate_at_stop("abc", ["Z"]) == "abc"


def test_stop_strings_in_a_batch_pad_with_eos(gpt2_pair):
    _, ours = gpt2_pair
    letters = Letters()
    idx = prompt(batch=3)
    free = generate(ours, idx, 20, temperature=0)
    stop = letters.decode(free[0, idx.shape[1] : idx.shape[1] + 3].tolist())  # row 0 stops after 3 tokens
    got = generate(ours, idx, 20, temperature=0, stop=[stop], tokenizer=letters, eos_id=0)
    assert torch.equal(got[0, : idx.shape[1] + 3], free[0, : idx.shape[1] + 3])
    assert (got[0, idx.shape[1] + 3 :] == 0).all()


def test_stop_string_errors(gpt2_pair):
    _, ours = gpt2_pair
    idx = prompt()
    with pytest.raises(TypeError, match="list of strings"):
        generate(ours, idx[:1], 5, stop="\n", tokenizer=Letters())
    with pytest.raises(ValueError, match="pass the tokenizer"):
        generate(ours, idx[:1], 5, stop=["\n"])
    with pytest.raises(ValueError, match="non-empty"):
        generate(ours, idx[:1], 5, stop=[""], tokenizer=Letters())
    with pytest.raises(ValueError, match="pass eos_id"):
        generate(ours, idx, 5, stop=["a"], tokenizer=Letters())
    with pytest.raises(ValueError, match="min_p must be in"):
        generate(ours, idx, 5, min_p=2.0)
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        generate(ours, idx, 5, repetition_penalty=0.0)
