"Tests for llm_lab.autograd: the Value engine against torch.autograd (hypothesis) and finite differences, errors, MLP, checkers."
import math, random

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from llm_lab.core import CheckFailed
from llm_lab.autograd import (EXPRESSION_OPS, MLP, SMOOTH_OPS, VALUE_OP_REFERENCES, Neuron, Program, Value, backward,
                              check_backward, check_value_op, describe_program, draw_graph, hinge_loss, make_moons,
                              numerical_grad, random_program, run_program, sgd_step, topological_order, to_torch,
                              torch_grads, torch_hinge_loss, value_grads)
from llm_lab.neurons import count_params


# --- property-based: random expression trees, Value vs torch float64 vs finite differences --------------------------

@st.composite
def programs(draw, ops=tuple(EXPRESSION_OPS), n_inputs=3, max_steps=10):
    "A random Program: each step applies an op to inputs or earlier results (so values get reused)."
    prog = Program(n_inputs=n_inputs)
    for step in range(draw(st.integers(1, max_steps))):
        name = draw(st.sampled_from(ops))
        args = tuple(draw(st.integers(0, n_inputs + step - 1)) for _ in range(EXPRESSION_OPS[name][0]))
        prog.append((name, args))
    return prog

inputs = st.lists(st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False), min_size=3, max_size=3)


def _finite(*xs, limit=1e8): return all(math.isfinite(x) and abs(x) < limit for x in xs)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(programs(), inputs)
def test_random_expressions_match_torch_autograd(prog, xs):
    try: got_value, got_grads = value_grads(prog, xs)
    except OverflowError: assume(False)
    want_value, want_grads = torch_grads(prog, xs)
    assume(_finite(want_value, *want_grads) and _finite(got_value, *got_grads))
    assert math.isclose(got_value, want_value, rel_tol=1e-9, abs_tol=1e-12), (prog, xs)
    for g, w in zip(got_grads, want_grads):
        assert math.isclose(g, w, rel_tol=1e-7, abs_tol=1e-9), (prog, xs, got_grads, want_grads)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(programs(ops=tuple(SMOOTH_OPS), max_steps=8), inputs)
def test_random_smooth_expressions_match_finite_differences(prog, xs):
    try: value, grads = value_grads(prog, xs)
    except OverflowError: assume(False)
    assume(_finite(value, *grads, limit=1e3))
    f = lambda *x: run_program(prog, [Value(v) for v in x]).data
    try: fd = numerical_grad(f, xs, h=1e-5)
    except OverflowError: assume(False)
    for g, n in zip(grads, fd):
        assert math.isclose(g, n, rel_tol=1e-4, abs_tol=1e-4), (prog, xs, grads, fd)


@pytest.mark.parametrize('name', list(EXPRESSION_OPS))
def test_each_op_matches_torch(name):
    arity = EXPRESSION_OPS[name][0]
    rng = random.Random(0)
    for _ in range(20):
        prog = Program([(name, tuple(range(arity)))], n_inputs=2)
        xs = [rng.uniform(-2, 2) for _ in range(2)]
        v, g = value_grads(prog, xs)
        tv, tg = torch_grads(prog, xs)
        assert math.isclose(v, tv, rel_tol=1e-12, abs_tol=1e-15)
        assert all(math.isclose(a, b, rel_tol=1e-10, abs_tol=1e-12) for a, b in zip(g, tg)), (name, xs, g, tg)


# --- the engine's semantics ------------------------------------------------------------------------------------------

def test_chain_rule_example():
    a, b, c = Value(2.0), Value(-3.0), Value(10.0)
    L = (a * b + c) ** 2
    L.backward()
    assert (L.data, a.grad, b.grad, c.grad) == (16.0, -24.0, 16.0, 8.0)


def test_gradient_accumulates_on_reuse():
    a = Value(3.0)
    (a * a + a).backward()  # d/da (a² + a) = 2a + 1
    assert a.grad == 7.0
    b = Value(-2.0)
    (b + b).backward()
    assert b.grad == 2.0


