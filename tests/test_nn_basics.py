"""Tests for llm_course.nn_basics, with PyTorch's autograd, nn.Linear and nn.RNN as oracles."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm_course.nn_basics import (
    binary_cross_entropy,
    binary_cross_entropy_backward,
    hidden_state_gradients,
    init_mlp,
    linear_backward,
    linear_forward,
    mlp_backward,
    mlp_forward,
    numerical_gradient,
    random_recurrent_weights,
    relu,
    relu_derivative,
    rnn_cell,
    rnn_forward,
    rnn_gradient_norms,
    sgd_step,
    sigmoid,
    sigmoid_derivative,
    spectral_radius,
    tanh,
    tanh_derivative,
    train_mlp,
    two_moons,
)

F64 = torch.float64
EXACT = dict(atol=1e-10, rtol=1e-10)  # float64 results of unit scale, a few products deep


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def autograd_derivative(f, x: torch.Tensor) -> torch.Tensor:
    """The elementwise derivative of f at x, by autograd (f acts elementwise, so d sum f / dx_i = f'(x_i))."""
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return grad


# --------------------------------------------------------------------------- activations
def test_activations_worked_examples():
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=F64)
    assert relu(x).tolist() == [0.0, 0.0, 3.0]
    assert relu_derivative(x).tolist() == [0.0, 0.0, 1.0]
    assert sigmoid(torch.tensor(0.0)).item() == 0.5
    assert sigmoid_derivative(torch.tensor(0.0)).item() == 0.25  # its largest value
    assert tanh_derivative(torch.tensor(0.0)).item() == 1.0


def test_activations_equal_torch_and_extremes_are_finite():
    x = torch.linspace(-50, 50, 1001, dtype=F64)
    torch.testing.assert_close(sigmoid(x), torch.sigmoid(x), **EXACT)
    torch.testing.assert_close(relu(x), torch.relu(x), atol=0, rtol=0)
    torch.testing.assert_close(tanh(x), torch.tanh(x), atol=0, rtol=0)
    big = torch.tensor([-1000.0, 1000.0])  # exp overflows float32 here
    assert sigmoid(big).tolist() == [0.0, 1.0]
    assert torch.isfinite(sigmoid_derivative(big)).all()


@pytest.mark.parametrize(
    ("f", "df"),
    [(sigmoid, sigmoid_derivative), (relu, relu_derivative), (tanh, tanh_derivative), (torch.relu, relu_derivative)],
)
def test_derivatives_equal_autograd(f, df):
    x = torch.randn(200, generator=gen(0), dtype=F64) * 4
    x[:3] = torch.tensor([0.0, 1e-12, -1e-12], dtype=F64)  # ReLU at and around its kink
    torch.testing.assert_close(df(x), autograd_derivative(f, x), **EXACT)


# --------------------------------------------------------------------------- the linear layer
def test_linear_forward_worked_example():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 2 inputs -> 3 outputs
    b = torch.tensor([0.5, -1.0, 0.0])
    assert linear_forward(x, W, b).tolist() == [[1.5, 1.0, 3.0], [0.5, -2.0, -1.0]]
    assert linear_forward(x, W).tolist() == [[1.0, 2.0, 3.0], [0.0, -1.0, -1.0]]


@pytest.mark.parametrize(("B", "n_in", "n_out"), [(1, 1, 1), (5, 3, 4), (7, 8, 2), (2, 16, 16)])
def test_linear_forward_equals_nn_linear(B, n_in, n_out):
    torch.manual_seed(0)
    layer = torch.nn.Linear(n_in, n_out)
    x = torch.randn(B, n_in, generator=gen(1))
    with torch.no_grad():
        torch.testing.assert_close(linear_forward(x, layer.weight, layer.bias), layer(x))
        torch.testing.assert_close(linear_forward(x, layer.weight), F.linear(x, layer.weight))


def test_linear_backward_worked_example():
    # y = x W^T + b with x (1, 2), W (1, 2); L = 3 y: grad_out = [[3]]
    x, W = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.5, 4.0]])
    grad_x, grad_W, grad_b = linear_backward(x, W, torch.tensor([[3.0]]))
    assert grad_x.tolist() == [[1.5, 12.0]]  # 3 W
    assert grad_W.tolist() == [[6.0, -3.0]]  # 3 x
    assert grad_b.tolist() == [3.0]


@pytest.mark.parametrize("seed", range(12))
def test_linear_backward_equals_autograd(seed):
    g = gen(seed)
    B, n_in, n_out = (int(v) for v in torch.randint(1, 9, (3,), generator=g))
    x = torch.randn(B, n_in, generator=g, dtype=F64, requires_grad=True)
    W = torch.randn(n_out, n_in, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(n_out, generator=g, dtype=F64, requires_grad=True)
    grad_out = torch.randn(B, n_out, generator=g, dtype=F64)
    linear_forward(x, W, b).backward(grad_out)  # L = sum(grad_out * y), so dL/dy = grad_out
    ours = linear_backward(x.detach(), W.detach(), grad_out)
    for mine, theirs in zip(ours, (x.grad, W.grad, b.grad)):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, **EXACT)


