"""Position-wise feed-forward networks and their activations (chapter 05).

Implements the transformer's FFN, applied to every position independently:
- `FeedForward`: w2(act(w1 x)), with act = ReLU (Vaswani et al., 2017), GELU (Hendrycks &
  Gimpel, 2016) or its tanh approximation (GPT-2; Hugging Face calls it "gelu_new");
- `SwiGLU`: w2(silu(w1 x) * w3 x), the gated unit of Shazeer (2020), "GLU Variants Improve
  Transformer", used by Llama (w1 = gate_proj, w3 = up_proj, w2 = down_proj in Hugging Face).
The activations are written out as pure functions beside the modules; the modules call
PyTorch's fused kernels for the same functions (`ACTIVATIONS`), which the tests check are
equal to the formulas and which run about 3x faster on a CPU (forward and backward).
`make_ffn` builds the right module from an activation name; a mixture of experts
(chapter 10) builds its experts with it.

Left out: other GLU variants (GEGLU, ReGLU), bias-free GELU kernels and fused MLP kernels.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(0, x)."""
    return x.clamp_min(0.0)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """x * Phi(x), Phi the standard normal CDF: 0.5 x (1 + erf(x / sqrt 2)). (PyTorch's F.gelu.)"""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU used by GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), also called swish."""
    return x * torch.sigmoid(x)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up: the gate decides, per hidden unit, how much of `up` passes."""
    return silu(gate) * up


ACTIVATIONS = {
    "relu": F.relu,  # == relu
    "gelu": F.gelu,  # == gelu
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # == gelu_tanh
}
"""The activations `FeedForward` accepts by name, as PyTorch kernels equal to the formulas
above ("swiglu" is the separate `SwiGLU` module)."""


class FeedForward(nn.Module):
    """w2(act(w1 x)): (B, T, C) -> (B, T, C) through a hidden size d_ff (4 C in GPT-2)."""

    def __init__(
        self, d_model: int, d_ff: int, activation: str = "gelu_tanh", bias: bool = True, dropout: float = 0.0
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.w1 = nn.Linear(d_model, d_ff, bias=bias)
        self.w2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(self.act(self.w1(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x): (B, T, C) -> (B, T, C). Three matrices instead of two, so Llama
    shrinks d_ff to about (2/3) 4 C to keep the parameter count of a 4 C GELU FFN."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=bias)  # gate
        self.w3 = nn.Linear(d_model, d_ff, bias=bias)  # up
        self.w2 = nn.Linear(d_ff, d_model, bias=bias)  # down
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))  # == w2(swiglu(w1 x, w3 x))


def make_ffn(d_model: int, d_ff: int, activation: str, bias: bool = True, dropout: float = 0.0) -> nn.Module:
    """The FFN for an activation name: "relu", "gelu", "gelu_tanh" or "swiglu"."""
    if activation == "swiglu":
        return SwiGLU(d_model, d_ff, bias=bias, dropout=dropout)
    return FeedForward(d_model, d_ff, activation=activation, bias=bias, dropout=dropout)
