"""Solutions to the exercises of chapter 01 (Neurons), nbs/1_foundations/01_neurons.ipynb.

Each function has the name of the stub it solves; `CHECKS` maps it to its checker in `llm_lab.neurons`.
Try the exercise before reading on."""
import math

import torch

CHECKS = {
    'my_d_gelu': 'llm_lab.neurons:check_derivative',
    'my_train_perceptron': 'llm_lab.neurons:check_perceptron',
    'my_mlp_forward': 'llm_lab.neurons:check_mlp_forward',
    'my_mlp_step': 'llm_lab.neurons:check_mlp_step',
}


def my_d_gelu(x: torch.Tensor) -> torch.Tensor:
    "GELU'(x) = Φ(x) + x φ(x): the product rule on x · Φ(x)."
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))  # Φ(x), the normal CDF
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # φ(x) = Φ'(x), the normal density
    return cdf + x * pdf


def my_train_perceptron(X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float):
    "Rosenblatt's rule, one example at a time, from zero weights; stops after an epoch without mistakes."
    w, b, mistakes = torch.zeros(X.shape[1], dtype=X.dtype), 0.0, []
    for _ in range(epochs):
        wrong = 0
        for xi, yi in zip(X, y.tolist()):
            y_hat = 1 if float(xi @ w) + b > 0 else 0  # strictly positive fires
            err = yi - y_hat  # -1, 0 or +1: a correct answer changes nothing
            w = w + lr * err * xi  # turn w towards a missed positive, away from a false positive
            b = b + lr * err  # the bias is a weight whose input is always 1
            wrong += err != 0
        mistakes.append(wrong)
        if wrong == 0: break  # converged: every example is on its side
    return w, b, mistakes


def my_mlp_forward(params: list, x: torch.Tensor) -> torch.Tensor:
    "x Wᵀ + b for each layer, ReLU between layers, no activation after the last."
    for i, (W, b) in enumerate(params):
        x = x @ W.T  # (batch, out)
        if b is not None: x = x + b
        if i < len(params) - 1: x = torch.relu(x)
    return x


def my_mlp_step(params: list, x: torch.Tensor, y: torch.Tensor, lr: float):
    "One SGD step of a 2-layer ReLU MLP on the mean squared error, with every gradient by the chain rule."
    (W1, b1), (W2, b2) = params
    # forward, keeping what backward needs
    a = x @ W1.T + b1  # (N, H) pre-activations
    h = torch.relu(a)  # (N, H)
    out = h @ W2.T + b2  # (N, O)
    loss = ((out - y) ** 2).mean()
    # backward: each gradient has the shape of the tensor it belongs to
    d_out = 2 * (out - y) / out.numel()  # (N, O) dL/d out
    d_W2, d_b2 = d_out.T @ h, d_out.sum(0)  # (O, H), (O,)
    d_h = d_out @ W2  # (N, H)
    d_a = d_h * (a > 0)  # the ReLU lets gradient through only where it was active
    d_W1, d_b1 = d_a.T @ x, d_a.sum(0)  # (H, in), (H,)
    return loss, [(W1 - lr * d_W1, b1 - lr * d_b1), (W2 - lr * d_W2, b2 - lr * d_b2)]
