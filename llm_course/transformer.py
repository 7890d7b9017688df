"""The decoder-only transformer: GPT-2 and Llama-style models from one class (chapter 05).

Implements
- `Block`: x + attention(norm(x)), then x + ffn(norm(x)) (Pre-LN, GPT-2 and Llama; Xiong et
  al., 2020, "On Layer Normalization in the Transformer Architecture"), or
  norm(x + attention(x)), then norm(x + ffn(x)) (Post-LN, Vaswani et al., 2017);
- `Transformer`: token embedding (+ learned or sinusoidal positions) -> n_layers blocks
  -> final norm (Pre-LN only) -> linear head to vocabulary logits. With the `gpt2_*`
  presets it is GPT-2 (Radford et al., 2019); with `llama_tiny`/`llama2_7b` it is a Llama
  (Touvron et al., 2023): RMSNorm, SwiGLU, RoPE, no biases, untied head, grouped-query
  attention. Weights are initialized as GPT-2: N(0, 0.02), and the projections that write
  into the residual stream (w_o, ffn.w2) N(0, 0.02 / sqrt(2 n_layers)).
- mixture-of-experts blocks (chapter 10): with `n_experts > 0` in the config, every block's
  FFN is an `llm_course.moe.MoE` of that many experts (Mixtral: 8 experts, 2 per token);
  `moe_aux_loss(model)` collects the blocks' load-balancing losses for training;
- `count_parameters(config)`, a closed formula (tested against the real count),
  `parameter_breakdown(config)` by component, `count_active_parameters(config)` (the
  parameters one token uses, which differs from the total only for MoE);
  `block_gradient_norms(model)` for the Pre-LN vs Post-LN experiment.

Checkpoint loading (GPT-2, Llama) lives in `llm_course.checkpoints`; the KV cache in
`llm_course.kv_cache` (chapter 09), passed as `forward(..., cache=...)`. Left out here:
sampling (chapter 08), a separate head_dim != d_model / n_heads, and MoE
variants such as dense layers between MoE layers or shared experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llm_course.attention import MultiHeadAttention
from llm_course.embeddings import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, TokenEmbedding
from llm_course.ffn import make_ffn
from llm_course.moe import MoE
from llm_course.norms import LayerNorm, RMSNorm, make_norm
from llm_course.rope import RopeScaling, RotaryEmbedding

NORMS = ("layernorm", "rmsnorm")
ACTIVATION_NAMES = ("gelu_tanh", "gelu", "relu", "swiglu")
POSITIONS = ("learned", "rope", "sinusoidal", "alibi", "none")


@dataclass
class TransformerConfig:
    """Every size and choice that defines a model. Presets: `gpt2_small()`, `tiny()`, ...

    `n_kv_heads` and `d_ff` left as None are filled in when the config is made (n_heads,
    4 d_model). `dataclasses.replace` keeps the filled-in values: pass them again when you
    change n_heads or d_model.
    """

    vocab_size: int = 50257  # V: number of token ids the model reads and predicts
    context_length: int = 1024  # longest sequence; positions run 0 .. context_length - 1
    d_model: int = 768  # C: width of the residual stream (embedding size)
    n_layers: int = 12  # number of transformer blocks
    n_heads: int = 12  # H: query heads per attention layer; d_head = d_model // n_heads
    n_kv_heads: int | None = None  # H_kv: key/value heads; None means n_heads, 1 is multi-query
    d_ff: int | None = None  # hidden size of the feed-forward network; None means 4 * d_model
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # LayerNorm (GPT-2) or RMSNorm (Llama)
    activation: Literal["gelu_tanh", "gelu", "relu", "swiglu"] = "gelu_tanh"  # FFN; GPT-2 gelu_tanh, Llama swiglu
    position: Literal["learned", "rope", "sinusoidal", "alibi", "none"] = "learned"  # GPT-2 learned, Llama rope
    rope_base: float = 10000.0  # base (theta) of the RoPE frequencies; Llama 3 uses 500000
    sinusoidal_scale: float = 1.0  # multiplies the sinusoidal table (1: the paper's values in [-1, 1])
    rope_scaling: Literal["none", "linear", "ntk", "yarn"] = "none"  # RoPE stretched for longer contexts (chapter 03)
    rope_scaling_factor: float = 1.0  # s: the new context over the trained one, for rope_scaling
    rope_original_context: int | None = None  # the trained context length (YaRN's ramp needs it)
    attention_window: int | None = None  # sliding-window attention: each token sees this many recent tokens
    tie_embeddings: bool = True  # the output head reuses the token embedding matrix (GPT-2 yes, Llama no)
    bias: bool = True  # biases in the linear layers and LayerNorms (GPT-2 yes, Llama no)
    pre_ln: bool = True  # normalize before each sub-layer (GPT-2, Llama) or after it (original Post-LN)
    dropout: float = 0.0  # dropout on embeddings, attention weights and residual branches
    norm_eps: float = 1e-5  # epsilon inside LayerNorm / RMSNorm
    use_fused_attention: bool = False  # PyTorch's fused attention kernel instead of the course's function
    n_experts: int = 0  # E: experts in each block's mixture-of-experts FFN; 0 means a dense FFN (chapter 10)
    experts_per_token: int = 2  # k: experts each token is routed to, when n_experts > 0 (Mixtral 2)
    capacity_factor: float | None = None  # MoE expert capacity, in units of k T / E; None drops no token

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for name, value, allowed in [
            ("norm", self.norm, NORMS),
            ("activation", self.activation, ACTIVATION_NAMES),
            ("position", self.position, POSITIONS),
        ]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if self.position == "rope" and self.d_head % 2 != 0:
            raise ValueError(f"RoPE needs an even d_head, got {self.d_head}")
        if self.position != "rope" and self.rope_scaling != "none":
            raise ValueError(f"rope_scaling={self.rope_scaling!r} needs position='rope', got {self.position!r}")
        self.rope_scaling_spec()  # checks the scaling's kind, factor and original context
        if self.attention_window is not None and self.attention_window < 1:
            raise ValueError(f"attention_window must be None (full attention) or at least 1, got {self.attention_window}")
        if self.position == "sinusoidal" and self.d_model % 2 != 0:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.n_experts < 0:
            raise ValueError(f"n_experts must be 0 (dense FFN) or positive, got {self.n_experts}")
        if self.n_experts > 0 and not 1 <= self.experts_per_token <= self.n_experts:
            raise ValueError(
                f"experts_per_token must be between 1 and n_experts ({self.n_experts}), got {self.experts_per_token}"
            )
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive or None, got {self.capacity_factor}")

    @property
    def d_head(self) -> int:
        """D: size of one attention head."""
        return self.d_model // self.n_heads

    def rope_scaling_spec(self) -> RopeScaling:
        """The `llm_course.rope.RopeScaling` the rope_* fields describe."""
        return RopeScaling(self.rope_scaling, self.rope_scaling_factor, self.rope_original_context)


# ---------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------


def gpt2_small(vocab_size: int = 50257) -> TransformerConfig:
    """GPT-2 "small" (124M parameters): 12 layers, 768 wide, 12 heads, context 1024."""
    return TransformerConfig(vocab_size=vocab_size, context_length=1024, d_model=768, n_layers=12, n_heads=12)


def gpt2_medium(vocab_size: int = 50257) -> TransformerConfig:
    """GPT-2 "medium" (355M parameters): 24 layers, 1024 wide, 16 heads, context 1024."""
    return TransformerConfig(vocab_size=vocab_size, context_length=1024, d_model=1024, n_layers=24, n_heads=16)


def tiny(vocab_size: int) -> TransformerConfig:
    """A GPT-style model that trains in a few CPU minutes: 4 layers, 128 wide, 4 heads, context 128."""
    return TransformerConfig(vocab_size=vocab_size, context_length=128, d_model=128, n_layers=4, n_heads=4)


def llama_tiny(vocab_size: int) -> TransformerConfig:
    """The Llama recipe at `tiny`'s size: RMSNorm, SwiGLU (d_ff ~ 8/3 C), RoPE, 2 KV heads, no biases."""
    return TransformerConfig(
        vocab_size=vocab_size, context_length=128, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
        d_ff=352, norm="rmsnorm", activation="swiglu", position="rope", tie_embeddings=False, bias=False,
    )  # fmt: skip


