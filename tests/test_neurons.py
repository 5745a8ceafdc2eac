"Tests for llm_lab.neurons: activations and derivatives vs torch, perceptron, MLP, parameter counts, checkers."
import math

import pytest
import torch
import torch.nn.functional as F

from llm_lab.core import CheckFailed
from llm_lab.neurons import (ACTIVATIONS, check_activation, check_count_params, check_derivative, check_mlp_forward,
                             count_params, init_mlp, make_blobs_2d, mlp_forward, neuron, reference_derivative,
                             to_sequential, train_perceptron)


@pytest.mark.parametrize('name', list(ACTIVATIONS))
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_activation_matches_torch(name, dtype):
    f, _, ref = ACTIVATIONS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(5000, generator=g, dtype=dtype) * 6,
                   torch.tensor([-1e4, -700.0, -100.0, -1e-8, 1e-8, 100.0, 700.0, 1e4], dtype=dtype)])
    got = f(x)
    assert got.dtype == dtype and got.shape == x.shape and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref(x), atol=1e-6 if dtype == torch.float32 else 1e-12, rtol=1e-5)


@pytest.mark.parametrize('name', list(ACTIVATIONS))
def test_derivative_matches_autograd(name):
    _, df, _ = ACTIVATIONS[name]
    x = torch.cat([torch.randn(5000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 6,
                   torch.tensor([-100.0, -30.0, 30.0, 100.0], dtype=torch.float64)])
    torch.testing.assert_close(df(x), reference_derivative(name, x), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize('name', [n for n in ACTIVATIONS if n not in ('step', 'relu')])
def test_derivative_matches_finite_differences(name):
    f, df, _ = ACTIVATIONS[name]
    x = torch.linspace(-5, 5, 201, dtype=torch.float64)
    h = 1e-6
    torch.testing.assert_close(df(x), (f(x + h) - f(x - h)) / (2 * h), atol=1e-7, rtol=1e-6)


def test_activation_keeps_shape():
    x = torch.randn(2, 3, 4)
    for name, (f, df, _) in ACTIVATIONS.items():
        assert f(x).shape == x.shape and df(x).shape == x.shape, name


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match='expected one of'):
        check_activation(torch.sigmoid, 'swishy')


def test_neuron_and_its_errors():
    x, w = torch.randn(7, 3), torch.randn(3)
    torch.testing.assert_close(neuron(x, w, 0.5, torch.tanh), torch.tanh(x @ w + 0.5))
    with pytest.raises(ValueError, match=r'w of shape \(n,\)'):
        neuron(x, torch.randn(4))
    with pytest.raises(ValueError, match=r'bias b must be a single number, got a tensor of shape \(3,\)'):
        neuron(torch.randn(3, 3), w, torch.zeros(3))  # would broadcast silently
    torch.testing.assert_close(neuron(x, w, torch.tensor(0.5)), x @ w + 0.5)


def test_blobs():
    X, y = make_blobs_2d(50, seed=3)
    assert X.shape == (50, 2) and X.dtype == torch.float32 and y.shape == (50,) and set(y.tolist()) == {0, 1}
    X2, _ = make_blobs_2d(50, seed=3)
    assert torch.equal(X, X2)


def test_perceptron_converges_on_separable_data():
    X, y = make_blobs_2d(200, sep=3.0, noise=0.5, seed=4)
    X = X + torch.tensor([1.0, -2.0])
    w, b, mistakes = train_perceptron(X, y, epochs=100)
    assert mistakes[-1] == 0
    assert torch.equal((neuron(X, w, b) > 0).long(), y)


def test_perceptron_never_converges_on_xor():
    X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    _, _, mistakes = train_perceptron(X, torch.tensor([0, 1, 1, 0]), epochs=50)
    assert len(mistakes) == 50 and min(mistakes) > 0


def test_perceptron_bad_labels():
    with pytest.raises(ValueError, match='labels must be 0 or 1'):
        train_perceptron(torch.randn(4, 2), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match=r'X \(n, d\) and y \(n,\)'):
        train_perceptron(torch.randn(4, 2), torch.tensor([0, 1]))


@pytest.mark.parametrize('sizes', [[2, 1], [3, 8, 2], [5, 16, 16, 16, 4]])
@pytest.mark.parametrize('bias', [True, False])
def test_mlp_matches_nn_sequential(sizes, bias):
    params = init_mlp(sizes, bias=bias, generator=torch.Generator().manual_seed(0))
    x = torch.randn(11, sizes[0])
    torch.testing.assert_close(mlp_forward(params, x), to_sequential(params)(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mlp_forward(params, x, act=torch.tanh),
                               to_sequential(params, torch.nn.Tanh())(x), atol=1e-6, rtol=1e-5)
    assert count_params(sizes, bias) == sum(p.numel() for p in to_sequential(params).parameters())


def test_init_mlp_matches_nn_linear_scale():
    W, b = init_mlp([400, 300])[0]
    bound = 1 / math.sqrt(400)
    assert W.shape == (300, 400) and b.shape == (300,)
    assert W.abs().max() <= bound and W.abs().max() > 0.95 * bound
    assert abs(W.std().item() - bound / math.sqrt(3)) < 0.02 * bound


def test_mlp_errors():
    with pytest.raises(ValueError, match='at least 2 positive ints'):
        init_mlp([3])
    with pytest.raises(ValueError, match='at least 2 positive ints'):
        count_params([3, 0, 2])
    with pytest.raises(ValueError, match='layer 0 expects inputs with 3 features'):
        mlp_forward(init_mlp([3, 2]), torch.randn(4, 5))


def test_count_params_known_values():
    assert count_params([2, 16, 16, 1]) == 337  # micrograd's demo MLP
    assert count_params([768, 3072, 768]) == 768 * 3072 * 2 + 3072 + 768  # GPT-2 small's feed-forward block
    assert count_params([768, 3072, 768], bias=False) == 768 * 3072 * 2


# --- the checkers accept the reference and reject plausible wrong answers ------------------------------------------

@pytest.mark.parametrize('name', list(ACTIVATIONS))
def test_check_activation_accepts_reference(name):
    assert check_activation(ACTIVATIONS[name][0], name, seed=0).ok
    assert check_derivative(ACTIVATIONS[name][1], name, seed=0).ok


@pytest.mark.parametrize('name, wrong', [
    ('tanh', lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x))),  # nan for |x| > 88 in float32
    ('sigmoid', lambda x: torch.exp(-x) / (1 + torch.exp(-x))),  # that is σ(-x)
    ('step', lambda x: torch.sign(x)),  # -1 for negative inputs
    ('gelu', lambda x: x * torch.sigmoid(1.702 * x)),  # a different approximation, off by up to 0.02
    ('gelu_tanh', lambda x: F.gelu(x)),  # exact instead of the tanh approximation
    ('silu', lambda x: torch.sigmoid(x)),  # forgot the factor x
    ('relu', lambda x: torch.clamp(x, min=0, max=6)),  # relu6
])
def test_check_activation_rejects_wrong(name, wrong):
    with pytest.raises(CheckFailed, match=f'activation {name}'):
        check_activation(wrong, name, seed=0)