class HandLinear(torch.autograd.Function):
    """A linear layer whose backward is ours, so that torch.autograd.gradcheck can test it."""

    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return linear_forward(x, W, b)

    @staticmethod
    def backward(ctx, grad_out):
        x, W = ctx.saved_tensors
        return linear_backward(x, W, grad_out)


def test_linear_backward_passes_gradcheck():
    g = gen(3)
    x, W, b = (torch.randn(*s, generator=g, dtype=F64, requires_grad=True) for s in [(4, 3), (5, 3), (5,)])
    assert torch.autograd.gradcheck(HandLinear.apply, (x, W, b))


def test_numerical_gradient_agrees_with_the_chain_rule():
    # L = sum(c * tanh(x W^T + b)): nonlinear in W, so the finite differences have a Taylor error too.
    g = gen(4)
    x, W, b, c = (torch.randn(*shape, generator=g, dtype=F64) for shape in [(3, 4), (2, 4), (2,), (3, 2)])

    def loss(W_):
        return (c * tanh(linear_forward(x, W_, b))).sum()

    _, grad_W, _ = linear_backward(x, W, c * tanh_derivative(linear_forward(x, W, b)))
    torch.testing.assert_close(numerical_gradient(loss, W), grad_W, atol=1e-8, rtol=1e-8)
    assert not torch.allclose(numerical_gradient(loss, W, eps=1e-2), grad_W, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize(
    ("x_shape", "W_shape", "match"),
    [
        ((2, 3), (3, 4), "x has 3 features per row but W"),
        ((3,), (2, 3), r"x must be a batch of rows \(B, in_features\)"),
        ((2, 3), (3,), r"W must be a matrix \(out_features, in_features\)"),
    ],
)
def test_linear_shape_errors(x_shape, W_shape, match):
    x, W = torch.zeros(x_shape), torch.zeros(W_shape)
    with pytest.raises(ValueError, match=match):
        linear_forward(x, W)
    with pytest.raises(ValueError, match=match):
        linear_backward(x, W, torch.zeros(2, 3))


def test_linear_bias_and_grad_out_shape_errors():
    x, W = torch.zeros(2, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\), one bias per output"):
        linear_forward(x, W, torch.zeros(3))
    with pytest.raises(ValueError, match=r"grad_out must have the output's shape \(B, out_features\) = \(2, 4\)"):
        linear_backward(x, W, torch.zeros(4, 2))


# --------------------------------------------------------------------------- gradient descent
def test_sgd_step_exact_values_and_inputs_unchanged():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    grads = [torch.tensor([10.0, -20.0]), torch.tensor([[4.0]])]
    new = sgd_step(params, grads, lr=0.25)
    assert [p.tolist() for p in new] == [[-1.5, 7.0], [[-0.5]]]
    assert params[0].tolist() == [1.0, 2.0] and params[1].tolist() == [[0.5]]
    assert [p.tolist() for p in sgd_step(params, grads, lr=0.0)] == [[1.0, 2.0], [[0.5]]]


def test_sgd_step_equals_torch_optim_sgd():
    g = gen(5)
    params = [torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)]
    grads = [torch.randn_like(p) for p in params]
    ours = sgd_step(params, grads, lr=0.1)
    theirs = [p.clone().requires_grad_() for p in params]
    for p, gr in zip(theirs, grads):
        p.grad = gr.clone()
    torch.optim.SGD(theirs, lr=0.1).step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)


def test_sgd_step_errors():
    with pytest.raises(ValueError, match="got 2 parameters but 1 gradients"):
        sgd_step([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)], 0.1)
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(2,\) but its gradient \(3,\)"):
        sgd_step([torch.zeros(2)], [torch.zeros(3)], 0.1)


def test_gradient_descent_on_a_quadratic_converges_and_diverges():
    # f(w) = (w - 3)^2 has f'' = 2: gradient descent converges for lr < 1 and diverges for lr > 1.
    def run(lr, steps=50):
        w = [torch.tensor(0.0, dtype=F64)]
        for _ in range(steps):
            w = sgd_step(w, [2 * (w[0] - 3)], lr)
        return w[0].item()

    assert abs(run(0.1) - 3) < 1e-4
    assert run(0.5) == 3.0  # lr = 1 / f'': one step lands on the minimum
    assert abs(run(1.1) - 3) > 1e3


