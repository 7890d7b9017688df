"""Tests for the long-context options of the model (ALiBi, sliding windows, RoPE scaling through
`TransformerConfig`) and for llm_course.long_context, the extrapolation experiment."""

import dataclasses

import pytest
import torch

from llm_course.embeddings import sinusoidal_encoding
from llm_course.kv_cache import KVCache
from llm_course.long_context import ExtrapolationRecipe, loss_by_position, train_position_models, variant
from llm_course.losses import cross_entropy
from llm_course.rope import RopeScaling, rope_cache
from llm_course.transformer import Transformer, TransformerConfig, count_parameters


def micro(**changes) -> TransformerConfig:
    base = TransformerConfig(vocab_size=50, context_length=32, d_model=32, n_layers=2, n_heads=4)
    return dataclasses.replace(base, **changes)


def test_alibi_model_has_no_position_parameters_and_reads_past_the_trained_positions():
    model = Transformer(micro(position="alibi"), generator=torch.Generator().manual_seed(0)).eval()
    assert model.position_embedding is None and model.rope is None
    assert all(block.attn.alibi_slopes is not None for block in model.blocks)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(model.config)
    idx = torch.randint(0, 50, (2, 12))
    # distances, not positions: shifting every position changes nothing (positions past context_length too)
    torch.testing.assert_close(model(idx, positions=torch.arange(12) + 100), model(idx))


def test_sinusoidal_scale_reaches_the_table():
    model = Transformer(micro(position="sinusoidal", sinusoidal_scale=0.1))
    torch.testing.assert_close(model.position_embedding.pe, 0.1 * sinusoidal_encoding(32, 32))


def test_config_rejects_bad_long_context_settings():
    with pytest.raises(ValueError, match="needs position='rope'"):
        micro(position="learned", rope_scaling="linear", rope_scaling_factor=2.0)
    with pytest.raises(ValueError, match="original_context"):
        micro(position="rope", rope_scaling="yarn", rope_scaling_factor=2.0)
    with pytest.raises(ValueError, match="at least 1"):
        micro(position="rope", rope_scaling="ntk", rope_scaling_factor=0.5)
    with pytest.raises(ValueError, match="attention_window"):
        micro(attention_window=0)
    with pytest.raises(ValueError, match="position must be one of"):
        micro(position="t5")


@pytest.mark.parametrize("kind", ["linear", "ntk", "yarn"])
def test_rope_scaling_reaches_the_model(kind):
    model = Transformer(micro(position="rope", rope_scaling=kind, rope_scaling_factor=4.0, rope_original_context=8))
    cos, sin = rope_cache(8, 32, scaling=RopeScaling(kind, 4.0, 8))
    torch.testing.assert_close(model.rope.cos, cos)
    torch.testing.assert_close(model.rope.sin, sin)


def test_window_reaches_every_layer_and_limits_what_a_token_sees():
    config = micro(position="rope", attention_window=4, n_layers=1)
    model = Transformer(config, generator=torch.Generator().manual_seed(0))
    assert model.blocks[0].attn.window == 4
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % 50
    # one layer, window 4: token 0 reaches the outputs of positions 0..3 only
    diff = (model(idx) - model(changed)).abs().amax(-1)[0]
    assert bool((diff[:4] > 0).all()) and bool((diff[4:] == 0).all())


@pytest.mark.parametrize("changes", [dict(position="alibi"), dict(position="rope", attention_window=5),
                                     dict(position="alibi", attention_window=3)])  # fmt: skip
def test_decoding_with_a_kv_cache_equals_the_full_forward(changes):
    model = Transformer(micro(**changes), generator=torch.Generator().manual_seed(0)).eval()
    idx = torch.randint(0, 50, (2, 10))
    full = model(idx)
    cache = KVCache.for_model(model, batch_size=2, max_seq_len=16)
    steps = [model(idx[:, :4], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_variant_keeps_the_weights_and_changes_only_the_scaling():
    model = Transformer(micro(position="rope"), generator=torch.Generator().manual_seed(0)).eval()
    idx = torch.randint(0, 50, (2, 20))
    same = variant(model)
    torch.testing.assert_close(same(idx), model(idx))
    interpolated = variant(model, "linear", 2.0)
    assert interpolated.config.rope_scaling == "linear" and interpolated.rope.scaling.factor == 2.0
    assert not torch.allclose(interpolated(idx), model(idx), atol=1e-4)
    for name, tensor in model.state_dict().items():
        assert torch.equal(interpolated.state_dict()[name], tensor)
    windowed = variant(model, attention_window=20)  # a window as long as the sequence changes nothing
    torch.testing.assert_close(windowed(idx), model(idx))


def test_loss_by_position_equals_the_cross_entropy_by_hand():
    model = Transformer(micro(), generator=torch.Generator().manual_seed(0)).eval()
    tokens = torch.randint(0, 50, (100,))
    curve = loss_by_position(model, tokens, seq_len=8, n_windows=5, batch_size=2)
    windows = tokens[:45].view(5, 9)
    with torch.no_grad():
        expected = cross_entropy(model(windows[:, :-1]), windows[:, 1:], reduction="none").mean(0)
    assert curve.shape == (8,)
    torch.testing.assert_close(curve, expected)
    with pytest.raises(ValueError, match="hold 11 windows"):
        loss_by_position(model, tokens, seq_len=8, n_windows=12)


def test_train_position_models_trains_once_then_reads_the_cache(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log. " * 60)
    recipe = ExtrapolationRecipe(
        positions=("learned", "alibi"), train_len=8, max_len=16, vocab_size=270, d_model=16, n_layers=1,
        n_heads=2, steps=3, batch_size=2, corpus=str(corpus),
    )  # fmt: skip
    lines = []
    models, tokenizer, val_tokens, info = train_position_models(recipe, cache=tmp_path / "cache", log=lines.append)
    assert set(models) == {"learned", "alibi"} and tokenizer.n_vocab == 270
    assert len(info["models"]["alibi"]["train_loss"]) == 3 and lines  # trained, and said so
    assert models["learned"].config.context_length == 16 and not models["learned"].training
    lines.clear()
    again, _, val_again, _ = train_position_models(recipe, cache=tmp_path / "cache", log=lines.append)
    assert not lines  # read from the cache, not trained again
    assert torch.equal(val_again, val_tokens)
    for name, tensor in models["alibi"].state_dict().items():
        assert torch.equal(again["alibi"].state_dict()[name], tensor)
    with pytest.raises(ValueError, match="must not exceed max_len"):
        train_position_models(dataclasses.replace(recipe, train_len=32), cache=tmp_path / "cache")
