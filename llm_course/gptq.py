"""GPTQ: quantizing a layer's weights column by column while correcting the error (chapter 09).

Round-to-nearest (RTN, `quantization.quantize_groupwise`) rounds every weight on its own. GPTQ
(Frantar et al., 2022) instead minimizes the error of the layer's *outputs* on calibration
inputs X (N, in):

    min over the quantized Q  of  || X W^T - X Q^T ||^2,   whose Hessian in each row of W is H = 2 X^T X.

It quantizes the input columns of W (out, in) one at a time, left to right, and after each one
moves the columns not yet quantized to absorb the rounding error: Optimal Brain Surgeon's
update (OBS; Hassibi and Stork, 1993, as used by OBQ, Frantar and Alistarh, 2022). With
H^-1 the inverse Hessian of the columns still free and e = (w_i - q_i) / [H^-1]_ii,

    W[:, i+1:] -= e [H^-1]_{i, i+1:},     then column i is removed from H^-1.

All rows of W share X, hence H, so each column is one rank-one update of the whole matrix.
GPTQ's trick is that the successive rows [H^-1]_{i, i:} (H^-1 after removing columns 0..i-1)
are the rows of the upper Cholesky factor U of H^-1, up to a factor per row: with
H^-1 = U^T U, the update becomes (w_i - q_i) / U_ii * U_{i, i+1:}, and no inverse is recomputed.

- `hessian(x)`: H = 2 X^T X / N from calibration inputs (the mean keeps its scale independent of N);
- `gptq_quantize(w, h, bits, group_size, damp)`: the quantizer above. H is damped by
  `damp` times the mean of its diagonal (1% in the paper: the Cholesky needs a positive
  definite matrix, and it regularizes towards RTN); features that never fire (H_ii = 0) get
  weight 0. Scales: one per output channel computed from the original W, or, with a group
  size, one per group computed when the quantizer reaches the group (from the updated
  weights, as the paper's reference code does). With H = I no column moves and GPTQ is RTN;
- `quantize_model_weights(model, bits, group_size, method, calibration)`: every linear
  layer except the head quantized by RTN or GPTQ, in place, block after block. The weights
  are stored back *dequantized* (simulated quantization: the perplexity is that of the
  quantized model; `quantization.QuantizedLinear` shows the storage). As in the paper's
  code, the layers of one transformer block get their inputs from one forward pass, with
  the blocks before it already quantized.

Left out: the "act-order" heuristic (quantizing the columns of largest H_ii first), the lazy
batched updates that make GPTQ fast on a GPU (blocks of 128 columns; the result is the same),
and packed 3-bit storage.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course.quantization import dequantize_groupwise, qmax, quantize_groupwise


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / N of calibration inputs x (..., in), every leading dimension a sample: (in, in) float64."""
    x = x.reshape(-1, x.shape[-1]).double()  # (N, in)
    return 2 * x.T @ x / x.shape[0]


def _absmax_scale(w: torch.Tensor, top: int) -> torch.Tensor:
    """One absmax scale per row of w (out, g): (out,), 1 for a row of zeros."""
    absmax = w.abs().amax(dim=1)
    return torch.where(absmax > 0, absmax / top, torch.ones_like(absmax))