@pytest.mark.parametrize('name, wrong', [
    ('gelu', lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2)))),  # forgot x φ(x)
    ('sigmoid', lambda x: torch.sigmoid(x) * (1 + torch.sigmoid(x))),
    ('tanh', lambda x: 1 - x.tanh()),
    ('silu', lambda x: torch.sigmoid(x)),
    ('relu', lambda x: torch.ones_like(x)),
])
def test_check_derivative_rejects_wrong(name, wrong):
    report = check_derivative(wrong, name, seed=0, raise_on_fail=False)
    assert not report.ok and 'differ' in report.failure


def test_check_count_params():
    assert check_count_params(count_params, seed=0).ok
    with pytest.raises(CheckFailed):  # ignores the bias flag
        check_count_params(lambda sizes, bias=True: sum(a * b + b for a, b in zip(sizes, sizes[1:])), seed=0)
    with pytest.raises(CheckFailed):  # counts biases of the input layer too
        check_count_params(lambda sizes, bias=True: sum(a * b for a, b in zip(sizes, sizes[1:])) + bias * sum(sizes), seed=0)


def test_check_mlp_forward():
    assert check_mlp_forward(mlp_forward, seed=0).ok

    def relu_on_last_layer_too(params, x):
        for W, b in params: x = torch.relu(x @ W.T + (0 if b is None else b))
        return x

    def untransposed(params, x):
        for i, (W, b) in enumerate(params):
            x = x @ W.reshape(W.shape[1], W.shape[0]) + (0 if b is None else b)
            if i < len(params) - 1: x = torch.relu(x)
        return x

    for wrong in (relu_on_last_layer_too, untransposed):
        report = check_mlp_forward(wrong, seed=0, raise_on_fail=False)
        assert not report.ok, wrong.__name__


def test_plots_have_labelled_axes():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from llm_lab.neurons import plot_activations, plot_neuron
    ax = plot_neuron(1.0, 2.0, -0.5)
    assert ax.get_xlabel() and ax.get_ylabel() and 'accuracy' in ax.get_title()
    fig = plot_activations(['relu', 'gelu_tanh'])
    assert all(a.get_xlabel() and a.get_ylabel() for a in fig.axes)
    with pytest.raises(ValueError, match=r'X \(n, 2\) and labels y \(n,\)'):
        plot_neuron(1.0, 1.0, 0.0, X=torch.randn(5, 3), y=torch.zeros(5))
    plt.close('all')
