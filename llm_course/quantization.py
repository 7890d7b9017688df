"""Weight quantization: int8 absmax per output channel and int4 group-wise (chapter 09).

Symmetric absmax quantization to b bits stores each weight as an integer in
[-Q, Q], Q = 2^(b-1) - 1 (127 for int8, 7 for int4), and one float scale per group of weights:

    scale = max |w| / Q  over the group,   q = round(w / scale),   w_hat = q * scale.

Rounding moves a weight by at most half a step, so |w - w_hat| <= scale / 2 for every element
(`max_quantization_error`). One scale per *output channel* (a row of an `nn.Linear` weight)
is LLM.int8()'s vector-wise quantization without its outlier decomposition (Dettmers et al.,
2022); one scale per *group* of g consecutive inputs of a row (g = 32 .. 128) is the layout of
GPTQ/AWQ-style int4 checkpoints, whose rounding here is plain round-to-nearest (GPTQ's error
correction is `llm_course.gptq`; no AWQ activation-aware scaling).

- `quantize_groupwise(w, bits, group_size)` and `dequantize_groupwise(q, scale)`, pure
  functions; `quantize_int8` is the per-channel case (group_size = in_features);
- `pack_int4` / `unpack_int4`: two 4-bit values per byte (q + 8 in the low nibble, the next
  one in the high nibble), so int4 weights really take half a byte each; int8 weights are
  stored as int8;
- `QuantizedLinear`, a drop-in for `nn.Linear` that keeps the quantized weight and its
  scales (float16, as checkpoints store them) and dequantizes in forward (weight-only
  quantization: the matmul itself runs in floating point), and `quantize_model`, which swaps
  a model's linear layers for it in place;
- `weight_bytes(module)`: the bytes of a module's parameters and buffers.

Activation quantization (int8 matmuls) and LLM.int8()'s outlier handling are in
`llm_course.outliers`; GPTQ's error-compensating rounding in `llm_course.gptq`.

Left out: zero points (asymmetric schemes), NF4 of QLoRA (chapter 11 uses its own), and fused
dequantize-matmul kernels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def qmax(bits: int) -> int:
    """The largest integer of symmetric b-bit quantization: 2^(b-1) - 1 (127 for 8 bits, 7 for 4)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    return 2 ** (bits - 1) - 1


def quantize_groupwise(w: torch.Tensor, bits: int = 4, group_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax-quantize w (out, in) in groups of `group_size` consecutive inputs of each row.

    Returns q, int8 (out, in) with values in [-Q, Q], and scale, float32 (out, in // group_size),
    with w ~ q * scale group by group. A group of zeros gets scale 1 (its q is 0 anyway).
    """
    if w.dim() != 2:
        raise ValueError(f"w must be a (out, in) weight matrix, got shape {tuple(w.shape)}")
    n_out, n_in = w.shape
    if group_size < 1 or n_in % group_size != 0:
        raise ValueError(f"group_size ({group_size}) must divide the {n_in} input features")
    top = qmax(bits)
    groups = w.float().reshape(n_out, n_in // group_size, group_size)  # (out, G, g)
    absmax = groups.abs().amax(dim=-1)  # (out, G)
    scale = torch.where(absmax > 0, absmax / top, torch.ones_like(absmax))  # (out, G)
    q = torch.round(groups / scale[..., None]).clamp(-top, top)  # (out, G, g)
    return q.to(torch.int8).reshape(n_out, n_in), scale


def dequantize_groupwise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q (out, in) integers, scale (out, G): the float32 weights q * scale, each group by its scale."""
    n_out, n_in = q.shape
    n_groups = scale.shape[-1]
    groups = q.float().reshape(n_out, n_groups, n_in // n_groups)  # (out, G, g)
    return (groups * scale.float()[..., None]).reshape(n_out, n_in)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 absmax, one scale per output channel (row): q (out, in) int8, scale (out, 1)."""
    return quantize_groupwise(w, bits=8, group_size=w.shape[1])


def max_quantization_error(scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """The analytic bound scale / 2 for every element, (out, in): |w - w_hat| never exceeds it."""
    return (scale / 2).repeat_interleave(group_size, dim=-1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], (out, in) with in even -> uint8 (out, in // 2): element 2j low nibble, 2j+1 high."""
    if q.shape[-1] % 2 != 0:
        raise ValueError(f"packing needs an even number of columns, got {q.shape[-1]}")
    nibbles = (q.to(torch.int16) + 8).to(torch.uint8)  # 0 .. 15
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`: uint8 (out, in // 2) -> int8 (out, in)."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).flatten(-2)  # (out, in)


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is stored quantized (int8 per channel or int4 group-wise).

    Build it with `QuantizedLinear.from_linear(linear, bits, group_size)`. The weight lives in
    buffers: `qweight` (int8, or uint8 with two int4 values per byte) and `scale` (float16);
    forward dequantizes it and calls `F.linear`. The bias stays in floating point.
    """

    def __init__(
        self, in_features: int, out_features: int, bits: int = 8, group_size: int | None = None, bias: bool = True
    ):
        super().__init__()
        group_size = in_features if group_size is None else group_size
        if bits not in (4, 8):
            raise ValueError(f"QuantizedLinear stores 8- or 4-bit weights, got bits={bits}")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        n_cols = in_features if bits == 8 else in_features // 2
        storage = torch.int8 if bits == 8 else torch.uint8  # int4: two values per byte
        self.register_buffer("qweight", torch.zeros(out_features, n_cols, dtype=storage))
        self.register_buffer("scale", torch.ones(out_features, in_features // group_size, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int | None = None) -> "QuantizedLinear":
        layer = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias is not None)
        q, scale = quantize_groupwise(linear.weight.detach(), bits, layer.group_size)
        layer.qweight = q if bits == 8 else pack_int4(q)
        layer.scale = scale.half()
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone())
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        q = self.qweight if self.bits == 8 else unpack_int4(self.qweight)
        return dequantize_groupwise(q, self.scale)  # (out, in) float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{sizes}, bits={self.bits}, group_size={self.group_size}"


def quantize_model(
    model: nn.Module, bits: int = 8, group_size: int | None = None, skip: tuple[str, ...] = ("lm_head",)
) -> nn.Module:
    """Replace every `nn.Linear` of `model` (in place) by a `QuantizedLinear`; returns the model.

    Layers whose name ends with one of `skip` stay as they are: by default the output head,
    which GPT-2 ties to the token embedding (both stay in floating point, as is common).
    group_size None means one scale per output channel.
    """
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not full.endswith(skip):
                setattr(module, child_name, QuantizedLinear.from_linear(child, bits, group_size))
    return model


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, shared tensors counted once."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.nbytes
    return total