def llama2_7b() -> TransformerConfig:
    """Llama 2 7B (6.74B parameters). For counting; instantiate it only on the meta device."""
    return TransformerConfig(
        vocab_size=32000, context_length=4096, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
        norm="rmsnorm", activation="swiglu", position="rope", tie_embeddings=False, bias=False,
    )  # fmt: skip


def mixtral_8x7b() -> TransformerConfig:
    """Mixtral 8x7B (46.7B parameters, 12.9B used per token). For counting; meta device only.

    Mistral 7B's shape (32 layers, 4096 wide, 32 heads, 8 KV heads, SwiGLU with d_ff = 14336)
    with each FFN replaced by 8 experts of that size, 2 per token (Jiang et al., 2024).
    """
    return TransformerConfig(
        vocab_size=32000, context_length=32768, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
        d_ff=14336, norm="rmsnorm", activation="swiglu", position="rope", rope_base=1e6, tie_embeddings=False,
        bias=False, n_experts=8, experts_per_token=2,
    )  # fmt: skip


def seeds_70b() -> TransformerConfig:
    """The seeds' "70B" example: 8192 wide, 80 layers, 64 heads. For counting only.

    The seeds give only those three numbers; the rest is Llama 2 70B, the model with that
    shape: 8 KV heads, SwiGLU with d_ff = 28672, vocabulary 32000, untied head, no biases.
    """
    return TransformerConfig(
        vocab_size=32000, context_length=4096, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
        d_ff=28672, norm="rmsnorm", activation="swiglu", position="rope", tie_embeddings=False, bias=False,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class Block(nn.Module):
    """One transformer block: attention then feed-forward, each with a residual connection.

    Built from the model's `TransformerConfig` (as nanoGPT's `Block(config)`): every size and
    choice of the block is a field of it. `rope` is the table of RoPE angles that the model's
    blocks share; a block built on its own with `position="rope"` makes its own.
    """

    def __init__(self, config: TransformerConfig, rope: RotaryEmbedding | None = None):
        super().__init__()
        c = config
        if not isinstance(c, TransformerConfig):
            raise TypeError(f"Block takes a TransformerConfig, got {type(c).__name__}")
        if rope is not None and c.position != "rope":
            raise ValueError(f"a RoPE table was passed to a block with position={c.position!r}")
        if rope is None and c.position == "rope":
            rope = RotaryEmbedding(c.d_head, c.context_length, c.rope_base, c.rope_scaling_spec())
        self.pre_ln = c.pre_ln
        self.norm1 = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        self.attn = MultiHeadAttention(
            c.d_model, c.n_heads, c.n_kv_heads, bias=c.bias, dropout=c.dropout, use_fused=c.use_fused_attention,
            rope=rope, alibi=c.position == "alibi", window=c.attention_window,
        )  # fmt: skip
        self.norm2 = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        if c.n_experts > 0:  # a mixture of experts in place of the FFN (chapter 10)
            self.ffn = MoE(
                c.d_model, c.d_ff, c.n_experts, c.experts_per_token, c.activation, c.bias, c.dropout, c.capacity_factor
            )
        else:
            self.ffn = make_ffn(c.d_model, c.d_ff, c.activation, bias=c.bias, dropout=c.dropout)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None, cache=None
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); causal self-attention, `mask` optional extra mask,
        `cache` this layer's KV cache (chapter 09), passed on to the attention."""
        if self.pre_ln:
            x = x + self.attn(self.norm1(x), positions, mask, cache=cache)
            x = x + self.ffn(self.norm2(x))
        else:
            x = self.norm1(x + self.attn(x, positions, mask, cache=cache))
            x = self.norm2(x + self.ffn(x))
        return x


