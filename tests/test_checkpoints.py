"""Tests for llm_course.checkpoints: our logits equal Hugging Face's GPT-2 and Llama with the same
weights, configs translate both ways, and our own save/load round-trips."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from llm_course.checkpoints import (
    config_from_hf,
    from_hf_state_dict,
    from_pretrained_dir,
    load_model,
    save_model,
    to_hf_config,
)
from llm_course.transformer import Transformer, TransformerConfig, llama_tiny, tiny

transformers = pytest.importorskip("transformers")
V = 101
ATOL = 1e-5


def gpt2_config(**changes) -> TransformerConfig:
    return dataclasses.replace(tiny(V), n_layers=2, context_length=32, **changes)


def llama_config(**changes) -> TransformerConfig:
    return dataclasses.replace(llama_tiny(V), n_layers=2, context_length=32, **changes)


def hf_model(config: TransformerConfig, attn_implementation: str = "eager"):
    torch.manual_seed(0)
    cls = transformers.GPT2LMHeadModel if config.norm == "layernorm" else transformers.LlamaForCausalLM
    return cls(to_hf_config(config, attn_implementation=attn_implementation)).eval()


def assert_same_logits(ours, theirs, seq_len=20):
    idx = torch.randint(0, V, (2, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(idx).logits
        got = ours(idx)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize(
    "changes",
    [{}, dict(activation="relu"), dict(activation="gelu", d_ff=200), dict(tie_embeddings=False)],
    ids=["gelu_new", "relu", "gelu_d_ff_200", "untied"],
)
def test_gpt2_logits_equal_hugging_face(changes):
    config = gpt2_config(**changes)
    hf = hf_model(config)
    ours = from_hf_state_dict(hf.state_dict(), hf.config)
    assert ours.config == config
    assert not ours.training
    assert_same_logits(ours, hf)


@pytest.mark.parametrize(
    "changes",
    [{}, dict(n_kv_heads=4), dict(n_kv_heads=1, rope_base=500000.0), dict(tie_embeddings=True)],
    ids=["gqa", "mha", "mqa_theta", "tied"],
)
def test_llama_logits_equal_hugging_face(changes):
    config = llama_config(**changes)
    hf = hf_model(config)
    ours = from_hf_state_dict(hf.state_dict(), hf.config)
    assert ours.config == config
    assert_same_logits(ours, hf)


@pytest.mark.parametrize("make", [gpt2_config, llama_config])
def test_fused_attention_equals_hugging_face_sdpa(make):
    hf = hf_model(make(), attn_implementation="sdpa")
    ours = from_hf_state_dict(hf.state_dict(), hf.config)
    fused = Transformer(dataclasses.replace(ours.config, use_fused_attention=True)).eval()
    fused.load_state_dict(ours.state_dict())
    assert_same_logits(fused, hf, seq_len=32)


def test_configs_translate_both_ways():
    for config in (gpt2_config(), llama_config(), llama_config(bias=True, rope_base=1e6)):
        hf_config = to_hf_config(config)
        assert config_from_hf(hf_config) == config
        assert config_from_hf(hf_config.to_dict()) == config
        assert config_from_hf(json.loads(hf_config.to_json_string())) == config


def test_legacy_llama_config_json():
    d = to_hf_config(llama_config()).to_dict()
    d.pop("rope_parameters")
    d["rope_theta"] = 123.0  # transformers 4.x wrote the base at the top level
    assert config_from_hf(d).rope_base == 123.0


def test_unsupported_checkpoints_are_refused():
    d = to_hf_config(llama_config()).to_dict()
    d["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    with pytest.raises(NotImplementedError, match="llama3"):
        config_from_hf(d)
    with pytest.raises(ValueError, match='only model_type "gpt2" and "llama"'):
        config_from_hf({"model_type": "bert"})
    with pytest.raises(ValueError, match="no equivalent"):
        to_hf_config(gpt2_config(pre_ln=False))


def test_from_pretrained_dir_safetensors(tmp_path):
    hf = hf_model(llama_config())
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert_same_logits(from_pretrained_dir(tmp_path), hf)


def test_from_pretrained_dir_original_gpt2_layout(tmp_path):
    """openai-community/gpt2's files: keys without "transformer.", no lm_head, attn.bias buffers."""
    hf = hf_model(gpt2_config())
    state_dict = {
        k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"
    }
    for i in range(hf.config.n_layer):
        state_dict[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    assert_same_logits(from_pretrained_dir(tmp_path), hf)
    (tmp_path / "pytorch_model.bin").unlink()
    save_file(state_dict, tmp_path / "model.safetensors")
    assert_same_logits(from_pretrained_dir(tmp_path), hf)


def test_from_pretrained_dir_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(to_hf_config(gpt2_config()).to_json_string())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained_dir(tmp_path)


@pytest.mark.parametrize("make", [gpt2_config, llama_config])
def test_save_and_load_round_trip(tmp_path, make):
    model = Transformer(make(), generator=torch.Generator().manual_seed(0)).eval()
    save_model(model, tmp_path / "run")
    loaded = load_model(tmp_path / "run").eval()
    assert loaded.config == model.config
    assert (loaded.lm_head.weight is loaded.token_embedding.weight) == model.config.tie_embeddings
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_keeps_the_saved_dtype(tmp_path):
    model = Transformer(gpt2_config()).to(torch.bfloat16)
    save_model(model, tmp_path)
    assert load_model(tmp_path).token_embedding.weight.dtype == torch.bfloat16


def test_to_hf_config_refuses_moe_configs():
    from llm_course.checkpoints import to_hf_config
    from llm_course.transformer import llama_tiny

    config = dataclasses.replace(llama_tiny(256), n_experts=4, experts_per_token=2)
    with pytest.raises(ValueError, match="4 experts per block"):
        to_hf_config(config)