def test_reflected_ops_and_division():
    a = Value(4.0)
    for expr, val, grad in [(lambda: 2 + a, 6.0, 1.0), (lambda: 2 - a, -2.0, -1.0), (lambda: 2 * a, 8.0, 2.0),
                            (lambda: 2 / a, 0.5, -2 / 16), (lambda: a / 2, 2.0, 0.5), (lambda: -a, -4.0, -1.0),
                            (lambda: 2 ** a, 16.0, 16 * math.log(2)), (lambda: a ** 0.5, 2.0, 0.25)]:
        a.grad = 0.0
        out = expr()
        out.backward()
        assert math.isclose(out.data, val) and math.isclose(a.grad, grad), (out, a.grad, grad)
    assert sum([Value(1.0), Value(2.0), 3]).data == 6.0


def test_backward_twice_accumulates_on_leaves_like_torch():
    a, ta = Value(1.5), torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    out, tout = (a * a).tanh() * a, (ta * ta).tanh() * ta
    out.backward(); out.backward()
    tout.backward(retain_graph=True); tout.backward()
    assert math.isclose(a.grad, ta.grad.item(), rel_tol=1e-12)


def test_seed_gradient():
    a = Value(2.0)
    (a * 3).backward(grad=0.5)
    assert a.grad == 1.5


def test_deep_graph_has_no_recursion_limit():
    x = Value(0.5)
    y = x
    for _ in range(20_000): y = y * 0.9999 + x * 1e-4
    y.backward()
    tx = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    ty = tx
    for _ in range(20_000): ty = ty * 0.9999 + tx * 1e-4
    ty.backward()
    assert math.isclose(y.data, ty.item(), rel_tol=1e-12) and math.isclose(x.grad, tx.grad.item(), rel_tol=1e-9)


def test_topological_order():
    a, b = Value(1.0), Value(2.0)
    c = a * b
    d = c + a
    e = d * c
    order = topological_order(e)
    assert len(order) == len(set(order)) == 5 and order[-1] is e
    where = {v: i for i, v in enumerate(order)}
    for v in order:
        assert all(where[child] < where[v] for child in v._prev)


@pytest.mark.parametrize('k, x', [(0, 0.0), (0, 3.0), (0, -2.0), (0.5, 0.0), (1.5, 0.0), (1, 0.0), (2, 0.0), (3, -2.0), (-1, 2.0)])
def test_powers_at_zero_match_torch(k, x):
    "x**0 has gradient 0 everywhere (no ZeroDivisionError at 0); sqrt at 0 has slope inf, like torch."
    v, t = Value(x), torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = v ** k; out.backward(); (t ** k).backward()
    assert out.data == (t ** k).item() and v.grad == t.grad.item(), (k, x, v.grad, t.grad)

def test_division_by_zero_and_overflow_are_clear():
    with pytest.raises(ZeroDivisionError, match='a Value that is 0'): Value(1.0) / Value(0.0)
    with pytest.raises(ZeroDivisionError, match='a Value that is 0'): Value(0.0) ** -2
    with pytest.raises(OverflowError, match=r'exp\(1000\) is too large'): Value(1000.0).exp()
    with pytest.raises(OverflowError, match='too large for a float'): Value(10.0) ** 400

def test_value_accepts_numeric_scalars():
    assert Value(np.float32(1.5)).data == 1.5 and Value(torch.tensor(2.0)).data == 2.0
    assert Value(np.array([[3.0]])).data == 3.0 and Value(True).data == 1.0 and Value(7).data == 7.0


