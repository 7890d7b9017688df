"""Loading Hugging Face GPT-2 and Llama checkpoints, and saving the course's own models.

Implements the translation between the Hugging Face layouts and `llm_course.transformer`:
- `config_from_hf`: a `TransformerConfig` from a Hugging Face config (the object, or the
  dict of its `config.json`) for model_type "gpt2" or "llama";
- `convert_gpt2_state_dict`: `GPT2LMHeadModel` names -> ours. GPT-2 stores its linear
  layers as `Conv1D` with the weight transposed (in, out), and fuses the query, key and
  value projections into one `c_attn`, which is split here;
- `convert_llama_state_dict`: `LlamaForCausalLM` names -> ours (q_proj -> w_q, gate_proj
  -> w1, up_proj -> w3, down_proj -> w2, ...). Hugging Face's Llama weights already use the
  half RoPE layout of `llm_course.rope`; Meta's original files would need
  `rope.permute_interleaved_to_half` on wq and wk first;
- `from_hf_state_dict` and `from_pretrained_dir` (a local folder with config.json and
  model.safetensors, sharded safetensors or pytorch_model.bin; nothing is downloaded);
- `save_model` / `load_model` for our models: model.safetensors + llm_course_config.json.

These are the only places where checkpoint-specific names (c_attn, wte, q_proj, ...)
appear. `transformers` is imported only by `to_hf_config`, so the package does not
depend on it. Left out: Llama 3 RoPE scaling, biases in only some Llama layers,
head_dim != hidden_size / num_attention_heads, GPT-2's attention-scaling options.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model as save_safetensors_model

from llm_course.transformer import Transformer, TransformerConfig

CONFIG_NAME = "llm_course_config.json"
WEIGHTS_NAME = "model.safetensors"

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def _as_dict(hf_config: Any) -> dict[str, Any]:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"expected a Hugging Face config or a dict, got {type(hf_config).__name__}")


# ---------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------


def config_from_hf(hf_config: Any) -> TransformerConfig:
    """The `TransformerConfig` of a Hugging Face GPT-2 or Llama config (object or dict)."""
    d = _as_dict(hf_config)
    model_type = d.get("model_type")
    if model_type == "gpt2":
        return _config_from_gpt2(d)
    if model_type == "llama":
        return _config_from_llama(d)
    raise ValueError(f'only model_type "gpt2" and "llama" can be loaded, got {model_type!r}')


def _config_from_gpt2(d: dict[str, Any]) -> TransformerConfig:
    activation = d.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        raise NotImplementedError(f"GPT-2 activation {activation!r} is not supported, only {sorted(GPT2_ACTIVATIONS)}")
    variants = d.get("scale_attn_by_inverse_layer_idx") or d.get("reorder_and_upcast_attn")
    if variants or not d.get("scale_attn_weights", True):
        raise NotImplementedError("GPT-2's optional attention-scaling variants are not supported")
    return TransformerConfig(
        vocab_size=d.get("vocab_size", 50257),
        context_length=d.get("n_positions", 1024),
        d_model=d.get("n_embd", 768),
        n_layers=d.get("n_layer", 12),
        n_heads=d.get("n_head", 12),
        d_ff=d.get("n_inner") or 4 * d.get("n_embd", 768),
        norm="layernorm",
        activation=GPT2_ACTIVATIONS[activation],
        position="learned",
        tie_embeddings=d.get("tie_word_embeddings", True),
        bias=True,
        pre_ln=True,
        dropout=float(d.get("resid_pdrop", 0.1)),
        norm_eps=d.get("layer_norm_epsilon", 1e-5),
    )


def _config_from_llama(d: dict[str, Any]) -> TransformerConfig:
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise NotImplementedError(f"RoPE scaling of type {rope_type!r} is not supported (only plain RoPE)")
    rope_base = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    hidden, heads = d.get("hidden_size", 4096), d.get("num_attention_heads", 32)
    if d.get("head_dim") not in (None, hidden // heads):
        raise NotImplementedError(f"head_dim {d['head_dim']} != hidden_size / num_attention_heads is unsupported")
    if d.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"Llama activation {d['hidden_act']!r} is not supported (only silu, as SwiGLU)")
    if bool(d.get("attention_bias", False)) != bool(d.get("mlp_bias", False)):
        raise NotImplementedError("biases in attention but not in the MLP (or the reverse) are not supported")
    return TransformerConfig(
        vocab_size=d.get("vocab_size", 32000),
        context_length=d.get("max_position_embeddings", 2048),
        d_model=hidden,
        n_layers=d.get("num_hidden_layers", 32),
        n_heads=heads,
        n_kv_heads=d.get("num_key_value_heads") or heads,
        d_ff=d.get("intermediate_size", 11008),
        norm="rmsnorm",
        activation="swiglu",
        position="rope",
        rope_base=float(rope_base),
        tie_embeddings=d.get("tie_word_embeddings", False),
        bias=bool(d.get("attention_bias", False)),
        pre_ln=True,
        dropout=float(d.get("attention_dropout", 0.0) or 0.0),
        norm_eps=d.get("rms_norm_eps", 1e-6),
    )


def to_hf_config(config: TransformerConfig, **overrides: Any):
    """The Hugging Face `GPT2Config` or `LlamaConfig` describing the same model (needs transformers).

    GPT-2 style: layernorm + learned positions + biases + tied head; Llama style: rmsnorm +
    swiglu + rope. Anything else has no Hugging Face equivalent and raises ValueError.
    `overrides` are passed to the config class (e.g. attn_implementation="eager").
    """
    from transformers import GPT2Config, LlamaConfig

    c = config
    if c.n_experts > 0:
        raise ValueError(
            f"this config has {c.n_experts} experts per block; GPT2Config and LlamaConfig are dense "
            "(an MoE model corresponds to Hugging Face's MixtralConfig, which this function does not build)"
        )
    if c.norm == "layernorm" and c.position == "learned" and c.bias and c.pre_ln and c.activation != "swiglu":
        if c.n_kv_heads != c.n_heads:
            raise ValueError("GPT-2 has no grouped-query attention (n_kv_heads must equal n_heads)")
        activation = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[c.activation]
        kwargs = dict(
            vocab_size=c.vocab_size, n_positions=c.context_length, n_embd=c.d_model, n_layer=c.n_layers,
            n_head=c.n_heads, n_inner=c.d_ff, activation_function=activation, resid_pdrop=c.dropout,
            embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=c.norm_eps,
            tie_word_embeddings=c.tie_embeddings, bos_token_id=c.vocab_size - 1, eos_token_id=c.vocab_size - 1,
        )  # fmt: skip
        # GPT-2's <|endoftext|> (50256) is the last id of its vocabulary: keep it the last one.
        return GPT2Config(**{**kwargs, **overrides})
    if c.norm == "rmsnorm" and c.activation == "swiglu" and c.position == "rope" and c.pre_ln:
        kwargs = dict(
            vocab_size=c.vocab_size, max_position_embeddings=c.context_length, hidden_size=c.d_model,
            num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
            intermediate_size=c.d_ff, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
            attention_bias=c.bias, mlp_bias=c.bias, attention_dropout=c.dropout,
            rope_parameters={"rope_type": "default", "rope_theta": c.rope_base},
        )  # fmt: skip
        return LlamaConfig(**{**kwargs, **overrides})
    raise ValueError("this configuration is neither GPT-2 style nor Llama style; Hugging Face has no equivalent")


# ---------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------


def convert_gpt2_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: TransformerConfig
) -> dict[str, torch.Tensor]:
    """A `GPT2LMHeadModel` (or `GPT2Model`) state dict renamed and reshaped for `Transformer(config)`."""
    # Files saved from GPT2Model have no "transformer." prefix; the attention-mask buffers
    # (attn.bias, attn.masked_bias) of older checkpoints are constants we do not keep.
    sd = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    C = config.d_model
    out = {"token_embedding.weight": sd["wte.weight"], "position_embedding.weight": sd["wpe.weight"]}
    for i in range(config.n_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        # Conv1D computes x @ W + b with W (in, out); nn.Linear wants W^T (out, in).
        w_qkv, b_qkv = sd[h + "attn.c_attn.weight"].t(), sd[h + "attn.c_attn.bias"]  # (3C, C), (3C,)
        for j, name in enumerate(("w_q", "w_k", "w_v")):
            out[b + f"attn.{name}.weight"] = w_qkv[j * C : (j + 1) * C]
            out[b + f"attn.{name}.bias"] = b_qkv[j * C : (j + 1) * C]
        pairs = {
            "ln_1": "norm1", "ln_2": "norm2",
            "attn.c_proj": "attn.w_o", "mlp.c_fc": "ffn.w1", "mlp.c_proj": "ffn.w2",
        }  # fmt: skip
        for theirs, ours in pairs.items():
            weight = sd[h + theirs + ".weight"]
            out[b + ours + ".weight"] = weight if theirs.startswith("ln") else weight.t()
            out[b + ours + ".bias"] = sd[h + theirs + ".bias"]
    out["final_norm.weight"], out["final_norm.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
    out["lm_head.weight"] = out["token_embedding.weight"] if config.tie_embeddings else sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def convert_llama_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: TransformerConfig
) -> dict[str, torch.Tensor]:
    """A `LlamaForCausalLM` state dict renamed for `Transformer(config)` (the tensors are unchanged)."""
    sd = dict(state_dict)
    out = {"token_embedding.weight": sd["model.embed_tokens.weight"]}
    pairs = {
        "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
        "self_attn.q_proj": "attn.w_q", "self_attn.k_proj": "attn.w_k",
        "self_attn.v_proj": "attn.w_v", "self_attn.o_proj": "attn.w_o",
        "mlp.gate_proj": "ffn.w1", "mlp.up_proj": "ffn.w3", "mlp.down_proj": "ffn.w2",
    }  # fmt: skip
    for i in range(config.n_layers):
        for theirs, ours in pairs.items():
            for param in ("weight", "bias"):
                key = f"model.layers.{i}.{theirs}.{param}"
                if key in sd:
                    out[f"blocks.{i}.{ours}.{param}"] = sd[key]
    out["final_norm.weight"] = sd["model.norm.weight"]
    out["lm_head.weight"] = out["token_embedding.weight"] if config.tie_embeddings else sd["lm_head.weight"]
    return out


def from_hf_state_dict(
    state_dict: Mapping[str, torch.Tensor], hf_config: Any, dtype: torch.dtype | None = None
) -> Transformer:
    """A `Transformer` holding the weights of a Hugging Face GPT-2 or Llama state dict.

    The model is built on the device of the given tensors' values (copied in), in `dtype`
    if given (else the checkpoint's), and returned in eval mode.
    """
    config = config_from_hf(hf_config)
    convert = convert_gpt2_state_dict if _as_dict(hf_config)["model_type"] == "gpt2" else convert_llama_state_dict
    converted = convert(state_dict, config)
    model = Transformer(config)
    reference = converted["token_embedding.weight"]
    model.to(device=reference.device, dtype=dtype or reference.dtype)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").exists():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.exists():
        state_dict: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state_dict.update(load_file(path / shard))
        return state_dict
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"{path} holds no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def from_pretrained_dir(path: str | Path, dtype: torch.dtype | None = None) -> Transformer:
    """Load a Hugging Face GPT-2 or Llama checkpoint from a local folder, on the CPU.

    The folder needs config.json and the weights (model.safetensors, a sharded
    model.safetensors.index.json, or pytorch_model.bin). Nothing is downloaded. Move the
    model with `.to(device)` afterwards.
    """
    path = Path(path)
    hf_config = json.loads((path / "config.json").read_text())
    return from_hf_state_dict(_read_weights(path), hf_config, dtype=dtype)


# ---------------------------------------------------------------------------------------
# The course's own format
# ---------------------------------------------------------------------------------------


def save_model(model: Transformer, directory: str | Path) -> Path:
    """Write `model` to `directory`: model.safetensors and llm_course_config.json. Returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(model.config), indent=2) + "\n")
    save_safetensors_model(model, str(directory / WEIGHTS_NAME))  # stores tied weights once
    return directory


def load_model(directory: str | Path, device: torch.device | str = "cpu") -> Transformer:
    """Read a model written by `save_model`, in its saved dtype, onto `device` (CPU by default)."""
    directory = Path(directory)
    config = TransformerConfig(**json.loads((directory / CONFIG_NAME).read_text()))
    state_dict = load_file(directory / WEIGHTS_NAME)
    model = Transformer(config).to(next(iter(state_dict.values())).dtype)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # A tied matrix is stored once, under one of its two names; loading it sets both.
    tied = {"token_embedding.weight", "lm_head.weight"} if config.tie_embeddings else set()
    if unexpected or set(missing) - tied or (tied and tied <= set(missing)):
        raise RuntimeError(
            f"{directory / WEIGHTS_NAME} does not match the config: missing {missing}, unexpected {unexpected}"
        )
    return model.to(device)
