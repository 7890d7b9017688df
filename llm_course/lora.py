"""LoRA: low-rank adapters on frozen linear layers (Hu et al., 2021), and QLoRA's quantized base (chapter 11).

A frozen weight W (out, in) gets a trainable low-rank update, B A with A (r, in) and B (out, r):

    y = x W^T + b + (alpha / r) * (x A^T) B^T,        W_merged = W + (alpha / r) B A.

A starts like a linear layer's weight (Kaiming-uniform with a = sqrt(5), as `nn.Linear` and
peft do) and B at zero, so at step 0 the adapted model *is* the base model. Only A and B are
trained: r (in + out) numbers per layer instead of in * out.

- `lora_delta`, `lora_forward` and `merge_weight`: the math as pure functions;
- `LoRALinear(base, r, alpha, dropout)`: wraps an `nn.Linear` or a chapter 09
  `QuantizedLinear` (QLoRA: the base is stored in int4, the adapters in float32); its
  `enabled` flag switches the adapter off, so the same module is also the base model
  (chapter 12's DPO reference model);
- `apply_lora(model, target_names, r, alpha)`: freezes the model and wraps the chosen layers;
  `lora_disabled(model)`: a context manager that turns every adapter off;
  `merge_lora(model)`: folds the adapters into plain `nn.Linear` layers;
  `count_trainable(model)`: (trainable, total) parameters.

Left out: QLoRA's NF4 data type, double quantization and paged optimizers (the base here uses
chapter 09's absmax int4), rank-stabilized scaling, DoRA, and several adapters per layer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from llm_course.quantization import QuantizedLinear


def lora_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """The adapter's contribution scale * (x A^T) B^T: x (..., in), A (r, in), B (out, r) -> (..., out).

    Two thin products (through the rank r), never the full (out, in) matrix B A.
    """
    return scale * F.linear(F.linear(x, A), B)  # (..., r) then (..., out)


def lora_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor, scale: float
) -> torch.Tensor:
    """A LoRA linear layer: x W^T + b + scale * (x A^T) B^T, with W (out, in), b (out,) or None."""
    return F.linear(x, weight, bias) + lora_delta(x, A, B, scale)


def merge_weight(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """The merged weight W + scale * B A (out, in): one linear layer that computes what the adapted one does."""
    return weight + scale * (B @ A)  # (out, r) @ (r, in) -> (out, in)


class LoRALinear(nn.Module):
    """A frozen linear layer `base` (an `nn.Linear` or a `QuantizedLinear`) plus a rank-r adapter.

    `lora_A` (r, in) and `lora_B` (out, r) are the trainable parameters; `scale` = alpha / r.
    Dropout (peft's `lora_dropout`) applies to the adapter's input only. With `enabled` False
    the layer computes exactly its base.
    """

    def __init__(
        self,
        base: nn.Linear | QuantizedLinear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(base, (nn.Linear, QuantizedLinear)):
            raise TypeError(f"LoRALinear wraps an nn.Linear or a QuantizedLinear, got {type(base).__name__}")
        if r < 1:
            raise ValueError(f"the rank r must be at least 1, got {r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        device = next(base.buffers(), None) if isinstance(base, QuantizedLinear) else base.weight
        device = device.device if device is not None else None
        # A is drawn where `generator` lives, then moved to the base's device: the same seed gives
        # the same adapters on every device, and a CPU generator can initialize a CUDA model.
        A = torch.empty(r, self.in_features, device=device if generator is None else generator.device)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)  # = U(-1/sqrt(in), 1/sqrt(in))
        self.lora_A = nn.Parameter(A.to(device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    def base_weight(self) -> torch.Tensor:
        """The frozen weight (out, in) in floating point (dequantized for a quantized base)."""
        if isinstance(self.base, QuantizedLinear):
            return self.base.dequantized_weight()
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        if not self.enabled:
            return y
        return y + lora_delta(self.dropout(x), self.lora_A.to(x.dtype), self.lora_B.to(x.dtype), self.scale)

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with weight W + scale B A, in the base weight's dtype (a bf16 base
        stays bf16; a quantized base is dequantized, to float32). The sum is taken in float32."""
        bias, weight = self.base.bias, self.base_weight()
        layer = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=weight.device,
                          dtype=weight.dtype)  # fmt: skip
        with torch.no_grad():
            layer.weight.copy_(merge_weight(weight.float(), self.lora_A.float(), self.lora_B.float(), self.scale))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scale={self.scale:g}, enabled={self.enabled}"


def _children(model: nn.Module) -> Iterator[tuple[nn.Module, str, str, nn.Module]]:
    """(parent, child name, full name, child) for every submodule (a list: safe to replace while looping)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            yield module, child_name, f"{name}.{child_name}" if name else child_name, child


def apply_lora(
    model: nn.Module,
    target_names: tuple[str, ...] = ("w_q", "w_v"),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Freeze every parameter of `model`, then wrap (in place) each linear layer whose own name is in
    `target_names` in a `LoRALinear`; returns the model. The default adapts the query and value
    projections of every attention layer, as the LoRA paper does."""
    for p in model.parameters():
        p.requires_grad_(False)
    n = 0
    for parent, child_name, _, child in _children(model):
        if child_name in target_names and isinstance(child, (nn.Linear, QuantizedLinear)):
            setattr(parent, child_name, LoRALinear(child, r, alpha, dropout, generator))
            n += 1
    if n == 0:
        raise ValueError(f"no linear layer named one of {target_names} in the model")
    return model


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every adapter of `model` is off: the model computes its base (frozen) version."""
    layers = lora_layers(model)
    before = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, state in zip(layers, before):
            layer.enabled = state


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace (in place) every `LoRALinear` by the `nn.Linear` of its merged weight; returns the model.

    The merged model runs at the base model's speed with the adapter's outputs. A quantized
    base becomes a float32 layer (requantizing W + scale B A would round the update away).
    """
    for parent, child_name, _, child in _children(model):
        if isinstance(child, LoRALinear):
            setattr(parent, child_name, child.merged())
    return model


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters of `model`, shared tensors counted once."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values())
