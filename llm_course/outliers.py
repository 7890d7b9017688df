"""Outlier features and int8 matrix products: per-tensor, vector-wise, and LLM.int8()'s mixed precision (chapter 09).

An int8 matrix product quantizes both operands, the activations x (tokens, in) and the weights
w (out, in), multiplies the integers, and rescales: y = x w^T ~ (q_x q_w^T) * s_x s_w. How many
numbers share a scale decides the error:

- `absmax_matmul`: one scale for all of x and one for all of w (per-tensor absmax);
- `vectorwise_matmul`: one scale per row of x (a token) and one per row of w (an output
  channel), the outer product s_x s_w^T rescaling each output (Dettmers et al., 2022, §3.1);
- `llm_int8_matmul`: LLM.int8()'s mixed-precision decomposition (Dettmers et al., 2022, §3.2).
  The input features (columns of x) that hold any |x| > threshold (6.0 in the paper) are
  multiplied in floating point, the rest vector-wise in int8, and the two parts added:

      y = x[:, O] w[:, O]^T  +  vectorwise(x[:, ~O], w[:, ~O]).

Why it matters: large transformers (from about 6.7B parameters in the paper) develop a few
hidden features whose magnitudes are 20x or more those of the others, in most tokens and
layers. One outlier in a token's row sets that row's scale, and every other entry of the row
is then rounded to a few of the 255 levels. Keeping the few outlier columns in float restores
the precision of all the rest, at the cost of a small float product.

The integer products are computed exactly (in float64, which holds every sum of int8 x int8
products below 2^53); a real kernel uses int8 tensor cores with int32 accumulators.
`outlier_columns` finds the features, `decompose_matmul` returns the two parts separately.

Left out: the int8 kernels themselves (the point here is the arithmetic of the error, not the
speed), zero points, and the row-wise int8 *storage* of the weights (`quantization.py`).
"""

from __future__ import annotations

import torch

from llm_course.quantization import quantize_groupwise


def _check_operands(x: torch.Tensor, w: torch.Tensor) -> None:
    if x.dim() != 2 or w.dim() != 2:
        raise ValueError(f"x must be (tokens, in) and w (out, in), got shapes {tuple(x.shape)} and {tuple(w.shape)}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"x has {x.shape[1]} input features but w has {w.shape[1]}: shapes {tuple(x.shape)}, {tuple(w.shape)}"
        )


def quantize_rows_int8(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 absmax with one scale per row of a (rows, cols): q int8 (rows, cols), scale (rows, 1)."""
    return quantize_groupwise(a, bits=8, group_size=a.shape[1])


def quantize_tensor_int8(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 absmax with one scale for the whole of a (rows, cols): q int8 (rows, cols), scale (1, 1)."""
    if a.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(a.shape)}")
    q, scale = quantize_groupwise(a.reshape(1, -1), bits=8, group_size=a.numel())
    return q.reshape(a.shape), scale


def _int_matmul(q_x: torch.Tensor, q_w: torch.Tensor) -> torch.Tensor:
    """q_x (tokens, in) @ q_w (out, in)^T exactly, as an int32 accumulator would: (tokens, out) float64."""
    return q_x.double() @ q_w.double().T


def absmax_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (tokens, in) @ w (out, in)^T with both operands int8, one scale per tensor: (tokens, out) float32."""
    _check_operands(x, w)
    q_x, s_x = quantize_tensor_int8(x)
    q_w, s_w = quantize_tensor_int8(w)
    return (_int_matmul(q_x, q_w) * (s_x.double() * s_w.double())).float()


def vectorwise_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (tokens, in) @ w (out, in)^T with both int8, a scale per token and per output channel: (tokens, out)."""
    _check_operands(x, w)
    q_x, s_x = quantize_rows_int8(x)  # s_x (tokens, 1)
    q_w, s_w = quantize_rows_int8(w)  # s_w (out, 1)
    return (_int_matmul(q_x, q_w) * (s_x.double() @ s_w.double().T)).float()  # outer product (tokens, out)


def outlier_columns(x: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """Boolean mask (in,) of the input features of x (tokens, in) with any |value| > threshold."""
    if threshold < 0:
        raise ValueError(f"threshold must be non-negative, got {threshold}")
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, in), got shape {tuple(x.shape)}")
    return (x.abs() > threshold).any(dim=0)


def decompose_matmul(x: torch.Tensor, w: torch.Tensor, threshold: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8()'s two parts of x @ w^T: (float part over the outlier columns, int8 vector-wise part
    over the others), each (tokens, out) float32. Their sum is `llm_int8_matmul`."""
    _check_operands(x, w)
    outliers = outlier_columns(x, threshold)  # (in,)
    float_part = x[:, outliers].float() @ w[:, outliers].float().T  # (tokens, out)
    if outliers.all():
        return float_part, torch.zeros_like(float_part)
    return float_part, vectorwise_matmul(x[:, ~outliers], w[:, ~outliers])


def llm_int8_matmul(x: torch.Tensor, w: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """x (tokens, in) @ w (out, in)^T by LLM.int8(): outlier features in float, the rest int8 vector-wise."""
    float_part, int8_part = decompose_matmul(x, w, threshold)
    return float_part + int8_part
