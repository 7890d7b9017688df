"""Neural networks from first principles (chapter 01).

Implements, as pure functions on tensors and without autograd:
- the activations `sigmoid`, `relu` and `tanh` and their derivatives;
- a linear layer y = x W^T + b in `nn.Linear`'s layout (W is (out, in)) and its backward pass
  written by hand with the chain rule (`linear_backward`);
- one step of gradient descent (`sgd_step`) and a central-difference `numerical_gradient`;
- a two-layer ReLU network (`init_mlp`, `mlp_forward`, `mlp_backward`) trained by full-batch
  gradient descent on two interleaving half-moons (`two_moons`, `train_mlp`), with the
  binary cross-entropy loss and its gradient;
- a vanilla (Elman, 1990) recurrent network h_t = tanh(W_hh h_{t-1} + W_xh x_t + b), its
  backpropagation through time for the hidden states (`hidden_state_gradients`), and
  `rnn_gradient_norms`, the measurement of ||dL/dh_t|| behind vanishing and exploding
  gradients (Bengio, Simard & Frasconi, 1994; Pascanu, Mikolov & Bengio, 2013), with
  `random_recurrent_weights` to build W_hh of a chosen spectral radius.

Shapes: B batch, `in`/`out` the features of a layer, T time steps, H the hidden size.
Every function checks its shapes and says what is wrong. The tests compare all of it with
PyTorch's autograd, `nn.Linear` and `nn.RNN`.

Left out: other losses and optimizers (chapter 06), mini-batches, LSTMs and GRUs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor


# --------------------------------------------------------------------------- activations
def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)), in (0, 1). For very negative x, exp(-x) overflows to inf and the result is 0."""
    return 1.0 / (1.0 + torch.exp(-x))


def sigmoid_derivative(x: Tensor) -> Tensor:
    """d sigmoid / dx = sigmoid(x) (1 - sigmoid(x)): at most 1/4, at x = 0."""
    s = sigmoid(x)
    return s * (1.0 - s)


def relu(x: Tensor) -> Tensor:
    """max(0, x). (Written with `where` so that autograd, like `relu_derivative`, takes slope 0 at x = 0.)"""
    return torch.where(x > 0, x, 0.0)


def relu_derivative(x: Tensor) -> Tensor:
    """1 where x > 0, else 0 (at x = 0 we take 0, as PyTorch's torch.relu does)."""
    return (x > 0).to(x.dtype)


def tanh(x: Tensor) -> Tensor:
    """(e^x - e^-x) / (e^x + e^-x) = 2 sigmoid(2x) - 1, in (-1, 1)."""
    return torch.tanh(x)


def tanh_derivative(x: Tensor) -> Tensor:
    """d tanh / dx = 1 - tanh(x)^2: 1 at x = 0, close to 0 once |x| is a few units."""
    return 1.0 - torch.tanh(x) ** 2


# --------------------------------------------------------------------------- the linear layer
def _check_linear_shapes(x: Tensor, W: Tensor) -> None:
    if W.dim() != 2:
        raise ValueError(f"W must be a matrix (out_features, in_features), got shape {tuple(W.shape)}")
    if x.dim() != 2:
        raise ValueError(f"x must be a batch of rows (B, in_features), got shape {tuple(x.shape)}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(
            f"x has {x.shape[1]} features per row but W {tuple(W.shape)} expects in_features = {W.shape[1]} "
            "(W is (out_features, in_features), as in nn.Linear)"
        )