def gptq_quantize(
    w: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int | None = None, damp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize w (out, in) by GPTQ with the Hessian h (in, in) of its inputs.

    Returns q int8 (out, in) in [-Q, Q] and scale float32 (out, G), G = in // group_size (1 for
    group_size None: one scale per output channel), the layout of `quantization.quantize_groupwise`:
    `dequantize_groupwise(q, scale)` is the quantized weight.
    """
    top = qmax(bits)  # checks bits
    if w.dim() != 2:
        raise ValueError(f"w must be a (out, in) weight matrix, got shape {tuple(w.shape)}")
    n_out, n_in = w.shape
    if h.shape != (n_in, n_in):
        raise ValueError(
            f"the Hessian must be (in, in) = ({n_in}, {n_in}) for w of shape {tuple(w.shape)}, got {tuple(h.shape)}"
        )
    group_size = n_in if group_size is None else group_size
    if group_size < 1 or n_in % group_size != 0:
        raise ValueError(f"group_size ({group_size}) must divide the {n_in} input features")
    if damp < 0:
        raise ValueError(f"damp must be non-negative, got {damp}")

    W = w.detach().double().clone()  # (out, in): the columns not yet quantized get updated
    H = h.detach().double().clone()
    dead = torch.diagonal(H) == 0  # features that are always zero: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diagonal(H).mean() * torch.eye(n_in, dtype=H.dtype, device=H.device)
    H_inv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    # H^-1 = U^T U: row i of U is row i of the inverse Hessian of the free columns i.., over the root of its diagonal
    U = torch.linalg.cholesky(H_inv, upper=True)  # (in, in) upper triangular

    q = torch.zeros(n_out, n_in, dtype=torch.int8, device=w.device)
    scales = []
    scale = _absmax_scale(W, top) if group_size == n_in else None  # per channel: from the original weights
    for i in range(n_in):
        if group_size != n_in and i % group_size == 0:  # a new group: its scale from the updated weights
            scale = _absmax_scale(W[:, i : i + group_size], top)
        if i % group_size == 0:
            scales.append(scale)
        column = W[:, i]  # (out,)
        q_i = torch.round(column / scale).clamp(-top, top)
        q[:, i] = q_i.to(torch.int8)
        error = (column - q_i * scale) / U[i, i]  # (out,)
        W[:, i + 1 :] -= error[:, None] * U[i, i + 1 :][None, :]  # OBS: the free columns absorb the error
    return q, torch.stack(scales, dim=1).float()  # scale (out, G)


def rtn_quantize(w: torch.Tensor, bits: int = 4, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest with the same layout as `gptq_quantize`: `quantize_groupwise`, group_size None per channel."""
    return quantize_groupwise(w, bits, w.shape[1] if group_size is None else group_size)


def _linear_layers(model: nn.Module, skip: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith(skip)]


@torch.no_grad()
def layer_inputs(model: nn.Module, layers: list[nn.Module], calibration: torch.Tensor) -> list[torch.Tensor]:
    """The inputs (N, in) that each of `layers` receives when `model` runs on `calibration` (B, T) token ids."""
    captured: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.register_forward_hook(lambda module, args, out, i=i: captured[i].append(args[0].detach()))
        for i, layer in enumerate(layers)
    ]
    try:
        model(calibration)
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat([c.reshape(-1, c.shape[-1]) for c in inputs]) for inputs in captured]


@torch.no_grad()
def quantize_model_weights(
    model: nn.Module,
    bits: int = 4,
    group_size: int | None = None,
    method: str = "gptq",
    calibration: torch.Tensor | None = None,
    damp: float = 0.01,
    skip: tuple[str, ...] = ("lm_head",),
) -> nn.Module:
    """Quantize the weights of every `nn.Linear` of `model` (but `skip`) in place by "rtn" or "gptq".

    GPTQ needs `calibration`, token ids (B, T). The layers are taken block by block (the
    model's `blocks`, or else one layer at a time): one forward pass, with the earlier blocks
    already quantized, gives the inputs of all the linear layers of a block, hence their
    Hessians. Returns the model, its weights replaced by their dequantized values (the biases
    stay in floating point).
    """
    if method not in ("rtn", "gptq"):
        raise ValueError(f'method must be "rtn" or "gptq", got {method!r}')
    if method == "gptq" and (calibration is None or calibration.dim() != 2):
        raise ValueError("GPTQ needs calibration token ids of shape (B, T)")
    model.eval()
    layers = [m for _, m in _linear_layers(model, skip)]
    blocks = getattr(model, "blocks", None)
    if blocks is not None:  # the layers of each block, in order; any others one by one
        in_blocks = [[m for m in block.modules() if any(m is layer for layer in layers)] for block in blocks]
        seen = {id(m) for group in in_blocks for m in group}
        groups = in_blocks + [[m] for m in layers if id(m) not in seen]
    else:
        groups = [[m] for m in layers]
    for group in groups:
        if method == "gptq":
            hessians = [hessian(x) for x in layer_inputs(model, group, calibration)]
        for j, layer in enumerate(group):
            w = layer.weight
            if method == "rtn":
                q, scale = rtn_quantize(w, bits, group_size)
            else:
                q, scale = gptq_quantize(w, hessians[j], bits, group_size, damp)
            layer.weight.copy_(dequantize_groupwise(q, scale).to(w.dtype))
    return model