# --------------------------------------------------------------------------- the two-layer network
def test_two_moons_is_seeded_balanced_and_not_linearly_separable():
    x, y = two_moons(200, noise=0.1, generator=gen(0))
    x2, y2 = two_moons(200, noise=0.1, generator=gen(0))
    assert x.shape == (200, 2) and y.shape == (200,)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert y.sum().item() == 100
    # The best linear classifier (logistic regression trained long) stays well below 100%.
    W, b = torch.zeros(1, 2, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(linear_forward(x, W, b)[:, 0], y).backward()
        opt.step()
    accuracy = ((linear_forward(x, W, b)[:, 0] > 0).float() == y).float().mean().item()
    assert 0.75 < accuracy < 0.95


def test_binary_cross_entropy_and_gradient_equal_torch():
    g = gen(6)
    z = (torch.randn(50, 1, generator=g, dtype=F64) * 30).requires_grad_()  # large logits: stability
    y = (torch.rand(50, 1, generator=g) > 0.5).to(F64)
    theirs = F.binary_cross_entropy_with_logits(z, y)
    theirs.backward()
    torch.testing.assert_close(binary_cross_entropy(z.detach(), y), theirs.detach(), **EXACT)
    torch.testing.assert_close(binary_cross_entropy_backward(z.detach(), y), z.grad, **EXACT)
    with pytest.raises(ValueError, match="must have the same shape"):
        binary_cross_entropy(torch.zeros(3, 1), torch.zeros(3))


def test_mlp_backward_equals_autograd():
    g = gen(7)
    x = torch.randn(9, 2, generator=g, dtype=F64)
    y = (torch.rand(9, 1, generator=g) > 0.5).to(F64)
    params = init_mlp(2, 6, 1, generator=g, dtype=F64)
    params[1] = torch.randn(6, generator=g, dtype=F64)  # nonzero biases, some ReLUs off
    logits, cache = mlp_forward(x, params)
    ours = mlp_backward(params, cache, binary_cross_entropy_backward(logits, y))
    leaves = [p.clone().requires_grad_() for p in params]
    binary_cross_entropy(mlp_forward(x, leaves)[0], y).backward()
    for mine, leaf in zip(ours, leaves):
        torch.testing.assert_close(mine, leaf.grad, **EXACT)


def test_train_mlp_fits_two_moons():
    """Gradient descent with the hand-written backward drives the loss below 0.02 and fits the data."""
    x, y = two_moons(200, noise=0.1, generator=gen(0))
    params, losses = train_mlp(x, y, n_hidden=16, lr=0.5, steps=2000, generator=gen(1))
    assert losses[0] > 0.5 and losses[-1] < 0.02
    assert all(b <= a * 1.5 for a, b in zip(losses, losses[1:]))  # no blow-up along the way
    x_test, y_test = two_moons(1000, noise=0.1, generator=gen(2))
    accuracy = ((mlp_forward(x_test, params)[0][:, 0] > 0).float() == y_test).float().mean().item()
    assert accuracy > 0.97


# --------------------------------------------------------------------------- the recurrent network
def rnn_case(H=6, d=3, T=8, radius=0.9, scale=1.0, seed=0):
    g = gen(seed)
    W_hh = random_recurrent_weights(H, radius, g)
    W_xh = torch.randn(H, d, generator=g, dtype=F64) / math.sqrt(d)
    xs = scale * torch.randn(T, d, generator=g, dtype=F64)
    h0 = 0.5 * torch.randn(H, generator=g, dtype=F64)
    return W_hh, W_xh, xs, h0


def test_rnn_forward_equals_nn_rnn():
    W_hh, W_xh, xs, h0 = rnn_case()
    b = torch.randn(6, generator=gen(1), dtype=F64)
    rnn = torch.nn.RNN(3, 6, nonlinearity="tanh", dtype=F64)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(W_hh)
        rnn.weight_ih_l0.copy_(W_xh)
        rnn.bias_ih_l0.copy_(b)
        rnn.bias_hh_l0.zero_()
        theirs, _ = rnn(xs, h0[None])
    torch.testing.assert_close(rnn_forward(xs, h0, W_hh, W_xh, b), theirs, **EXACT)
    torch.testing.assert_close(rnn_cell(xs[0], h0, W_hh, W_xh, b), theirs[0], **EXACT)


def test_rnn_gradient_norms_worked_example():
    # One unit, W_hh = 0.5, no input, h0 = 0: every state is 0, tanh' = 1, so dL/dh_t = 0.5^(T - t).
    norms = rnn_gradient_norms(torch.tensor([[0.5]]), torch.zeros(1, 1), torch.zeros(3, 1), torch.zeros(1))
    assert norms == [0.25, 0.5, 1.0]


@pytest.mark.parametrize("seed", range(4))
def test_rnn_gradients_equal_autograd(seed):
    W_hh, W_xh, xs, h0 = rnn_case(H=5 + seed, T=3 + 5 * seed, seed=seed)
    W = W_hh.clone().requires_grad_()  # a leaf that requires grad puts every state on the graph
    h, states = h0, []
    for x_t in xs:
        h = rnn_cell(x_t, h, W, W_xh)
        h.retain_grad()  # keep dL/dh_t of this intermediate state
        states.append(h)
    states[-1].sum().backward()
    want = torch.stack([s.grad for s in states])  # (T, H)
    hs = rnn_forward(xs, h0, W_hh, W_xh)
    torch.testing.assert_close(hidden_state_gradients(hs, W_hh, torch.ones_like(hs[-1])), want, **EXACT)
    norms = torch.tensor(rnn_gradient_norms(W_hh, W_xh, xs, h0), dtype=F64)
    torch.testing.assert_close(norms, want.norm(dim=-1), **EXACT)


def test_random_recurrent_weights_has_the_spectral_radius_asked_for():
    for radius in [0.5, 1.0, 3.0]:
        W = random_recurrent_weights(16, radius, gen(0))
        assert W.shape == (16, 16) and W.dtype == F64
        assert spectral_radius(W) == pytest.approx(radius, rel=1e-12)


def per_step_factor(norms: list[float]) -> float:
    """The geometric mean of ||dL/dh_{t-1}|| / ||dL/dh_t|| over the sequence."""
    return (norms[0] / norms[-1]) ** (1 / (len(norms) - 1))


@pytest.mark.parametrize("radius", [0.5, 0.8, 0.9])
def test_gradients_vanish_geometrically_when_the_spectral_radius_is_below_one(radius):
    # From h0 = 0 with no input the states stay 0, tanh' = 1, and dL/dh_t = (W_hh^T)^(T-t) 1:
    # the norm shrinks by the spectral radius at every step, once the largest eigenvalue dominates.
    W_hh, W_xh, xs, _ = rnn_case(H=32, T=50, radius=radius, scale=0.0)
    norms = rnn_gradient_norms(W_hh, W_xh, xs, torch.zeros(32, dtype=F64))
    assert per_step_factor(norms[:30]) == pytest.approx(radius, rel=0.02)
    assert norms[0] / norms[-1] < 2 * radius**40
    # With inputs, tanh' < 1 somewhere, and the gradient vanishes faster still.
    W_hh, W_xh, xs, h0 = rnn_case(H=32, T=50, radius=radius, scale=1.0)
    assert per_step_factor(rnn_gradient_norms(W_hh, W_xh, xs, h0)) < radius


def test_gradients_explode_when_weights_are_large_unless_the_tanh_saturates():
    # Spectral radius 1.5 in the linear regime: the norm grows by about 1.5 per step back.
    W_hh, W_xh, xs, _ = rnn_case(H=32, T=50, radius=1.5, scale=0.0)
    norms = rnn_gradient_norms(W_hh, W_xh, xs, torch.zeros(32, dtype=F64))
    assert norms[0] / norms[-1] > 1e8
    assert per_step_factor(norms) == pytest.approx(1.5, rel=0.02)
    # Larger weights with unit-scale inputs: still exploding, though slower (the tanh saturates)...
    W_hh, W_xh, xs, h0 = rnn_case(H=32, T=50, radius=5.0, scale=1.0)
    factor = per_step_factor(rnn_gradient_norms(W_hh, W_xh, xs, h0))
    assert 1.1 < factor < 5.0
    # ...and with very large weights every unit saturates, tanh' ~ 0, and the gradient vanishes again.
    W_hh, W_xh, xs, h0 = rnn_case(H=32, T=50, radius=100.0, scale=1.0)
    assert per_step_factor(rnn_gradient_norms(W_hh, W_xh, xs, h0)) < 0.2


def test_rnn_shape_errors():
    W_hh, W_xh, xs, h0 = rnn_case(H=4, d=3, T=5)
    with pytest.raises(ValueError, match=r"W_hh must be a square matrix \(H, H\)"):
        rnn_gradient_norms(W_hh[:, :3], W_xh, xs, h0)
    with pytest.raises(ValueError, match=r"h0 must be one hidden state of shape \(4,\)"):
        rnn_gradient_norms(W_hh, W_xh, xs, h0[None])
    with pytest.raises(ValueError, match=r"W_xh must have shape \(H, d_in\) = \(4, 3\)"):
        rnn_gradient_norms(W_hh, W_xh.T, xs, h0)
    with pytest.raises(ValueError, match=r"xs must be a sequence of input vectors \(T, d_in\)"):
        rnn_gradient_norms(W_hh, W_xh, xs[None], h0)