# --- bad use gets a clear error ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('bad, error, match', [
    (lambda: Value(1.0) + 'a', TypeError, 'expected a Value or a real number'),
    (lambda: Value(1.0) * [1, 2], TypeError, 'expected a Value or a real number'),
    (lambda: Value(1.0) - torch.ones(2), TypeError, 'expected a Value or a real number'),
    (lambda: Value(1.0) / None, TypeError, 'expected a Value or a real number'),
    (lambda: Value('3'), TypeError, 'one real number'),
    (lambda: Value(torch.ones(3)), ValueError, r'single number, got a Tensor of shape \(3,\)'),
    (lambda: Value(np.ones((2, 2))), ValueError, r'shape \(2, 2\)'),
    (lambda: Value(Value(1.0)), TypeError, 'use that Value directly'),
    (lambda: Value(2.0) ** Value(3.0), TypeError, 'exponent must be a constant'),
    (lambda: Value(-8.0) ** 0.5, ValueError, 'fractional power of a negative'),
    (lambda: (-2) ** Value(1.0), ValueError, 'positive base'),
    (lambda: Value(0.0).log(), ValueError, 'log needs a positive input'),
    (lambda: backward([Value(1.0), Value(2.0)]), ValueError, 'single scalar Value, got a list of 2'),
    (lambda: backward(1.0), TypeError, 'backward needs a Value'),
    (lambda: Value(1.0).backward(grad='x'), TypeError, 'seed gradient'),
    (lambda: Neuron(3)([1.0, 2.0]), ValueError, 'takes 3 inputs, got 2'),
    (lambda: make_moons(1), ValueError, 'n >= 2'),
])
def test_clear_errors(bad, error, match):
    with pytest.raises(error, match=match):
        bad()


# --- programs, drawing ------------------------------------------------------------------------------------------------

def test_programs_are_repeatable_and_readable():
    p1, p2 = random_program(random.Random(5), n_steps=6), random_program(random.Random(5), n_steps=6)
    assert p1 == p2 and len(p1) == 6
    assert repr(p1) == 'y = ' + describe_program(p1)
    assert describe_program(Program([('tanh(a)', (0,)), ('a * b', (3, 1))])) == '((tanh(x0)) * x1)'


def test_exported_plots_run(tmp_path):
    "Every exported plotting function of the module, once, with small inputs (a missing import fails here)."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from llm_lab.autograd import plot_decision_boundary, plot_neuron_graph
    ax = plot_neuron_graph(1.0, -1.0, 0.5, 2.0, 0.1)
    assert any('tanh' in t.get_text() for t in ax.texts) and 'o = tanh' in ax.get_title()
    X, y = make_moons(20, seed=0)
    ax = plot_decision_boundary(lambda P: P[:, 0] - 0.5, X, y, steps=8, title='t')
    assert ax.get_title() == 't' and ax.get_xlabel()
    plt.close('all')


def test_draw_graph():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    a, b = Value(2.0, label='a'), Value(-1.0, label='b')
    out = (a * b + a).tanh()
    out.backward()
    ax = draw_graph(out)
    texts = [t.get_text() for t in ax.texts if t.get_text()]  # (the arrows are empty annotations)
    n_values, n_ops = len(topological_order(out)), sum(1 for v in topological_order(out) if v._op)
    assert len(texts) == n_values + n_ops and 'tanh' in texts and any(t.startswith('a | data 2') for t in texts)
    plt.close('all')


# --- the MLP, its data and its torch twin -----------------------------------------------------------------------------

def test_make_moons_matches_scikit_learn():
    import sklearn.datasets as sklearn_datasets  # a dev requirement: missing it is a failure, not a skip
    for n in (10, 101):
        X, y = make_moons(n, noise=0.0)
        Xs, ys = sklearn_datasets.make_moons(n, noise=0.0, shuffle=False)
        np.testing.assert_allclose(X, Xs, atol=1e-12)
        np.testing.assert_array_equal(y, ys)
    X1, _ = make_moons(50, noise=0.1, seed=3)
    X2, _ = make_moons(50, noise=0.1, seed=3)
    assert np.array_equal(X1, X2) and X1.shape == (50, 2)


def test_mlp_matches_torch_forward_and_gradients():
    model = MLP(2, [5, 4, 1], seed=0)
    assert len(model.parameters()) == count_params([2, 5, 4, 1])
    X, y = make_moons(12, seed=1)
    loss, _ = hinge_loss(model, X, y)
    model.zero_grad(); loss.backward()
    net = to_torch(model)
    t_loss = torch_hinge_loss(net, torch.tensor(X), torch.tensor(y, dtype=torch.float64))
    t_loss.backward()
    assert math.isclose(loss.data, t_loss.item(), rel_tol=1e-12)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    for layer, lin in zip(model.layers, linears):
        torch.testing.assert_close(torch.tensor([[w.grad for w in n.w] for n in layer.neurons], dtype=torch.float64),
                                   lin.weight.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.tensor([n.b.grad for n in layer.neurons], dtype=torch.float64),
                                   lin.bias.grad, rtol=1e-10, atol=1e-12)
    outs = [model(list(x)).data for x in X]
    torch.testing.assert_close(torch.tensor(outs, dtype=torch.float64), net(torch.tensor(X)).squeeze(-1).detach())