class Transformer(nn.Module):
    """A decoder-only language model: token ids (B, T) -> next-token logits (B, T, V).

    `generator` (optional) makes the weight initialization independent of torch's global
    random state.
    """

    def __init__(self, config: TransformerConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        c = config
        self.token_embedding = TokenEmbedding(c.vocab_size, c.d_model)
        self.position_embedding: nn.Module | None = None
        if c.position == "learned":
            self.position_embedding = LearnedPositionalEmbedding(c.context_length, c.d_model)
        elif c.position == "sinusoidal":
            self.position_embedding = SinusoidalPositionalEncoding(c.context_length, c.d_model, scale=c.sinusoidal_scale)
        # One table of RoPE angles, shared by the attention of every block.
        self.rope = None
        if c.position == "rope":
            self.rope = RotaryEmbedding(c.d_head, c.context_length, c.rope_base, c.rope_scaling_spec())
        self.embedding_dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c, self.rope) for _ in range(c.n_layers))
        # Pre-LN leaves the residual stream unnormalized, so it needs a last norm; Post-LN does not.
        self.final_norm = make_norm(c.norm, c.d_model, c.norm_eps, c.bias) if c.pre_ln else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2's initialization: N(0, 0.02) everywhere, N(0, 0.02 / sqrt(2 L)) for w_o and ffn.w2
        (every expert's w2 in an MoE), zero biases, unit norm gains. The residual stream is a sum
        of 2 L branches; the smaller scale keeps its variance from growing with depth."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (TokenEmbedding, LearnedPositionalEmbedding)):
                nn.init.normal_(module.weight, std=0.02, generator=generator)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.w_o.weight, std=residual_std, generator=generator)
            for ffn in block.ffn.experts if isinstance(block.ffn, MoE) else [block.ffn]:
                nn.init.normal_(ffn.w2.weight, std=residual_std, generator=generator)

    def check_inputs(self, idx: torch.Tensor, positions: torch.Tensor | None = None, values: bool = True) -> None:
        """Raise a TypeError / ValueError naming what was expected if idx or positions are unusable.

        Types and shapes are checked from the tensors' metadata. `values` also checks that the
        ids and positions are in range, which reads them: on a GPU that waits for the device (a
        host sync), so the decode steps and compiled code skip it (see `features`).
        """
        c = self.config
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}")
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise TypeError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {idx.dim()} dimension(s): {tuple(idx.shape)}")
        batch, seq_len = idx.shape
        if idx.numel() == 0:
            raise ValueError(f"idx must hold at least one token, got shape {tuple(idx.shape)}")
        if positions is None and seq_len > c.context_length:
            raise ValueError(f"sequence length {seq_len} exceeds context_length {c.context_length}")
        if positions is not None:
            integer = isinstance(positions, torch.Tensor) and not positions.is_floating_point()
            if not integer or positions.dtype == torch.bool:
                raise TypeError(f"positions must be an integer tensor, got {getattr(positions, 'dtype', positions)}")
            if positions.shape not in ((seq_len,), (batch, seq_len)):
                raise ValueError(
                    f"positions must have shape (T,) or (B, T) = {(batch, seq_len)}, got {tuple(positions.shape)}"
                )
        if not values:
            return
        ends = [idx.min(), idx.max()] + ([] if positions is None else [positions.min(), positions.max()])
        low, high, *position_ends = torch.stack([e.long() for e in ends]).tolist()  # one read of the device
        if low < 0 or high >= c.vocab_size:
            raise ValueError(
                f"token ids must be in [0, {c.vocab_size}) (vocab_size), got values from {low} to {high}"
            )
        if positions is None:
            return
        low, high = position_ends
        if low < 0 or (c.position not in ("none", "alibi") and high >= c.context_length):
            raise ValueError(
                f"positions must be in [0, {c.context_length}) (context_length), got values from {low} to {high}"
            )

    def features(
        self, idx: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None, cache=None
    ) -> torch.Tensor:
        """The final hidden states (after the last norm) for token ids idx (B, T): (B, T, C).

        The inputs are checked in eager mode only: a compiled forward stays one graph. Their
        values (ids and positions in range) are checked only without a cache: a decode step
        never waits for the device (the prompt was checked by `generate`, and sampled ids
        are in range); an out-of-range id there fails in the embedding lookup instead.
        """
        if cache is not None and positions is None:
            positions = cache.positions(idx.shape[1])  # the new tokens follow the cached ones
        if not torch.compiler.is_compiling():
            self.check_inputs(idx, positions, values=cache is None)
        x = self.token_embedding(idx.long())  # (B, T, C)
        if self.position_embedding is not None:
            pos = torch.arange(idx.shape[1], device=idx.device) if positions is None else positions
            x = x + self.position_embedding(pos)  # (B, T, C); pos is (T,) or (B, T)
        x = self.embedding_dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, mask, cache=None if cache is None else cache.layers[i])  # (B, T, C)
        return self.final_norm(x)

    def forward(
        self, idx: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None, cache=None
    ) -> torch.Tensor:
        """Logits (B, T, V) for token ids idx (B, T).

        `positions` (T,) or (B, T): where the tokens sit (default 0 .. T-1, or after the cached ones).
        `mask`: optional boolean mask, True = may attend, broadcastable to (B, H, T, T),
        combined with the causal mask (e.g. to hide padding).
        `cache`: a `llm_course.kv_cache.KVCache` (chapter 09); idx then holds only the tokens the
        cache has not seen, and their keys and values are appended to it.
        """
        return self.lm_head(self.features(idx, positions, mask, cache))  # (B, T, V)


