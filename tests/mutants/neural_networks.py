"""Planted bugs for the chapter 01 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the notebook's imports: math, torch).
"""

MUTANTS = {
    "linear_forward": {
        "zero_bias_in_float32": '''
def linear_forward(x, W, b=None):
    if b is None:
        b = torch.zeros(W.shape[0])  # no bias: add zeros
    return x @ W.T + b
''',
        "W_not_transposed": '''
def linear_forward(x, W, b=None):
    y = x @ W
    if b is not None:
        y = y + b
    return y
''',
        "one_column_per_example": '''
def linear_forward(x, W, b=None):
    y = W @ x.T
    if b is not None:
        y = y + b[:, None]
    return y
''',
        "bias_forgotten": '''
def linear_forward(x, W, b=None):
    return x @ W.T
''',
        "sigmoid_applied": '''
def linear_forward(x, W, b=None):
    y = x @ W.T
    if b is not None:
        y = y + b
    return torch.sigmoid(y)
''',
        "bias_summed": '''
def linear_forward(x, W, b=None):
    y = x @ W.T
    if b is not None:
        y = y + b.sum()
    return y
''',
    },
    "linear_backward": {
        "squeezes_the_gradients": '''
def linear_backward(x, W, grad_out):
    grad_x = (grad_out @ W).squeeze()
    grad_W = (grad_out.T @ x).squeeze()
    grad_b = grad_out.sum(dim=0)
    return grad_x, grad_W, grad_b
''',
        "grad_W_transposed": '''
def linear_backward(x, W, grad_out):
    grad_x = grad_out @ W
    grad_W = x.T @ grad_out
    grad_b = grad_out.sum(dim=0)
    return grad_x, grad_W, grad_b
''',
        "grad_b_not_summed": '''
def linear_backward(x, W, grad_out):
    grad_x = grad_out @ W
    grad_W = grad_out.T @ x
    grad_b = grad_out
    return grad_x, grad_W, grad_b
''',
        "averaged_over_batch": '''
def linear_backward(x, W, grad_out):
    B = x.shape[0]
    grad_x = grad_out @ W
    grad_W = grad_out.T @ x / B
    grad_b = grad_out.mean(dim=0)
    return grad_x, grad_W, grad_b
''',
        "grad_x_with_W_transposed": '''
def linear_backward(x, W, grad_out):
    grad_x = grad_out @ W.T
    grad_W = grad_out.T @ x
    grad_b = grad_out.sum(dim=0)
    return grad_x, grad_W, grad_b
''',
        "returns_in_the_wrong_order": '''
def linear_backward(x, W, grad_out):
    grad_x = grad_out @ W
    grad_W = grad_out.T @ x
    grad_b = grad_out.sum(dim=0)
    return grad_W, grad_b, grad_x
''',
        "uses_autograd": '''
def linear_backward(x, W, grad_out):
    x = x.clone().requires_grad_()
    W = W.clone().requires_grad_()
    b = torch.zeros(W.shape[0], dtype=W.dtype, requires_grad=True)
    (x @ W.T + b).backward(grad_out)
    return x.grad, W.grad, b.grad
''',
    },
    "sgd_step": {
        "returns_a_generator": '''
def sgd_step(params, grads, lr):
    return (p - lr * g for p, g in zip(params, grads))
''',
        "moves_uphill": '''
def sgd_step(params, grads, lr):
    return [p + lr * g for p, g in zip(params, grads)]
''',
        "forgets_the_learning_rate": '''
def sgd_step(params, grads, lr):
    return [p - g for p, g in zip(params, grads)]
''',
        "updates_in_place": '''
def sgd_step(params, grads, lr):
    for p, g in zip(params, grads):
        p -= lr * g
    return params
''',
        "return_inside_the_loop": '''
def sgd_step(params, grads, lr):
    new_params = []
    for p, g in zip(params, grads):
        new_params.append(p - lr * g)
        return new_params
''',
        "divides_by_lr": '''
def sgd_step(params, grads, lr):
    return [p - g / lr for p, g in zip(params, grads)]
''',
    },
    "rnn_gradient_norms": {
        "reversed_order": '''
def rnn_gradient_norms(W_hh, W_xh, xs, h0):
    h, states = h0, []
    for x_t in xs:
        h = torch.tanh(h @ W_hh.T + x_t @ W_xh.T)
        states.append(h)
    g = torch.ones_like(states[-1])
    norms = [g.norm().item()]
    for t in range(len(states) - 1, 0, -1):
        g = ((1 - states[t] ** 2) * g) @ W_hh
        norms.append(g.norm().item())
    return norms
''',
        "no_tanh_derivative": '''
def rnn_gradient_norms(W_hh, W_xh, xs, h0):
    h, states = h0, []
    for x_t in xs:
        h = torch.tanh(h @ W_hh.T + x_t @ W_xh.T)
        states.append(h)
    g = torch.ones_like(states[-1])
    norms = [g.norm().item()]
    for t in range(len(states) - 1, 0, -1):
        g = g @ W_hh
        norms.append(g.norm().item())
    return norms[::-1]
''',
        "derivative_of_tanh_of_h": '''
def rnn_gradient_norms(W_hh, W_xh, xs, h0):
    h, states = h0, []
    for x_t in xs:
        h = torch.tanh(h @ W_hh.T + x_t @ W_xh.T)
        states.append(h)
    g = torch.ones_like(states[-1])
    norms = [g.norm().item()]
    for t in range(len(states) - 1, 0, -1):
        g = ((1 - torch.tanh(states[t]) ** 2) * g) @ W_hh
        norms.append(g.norm().item())
    return norms[::-1]
''',
        "derivative_of_the_previous_step": '''
def rnn_gradient_norms(W_hh, W_xh, xs, h0):
    h, states = h0, [h0]
    for x_t in xs:
        h = torch.tanh(h @ W_hh.T + x_t @ W_xh.T)
        states.append(h)
    g = torch.ones_like(h)
    norms = [g.norm().item()]
    for t in range(len(states) - 1, 1, -1):
        g = ((1 - states[t - 1] ** 2) * g) @ W_hh
        norms.append(g.norm().item())
    return norms[::-1]
''',
        "W_hh_not_transposed": '''
def rnn_gradient_norms(W_hh, W_xh, xs, h0):
    h, states = h0, []
    for x_t in xs:
        h = torch.tanh(h @ W_hh.T + x_t @ W_xh.T)
        states.append(h)
    g = torch.ones_like(states[-1])
    norms = [g.norm().item()]
    for t in range(len(states) - 1, 0, -1):
        g = W_hh @ ((1 - states[t] ** 2) * g)
        norms.append(g.norm().item())
    return norms[::-1]
''',
        "includes_h0": '''
def rnn_gradient_norms(W_hh, W_xh, xs, h0):
    W = W_hh.clone().requires_grad_()
    h = h0.clone().requires_grad_()
    states = [h]
    for x_t in xs:
        h = torch.tanh(h @ W.T + x_t @ W_xh.T)
        h.retain_grad()
        states.append(h)
    states[-1].sum().backward()
    return [s.grad.norm().item() for s in states]
''',
    },
}