def test_mlp_multiple_outputs_is_a_list():
    out = MLP(3, [4, 2], seed=0)([1.0, 2.0, 3.0])
    assert isinstance(out, list) and len(out) == 2
    with pytest.raises(ValueError, match='reduce them to one Value'):
        backward(out)


def test_training_reduces_the_loss():
    X, y = make_moons(40, noise=0.1, seed=0)
    model = MLP(2, [6, 6, 1], seed=0)
    losses = []
    for k in range(15):
        loss, _ = hinge_loss(model, X, y)
        sgd_step(model, loss, lr=0.5)
        losses.append(loss.data)
    assert losses[-1] < 0.8 * losses[0]


# --- the checkers accept the reference and reject plausible wrong answers ----------------------------------------------

def _softplus(a, overwrite=False, forget_grad=False):
    out = Value(math.log1p(math.exp(a.data)), (a,), 'softplus')
    def _backward(grad):
        local = 1 / (1 + math.exp(-a.data))
        if overwrite: a.grad = local * grad
        else: a.grad += local * (1.0 if forget_grad else grad)
    out._backward = _backward
    return out


def test_check_value_op_accepts_correct_ops():
    assert check_value_op(_softplus, 'softplus', seed=0).ok
    assert check_value_op(lambda a: (1 + a.exp()).log(), 'softplus', seed=0).ok  # built from primitives is fine too
    assert check_value_op(lambda a, b: a / b, 'div', seed=0).ok
    assert check_value_op(lambda a, b: (a.log() * b).exp(), 'pow', seed=0).ok
    assert check_value_op(lambda a: a ** 0.5, 'sqrt', seed=0).ok
    for name in ('tanh', 'sigmoid', 'relu', 'exp', 'log'):
        assert check_value_op(getattr(Value, name), name, seed=0).ok


@pytest.mark.parametrize('wrong, name', [
    (lambda a: _softplus(a, overwrite=True), 'softplus'),  # = instead of +=
    (lambda a: _softplus(a, forget_grad=True), 'softplus'),  # local derivative only, no chain rule
    (lambda a: a.sigmoid(), 'softplus'),  # the derivative instead of the function
    (lambda a, b: a * b ** -2, 'div'),
    (lambda a: a.relu() + a * 0.1, 'leaky_relu'),
    (lambda a: a ** 2, 'sqrt'),
])
def test_check_value_op_rejects_wrong_ops(wrong, name):
    report = check_value_op(wrong, name, seed=0, raise_on_fail=False)
    assert not report.ok and 'Value op' in str(report)


def test_check_value_op_errors():
    with pytest.raises(ValueError, match='expected one of'):
        check_value_op(lambda a: a, 'cosh')
    report = check_value_op(lambda a: a.data, 'exp', seed=0, raise_on_fail=False)  # returns a float, not a Value
    assert not report.ok and 'expected your op to return a Value' in report.failure
    assert set(VALUE_OP_REFERENCES) >= {'softplus', 'sin', 'div', 'pow'}


def test_check_backward_accepts_the_engine():
    assert check_backward(backward, seed=0).ok

    def my_backprop(root):
        order = topological_order(root)
        root.grad = 1.0
        for v in reversed(order): v._backward(v.grad)
    assert check_backward(my_backprop, seed=1).ok


def _not_reversed(root):
    root.grad = 1.0
    for v in topological_order(root): v._backward(v.grad)

def _no_seed(root):
    for v in reversed(topological_order(root)): v._backward(v.grad)

def _naive_recursion(root):  # visits a shared node once per path, sending its gradient more than once
    root.grad = 1.0
    def visit(v):
        v._backward(v.grad)
        for child in v._prev: visit(child)
    visit(root)


@pytest.mark.parametrize('wrong', [_not_reversed, _no_seed, _naive_recursion])
def test_check_backward_rejects_wrong(wrong):
    with pytest.raises(CheckFailed, match='backward'):
        check_backward(wrong, seed=0)