# ---------------------------------------------------------------------------------------
# Counting and measuring
# ---------------------------------------------------------------------------------------


def _one_ffn_parameters(c: TransformerConfig) -> int:
    C, F, b = c.d_model, c.d_ff, int(c.bias)
    if c.activation == "swiglu":
        return 3 * C * F + b * (2 * F + C)
    return 2 * C * F + b * (F + C)


def parameter_breakdown(config: TransformerConfig) -> dict[str, int]:
    """Parameters per component, by formula (the values sum to `count_parameters`).

    Per layer, with D = d_model / H and biases b = 1 if config.bias else 0:
      attention  C (H D) + 2 C (H_kv D) + (H D) C  + b (H D + 2 H_kv D + C)
      ffn        2 C F + b (F + C),  or for SwiGLU  3 C F + b (2 F + C);
                 with E = n_experts > 0: E such FFNs (the experts) + E C (the router)
      norms      2 C (1 + b) for LayerNorm, 2 C for RMSNorm
    plus V C for the token embedding, context_length C for learned positions, one final
    norm (Pre-LN), and V C for the output head unless it is tied to the embedding.
    """
    c = config
    C, V, b = c.d_model, c.vocab_size, int(c.bias)
    q_size, kv_size = c.n_heads * c.d_head, c.n_kv_heads * c.d_head
    attention = C * q_size + 2 * C * kv_size + q_size * C + b * (q_size + 2 * kv_size + C)
    ffn = _one_ffn_parameters(c)
    if c.n_experts > 0:
        ffn = c.n_experts * ffn + c.n_experts * C
    norm = C * (1 + b) if c.norm == "layernorm" else C
    return {
        "token_embedding": V * C,
        "position_embedding": c.context_length * C if c.position == "learned" else 0,
        "attention": c.n_layers * attention,
        "ffn": c.n_layers * ffn,
        "norms": (2 * c.n_layers + int(c.pre_ln)) * norm,
        "lm_head": 0 if c.tie_embeddings else V * C,
    }