def linear_forward(x: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
    """y = x W^T + b for a batch x (B, in), W (out, in) and b (out,) or None: y is (B, out).

    Row i of y is W x_i + b, the column-vector formula applied to every example at once.
    """
    _check_linear_shapes(x, W)
    y = x @ W.T  # (B, out)
    if b is not None:
        if tuple(b.shape) != (W.shape[0],):
            raise ValueError(f"b must have shape ({W.shape[0]},), one bias per output, got {tuple(b.shape)}")
        y = y + b  # broadcast over the batch
    return y


def linear_backward(x: Tensor, W: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of a loss L through y = x W^T + b, given grad_out = dL/dy (B, out).

    Returns (grad_x, grad_W, grad_b) = (dL/dx, dL/dW, dL/db), each of its variable's shape:
    grad_x = grad_out W (B, in), grad_W = grad_out^T x (out, in), grad_b = sum of grad_out
    over the batch (out,). The bias does not appear: y depends on it with slope 1.
    """
    _check_linear_shapes(x, W)
    if tuple(grad_out.shape) != (x.shape[0], W.shape[0]):
        raise ValueError(
            f"grad_out must have the output's shape (B, out_features) = {(x.shape[0], W.shape[0])}, "
            f"got {tuple(grad_out.shape)}"
        )
    grad_x = grad_out @ W  # (B, out) @ (out, in) -> (B, in)
    grad_W = grad_out.T @ x  # (out, B) @ (B, in) -> (out, in): a sum over the batch
    grad_b = grad_out.sum(dim=0)  # (out,)
    return grad_x, grad_W, grad_b


# --------------------------------------------------------------------------- gradient descent
def sgd_step(params: Sequence[Tensor], grads: Sequence[Tensor], lr: float) -> list[Tensor]:
    """One step of gradient descent: a new list with p - lr * g for each parameter p and its gradient g.

    The inputs are left unchanged (the training loops here rebind the list they get back).
    """
    if len(params) != len(grads):
        raise ValueError(f"got {len(params)} parameters but {len(grads)} gradients")
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.shape != g.shape:
            raise ValueError(f"parameter {i} has shape {tuple(p.shape)} but its gradient {tuple(g.shape)}")
    return [p - lr * g for p, g in zip(params, grads)]


def numerical_gradient(f: Callable[[Tensor], Tensor | float], x: Tensor, eps: float = 1e-6) -> Tensor:
    """dL/dx by central differences, (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), one element at a time.

    `f` maps a tensor shaped like x to a scalar. Its error is O(eps^2) from the Taylor
    series plus O(machine epsilon / eps) from rounding: use float64 and eps near 1e-6.
    """
    grad = torch.zeros_like(x)
    flat_x, flat_grad = x.detach().clone().reshape(-1), grad.view(-1)
    for i in range(flat_x.numel()):
        old = flat_x[i].item()
        flat_x[i] = old + eps
        up = float(f(flat_x.view_as(x)))
        flat_x[i] = old - eps
        down = float(f(flat_x.view_as(x)))
        flat_x[i] = old
        flat_grad[i] = (up - down) / (2 * eps)
    return grad


# --------------------------------------------------------------------------- a two-layer network
def two_moons(n: int, noise: float = 0.1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Two interleaving half-circles in the plane: x (n, 2) and labels y (n,) in {0., 1.}.

    Class 0 lies on the upper half of the unit circle, class 1 on a lower half circle shifted
    right by 1 and up by 0.5 (as scikit-learn's make_moons), plus Gaussian noise of std `noise`.
    No straight line separates them.
    """
    n0 = n // 2
    angles = torch.rand(n, generator=generator) * math.pi  # (n,)
    upper = torch.stack([torch.cos(angles[:n0]), torch.sin(angles[:n0])], dim=1)  # (n0, 2)
    lower = torch.stack([1.0 - torch.cos(angles[n0:]), 0.5 - torch.sin(angles[n0:])], dim=1)  # (n - n0, 2)
    x = torch.cat([upper, lower]) + noise * torch.randn(n, 2, generator=generator)
    y = torch.cat([torch.zeros(n0), torch.ones(n - n0)])
    return x, y


def init_mlp(
    n_in: int, n_hidden: int, n_out: int = 1, generator: torch.Generator | None = None, dtype=torch.float32
) -> list[Tensor]:
    """[W1 (hidden, in), b1 (hidden,), W2 (out, hidden), b2 (out,)]: He-initialized weights, zero biases.

    W1 has standard deviation sqrt(2 / n_in), so that the ReLU layer keeps the scale of its
    input (He et al., 2015); W2 has 1 / sqrt(n_hidden).
    """
    W1 = torch.randn(n_hidden, n_in, generator=generator, dtype=dtype) * math.sqrt(2.0 / n_in)
    W2 = torch.randn(n_out, n_hidden, generator=generator, dtype=dtype) / math.sqrt(n_hidden)
    return [W1, torch.zeros(n_hidden, dtype=dtype), W2, torch.zeros(n_out, dtype=dtype)]


def mlp_forward(x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """logits = relu(x W1^T + b1) W2^T + b2, shape (B, out); also the cache (x, a1, h1) for the backward pass."""
    W1, b1, W2, b2 = params
    a1 = linear_forward(x, W1, b1)  # (B, hidden): pre-activations
    h1 = relu(a1)  # (B, hidden)
    logits = linear_forward(h1, W2, b2)  # (B, out)
    return logits, (x, a1, h1)


def mlp_backward(params: Sequence[Tensor], cache: tuple[Tensor, Tensor, Tensor], grad_logits: Tensor) -> list[Tensor]:
    """[dL/dW1, dL/db1, dL/dW2, dL/db2] from grad_logits = dL/dlogits (B, out), by the chain rule."""
    W1, _, W2, _ = params
    x, a1, h1 = cache
    grad_h1, grad_W2, grad_b2 = linear_backward(h1, W2, grad_logits)  # (B, hidden), (out, hidden), (out,)
    grad_a1 = grad_h1 * relu_derivative(a1)  # (B, hidden): ReLU passes the gradient where a1 > 0
    _, grad_W1, grad_b1 = linear_backward(x, W1, grad_a1)  # (hidden, in), (hidden,)
    return [grad_W1, grad_b1, grad_W2, grad_b2]


def binary_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean of -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] over all elements.

    Computed as max(z, 0) - z y + log(1 + exp(-|z|)), which is the same and never takes the
    log of 0 (as torch.nn.functional.binary_cross_entropy_with_logits).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    z, y = logits, targets
    return (z.clamp_min(0) - z * y + torch.log1p(torch.exp(-z.abs()))).mean()


def binary_cross_entropy_backward(logits: Tensor, targets: Tensor) -> Tensor:
    """d binary_cross_entropy / d logits = (sigmoid(z) - y) / N, N the number of elements."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    return (sigmoid(logits) - targets) / logits.numel()


def train_mlp(
    x: Tensor,
    y: Tensor,
    n_hidden: int = 16,
    lr: float = 0.5,
    steps: int = 2000,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], list[float]]:
    """Full-batch gradient descent on a 2-layer ReLU network for binary labels y (B,).

    Every step: forward, loss, hand-written backward (`mlp_backward`), `sgd_step`. Returns the
    trained parameters and the loss before each step.
    """
    params = init_mlp(x.shape[1], n_hidden, 1, generator=generator, dtype=x.dtype)
    params = [p.to(x.device) for p in params]
    targets = y.reshape(-1, 1).to(x.dtype)  # (B, 1), the logits' shape
    losses = []
    for _ in range(steps):
        logits, cache = mlp_forward(x, params)
        losses.append(binary_cross_entropy(logits, targets).item())
        grads = mlp_backward(params, cache, binary_cross_entropy_backward(logits, targets))
        params = sgd_step(params, grads, lr)
    return params, losses


# --------------------------------------------------------------------------- the recurrent network
def _check_rnn_shapes(xs: Tensor, h0: Tensor, W_hh: Tensor, W_xh: Tensor) -> None:
    if W_hh.dim() != 2 or W_hh.shape[0] != W_hh.shape[1]:
        raise ValueError(f"W_hh must be a square matrix (H, H), got shape {tuple(W_hh.shape)}")
    H = W_hh.shape[0]
    if tuple(h0.shape) != (H,):
        raise ValueError(f"h0 must be one hidden state of shape ({H},) (W_hh is {H} x {H}), got {tuple(h0.shape)}")
    if xs.dim() != 2:
        raise ValueError(f"xs must be a sequence of input vectors (T, d_in), got shape {tuple(xs.shape)}")
    if tuple(W_xh.shape) != (H, xs.shape[1]):
        raise ValueError(
            f"W_xh must have shape (H, d_in) = {(H, xs.shape[1])} for inputs of size {xs.shape[1]}, "
            f"got {tuple(W_xh.shape)}"
        )


def rnn_cell(x_t: Tensor, h_prev: Tensor, W_hh: Tensor, W_xh: Tensor, b: Tensor | None = None) -> Tensor:
    """One step of a vanilla RNN: h_t = tanh(W_hh h_{t-1} + W_xh x_t + b), for a vector or a batch of rows."""
    a = h_prev @ W_hh.T + x_t @ W_xh.T  # (..., H): the pre-activation
    if b is not None:
        a = a + b
    return torch.tanh(a)


def rnn_forward(xs: Tensor, h0: Tensor, W_hh: Tensor, W_xh: Tensor, b: Tensor | None = None) -> Tensor:
    """Run the cell over inputs xs (T, d_in) from h0 (H,): the hidden states h_1 ... h_T as a (T, H) tensor."""
    _check_rnn_shapes(xs, h0, W_hh, W_xh)
    h, hs = h0, []
    for x_t in xs:  # one step at a time: step t needs h_{t-1}
        h = rnn_cell(x_t, h, W_hh, W_xh, b)
        hs.append(h)
    return torch.stack(hs)  # (T, H)


def hidden_state_gradients(hs: Tensor, W_hh: Tensor, grad_last: Tensor) -> Tensor:
    """Backpropagation through time for a loss that depends on the last state only.

    Given the states hs = h_1 ... h_T (T, H) of `rnn_forward` and grad_last = dL/dh_T (H,),
    returns dL/dh_t for t = 1 ... T as a (T, H) tensor, by the recursion
        dL/dh_{t-1} = W_hh^T ((1 - h_t^2) * dL/dh_t),
    since h_t = tanh(a_t) with a_t = W_hh h_{t-1} + W_xh x_t + b, and tanh'(a_t) = 1 - h_t^2.
    """
    grads = [grad_last]
    for t in range(hs.shape[0] - 1, 0, -1):  # from h_T back to h_1 (rows T-1, ..., 1)
        grad_a = (1.0 - hs[t] ** 2) * grads[-1]  # dL/da_t: through the tanh of step t
        grads.append(grad_a @ W_hh)  # dL/dh_{t-1} = W_hh^T dL/da_t (as a row: grad_a @ W_hh)
    return torch.stack(grads[::-1])  # (T, H), row t-1 is dL/dh_t


def rnn_gradient_norms(W_hh: Tensor, W_xh: Tensor, xs: Tensor, h0: Tensor) -> list[float]:
    """||dL/dh_t|| for t = 1 ... T, for an RNN without bias run over xs (T, d_in) from h0, and L = sum(h_T).

    Element t-1 of the list is the norm for h_t, so the last one is ||dL/dh_T|| = sqrt(H),
    the norm of a vector of ones. Computed by hand (`hidden_state_gradients`); the tests
    check it against autograd.
    """
    hs = rnn_forward(xs, h0, W_hh, W_xh)  # (T, H)
    grads = hidden_state_gradients(hs, W_hh, torch.ones_like(hs[-1]))  # (T, H)
    return grads.norm(dim=-1).tolist()


def spectral_radius(W: Tensor) -> float:
    """The largest absolute value of the eigenvalues of the square matrix W."""
    return torch.linalg.eigvals(W).abs().max().item()


def random_recurrent_weights(
    n: int, radius: float, generator: torch.Generator | None = None, dtype=torch.float64
) -> Tensor:
    """A random Gaussian (n, n) matrix rescaled so that its spectral radius is exactly `radius`.

    Its entries are first drawn with variance 1/n, which by the circular law puts the
    eigenvalues roughly uniformly in the unit disk; the rescaling then fixes the largest one.
    """
    W = torch.randn(n, n, generator=generator, dtype=dtype) / math.sqrt(n)
    return W * (radius / spectral_radius(W))