def count_parameters(config: TransformerConfig) -> int:
    """Total number of parameters of `Transformer(config)`, tied matrices counted once."""
    return sum(parameter_breakdown(config).values())


def count_active_parameters(config: TransformerConfig) -> int:
    """The parameters one token's forward pass uses: all of them, except the n_experts - k
    experts of each MoE layer that the token is not routed to. Equal to `count_parameters`
    for a dense model. (The embedding tables count whole, as in `count_parameters`.)"""
    idle_experts = config.n_experts - config.experts_per_token if config.n_experts > 0 else 0
    return count_parameters(config) - config.n_layers * idle_experts * _one_ffn_parameters(config)


def moe_aux_loss(model: Transformer) -> torch.Tensor:
    """The mean of the MoE blocks' load-balancing losses from the model's latest forward call.

    Add it to the training loss times a small coefficient (Switch Transformer: 0.01). A
    model without MoE blocks gives 0. The mean (not the sum) keeps the scale of one layer's
    loss whatever the depth: k when the routing is balanced.
    """
    losses = [block.ffn.aux_loss for block in model.blocks if isinstance(block.ffn, MoE)]
    if not losses:
        return torch.zeros((), device=model.lm_head.weight.device)
    if any(loss is None for loss in losses):
        raise RuntimeError("moe_aux_loss needs a forward call first: the MoE layers have not routed any token yet")
    return torch.stack(losses).mean()


def block_gradient_norms(model: Transformer) -> list[float]:
    """The L2 norm of the gradient of each block's parameters, first block first.

    Call it after `loss.backward()`. With Post-LN the early blocks' gradients grow (or
    vanish) with depth at initialization; with Pre-LN they stay comparable.
    """
    norms = []
    for block in model.blocks:
        grads = [p.grad.float().pow(2).sum() for p in block.parameters() if p.grad is not None]
        norms.append(torch.stack(grads).sum().sqrt() if grads else torch.zeros(()))
    return torch.stack([n.cpu() for n in norms]).tolist()
