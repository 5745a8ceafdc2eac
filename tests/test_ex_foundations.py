"""The exercise checkers of chapters 01-03 (neurons, autograd, optim): each rejects a table of named wrong
implementations (with its hint where it gives one), answers the stub with attempted=False without raising, and
accepts alternative correct implementations."""
import math

import pytest
import torch
import torch.nn.functional as F

from llm_lab.core import CheckFailed
from llm_lab import autograd as ag, neurons as nr, optim as op
from llm_lab.autograd import Value


def stub(*args): raise NotImplementedError  # what the learner starts from


# ------------------------------------------------------------------ chapter 01

def perceptron(X, y, epochs, lr, strict=True, bias=True, early_stop=True, per_example=True, sign=1):
    w, b, mistakes = torch.zeros(X.shape[1], dtype=X.dtype), 0.0, []
    for _ in range(epochs):
        wrong, dw, db = 0, torch.zeros_like(w), 0.0
        for xi, yi in zip(X, y.tolist()):
            z = float((w * xi).sum()) + b  # a different (but equivalent) way to write w · x
            err = sign * (yi - int(z > 0 if strict else z >= 0))
            if per_example: w, b = w + lr * err * xi, b + lr * err * bias
            else: dw, db = dw + lr * err * xi, db + lr * err * bias
            wrong += err != 0
        if not per_example: w, b = w + dw, b + db
        mistakes.append(wrong)
        if wrong == 0 and early_stop: break
    return w, torch.tensor(b), mistakes  # a 0-d tensor bias is as good as a float

def forward(params, x, relu_last=False, transpose=True):
    for i, (W, b) in enumerate(params):
        x = x @ (W.T if transpose else W.reshape(W.shape[1], W.shape[0])) + (0 if b is None else b)
        if i < len(params) - 1 or relu_last: x = torch.relu(x)
    return x

def mlp_step(params, x, y, lr, mask=True, divide_by='all', two=True, bias_grad='sum'):
    (W1, b1), (W2, b2) = params
    a = x @ W1.T + b1; h = torch.relu(a); out = h @ W2.T + b2
    n = {'all': out.numel(), 'batch': len(out), 'none': 1}[divide_by]
    d_out = (2 if two else 1) * (out - y) / n
    d_a = (d_out @ W2) * ((a > 0) if mask else 1)
    red = (lambda t: t.sum(0)) if bias_grad == 'sum' else (lambda t: t.mean(0))
    new = [W1 - lr * d_a.T @ x, b1 - lr * red(d_a), W2 - lr * d_out.T @ h, b2 - lr * red(d_out)]
    return ((out - y) ** 2).sum() / n, [tuple(new[:2]), tuple(new[2:])]

def mlp_step_autograd(params, x, y, lr):  # a correct alternative: autograd, returning lists and a float loss
    leaves = [t.clone().requires_grad_() for layer in params for t in layer]
    loss = ((torch.relu(x @ leaves[0].T + leaves[1]) @ leaves[2].T + leaves[3] - y) ** 2).mean()
    loss.backward()
    new = [(t - lr * t.grad).detach() for t in leaves]
    return loss.item(), [[new[0], new[1]], [new[2], new[3]]]

def d_gelu_no_product_rule(x): return 0.5 * (1 + torch.erf(x / math.sqrt(2)))
def d_gelu_tanh_form(x): return nr.d_gelu_tanh(x)

# ------------------------------------------------------------------ chapter 02

def exp_overwrites(a):
    e = math.exp(a.data); out = Value(e, (a,), 'exp')
    def _backward(grad): a.grad = e * grad  # = instead of +=
    out._backward = _backward; return out

def tanh_no_chain(a):
    t = math.tanh(a.data); out = Value(t, (a,), 'tanh')
    def _backward(grad): a.grad += 1 - t * t  # forgot * grad
    out._backward = _backward; return out

def log_wrong_derivative(a):
    out = Value(math.log(a.data), (a,), 'log')
    def _backward(grad): a.grad += math.log(a.data) * grad
    out._backward = _backward; return out

def exp_wrong_value(a):
    out = Value(math.exp(a.data) + 1, (a,), 'exp')
    def _backward(grad): a.grad += math.exp(a.data) * grad
    out._backward = _backward; return out

def exp_no_backward(a): return Value(math.exp(a.data), (a,), 'exp')  # forgot out._backward

def div_sign_error(a, b):
    out = Value(a.data / b.data, (a, b), '/')
    def _backward(grad): a.grad += grad / b.data; b.grad += a.data / b.data ** 2 * grad
    out._backward = _backward; return out

def div_composite(a, b): return a * b ** -1  # two nodes, but correct

def topo_duplicates(root):
    order = []
    def visit(v):
        for c in v._prev: visit(c)
        order.append(v)
    visit(root); return order

def topo_pre_order(root):
    return list(reversed(ag.topological_order(root)))

def topo_misses_leaves(root): return [v for v in ag.topological_order(root) if v._prev]

def topo_recursive(root):  # a correct alternative: recursive, children visited in reverse
    order, seen = [], set()
    def visit(v):
        if v in seen: return
        seen.add(v)
        for c in reversed(v._prev): visit(c)
        order.append(v)
    visit(root); return order

def backward_unreversed(root):
    root.grad = 1.0
    for v in ag.topological_order(root): v._backward(v.grad)

def backward_no_seed(root):
    for v in reversed(ag.topological_order(root)): v._backward(v.grad)

def backward_per_path(root):
    root.grad = 1.0
    def visit(v):
        v._backward(v.grad)
        for c in v._prev: visit(c)
    visit(root)

def backward_own_order(root):  # a correct alternative, Kahn's algorithm: process a node once all its users are done
    nodes = ag.topological_order(root)
    users = {v: 0 for v in nodes}
    for v in nodes:
        for c in v._prev: users[c] += 1
    root.grad, ready = 1.0, [root]
    while ready:
        v = ready.pop(); v._backward(v.grad)
        for c in v._prev:
            users[c] -= 1
            if users[c] == 0: ready.append(c)

# ------------------------------------------------------------------ chapter 03

def ce_naive(z, y): return -torch.log(torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)).gather(1, y[:, None]).mean()
def ce_sum(z, y): return F.cross_entropy(z, y, reduction='sum')
def ce_wrong_dim(z, y): return -(z - torch.logsumexp(z, 0, keepdim=True)).gather(1, y[:, None]).mean()
def ce_alternative(z, y): return -F.log_softmax(z.double(), -1)[torch.arange(len(y)), y].mean().float()

def sgd(ema=False, nesterov=True, decay=True, in_place=False):
    def step(p, g, state, hp):
        if decay: g = g + hp['weight_decay'] * p
        if hp['momentum']:
            mu = hp['momentum']
            state['b'] = (mu * state.get('b', torch.zeros_like(g)) + (1 - mu) * g if ema else
                          g.clone() if 'b' not in state else mu * state['b'] + g)
            g = g + mu * state['b'] if hp['nesterov'] and nesterov else state['b']
        if in_place: p.sub_(hp['lr'] * g); return None
        return p - hp['lr'] * g
    return step

def adam(decoupled, bias_correction=True, eps_inside=False, decay_after=False, in_place=False):
    def step(p, g, state, hp):
        if not state: state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
        state['t'] += 1
        lr, wd = hp['lr'], hp['weight_decay']
        q = p.clone()
        if decoupled and not decay_after: q = q * (1 - lr * wd)
        elif not decoupled: g = g + wd * q
        state['m'].mul_(hp['beta1']).add_(g, alpha=1 - hp['beta1'])
        state['v'].mul_(hp['beta2']).addcmul_(g, g, value=1 - hp['beta2'])
        m, v = state['m'], state['v']
        if bias_correction: m, v = m / (1 - hp['beta1'] ** state['t']), v / (1 - hp['beta2'] ** state['t'])
        q = q - lr * m / ((v + hp['eps']).sqrt() if eps_inside else v.sqrt() + hp['eps'])
        if decoupled and decay_after: q = q * (1 - lr * wd)
        if in_place: p.copy_(q); return None
        return q
    return step

def torch_adamw_step(p, g, state, hp):  # a correct alternative: let torch do it, keeping the optimizer in `state`
    if 'opt' not in state:
        state['p'] = p.clone().requires_grad_()
        state['opt'] = torch.optim.AdamW([state['p']], lr=hp['lr'], betas=(hp['beta1'], hp['beta2']), eps=hp['eps'],
                                         weight_decay=hp['weight_decay'])
    state['p'].grad = g; state['opt'].step()
    return state['p'].detach().clone()

def sched(plus_one=True, floor=True, clamp=True, warmup=True):
    def lr(s, max_lr, w, total, min_lr):
        w = w if warmup else 0
        if s < w: return max_lr * (s + plus_one) / w
        p = (s - w) / max(1, total - w)
        p = min(p, 1.0) if clamp else p
        lo = min_lr if floor else 0.0
        return lo + 0.5 * (max_lr - lo) * (1 + math.cos(math.pi * p))
    return lr

def sched_linear_space(s, max_lr, w, total, min_lr):  # a correct alternative written differently
    if s >= total: return min_lr
    if s < w: return max_lr * (s + 1) / w
    return min_lr + (max_lr - min_lr) * math.cos(math.pi / 2 * (s - w) / (total - w)) ** 2

# ------------------------------------------------------------------ the tables

CHECKERS = {  # name -> (checker(fn, **kw), the reference solution)
    'derivative': (lambda f, **kw: nr.check_derivative(f, 'gelu', **kw), nr.d_gelu),
    'perceptron': (nr.check_perceptron, nr.train_perceptron),
    'mlp_forward': (nr.check_mlp_forward, nr.mlp_forward),
    'mlp_step': (nr.check_mlp_step, mlp_step),
    'exp': (lambda f, **kw: ag.check_value_op(f, 'exp', **kw), Value.exp),
    'tanh': (lambda f, **kw: ag.check_value_op(f, 'tanh', **kw), Value.tanh),
    'log': (lambda f, **kw: ag.check_value_op(f, 'log', **kw), Value.log),
    'div': (lambda f, **kw: ag.check_value_op(f, 'div', **kw), lambda a, b: a / b),
    'topological_order': (ag.check_topological_order, ag.topological_order),
    'backward': (ag.check_backward, ag.backward),
    'cross_entropy': (op.check_cross_entropy, lambda z, y: op.cross_entropy(z, y)),
    'sgd': (op.check_sgd_step, sgd()),
    'adam': (op.check_adam_step, adam(False)),
    'adamw': (op.check_adamw_step, adam(True)),
    'schedule': (op.check_schedule, op.lr_warmup_cosine),
}

WRONG = [  # (checker, name of the mistake, wrong implementation, text the hint must contain or None)
    ('derivative', 'no product rule', d_gelu_no_product_rule, 'product rule'),
    ('derivative', 'tanh approximation', d_gelu_tanh_form, None),
    ('perceptron', '>= instead of >', lambda *a: perceptron(*a, strict=False), 'strictly'),
    ('perceptron', 'bias never learns', lambda *a: perceptron(*a, bias=False), 'bias learns'),
    ('perceptron', 'no early stop', lambda *a: perceptron(*a, early_stop=False), 'first epoch without'),
    ('perceptron', 'batch update', lambda *a: perceptron(*a, per_example=False), 'after every example'),
    ('perceptron', 'sign flipped', lambda *a: perceptron(*a, sign=-1), None),
    ('mlp_forward', 'relu after the last layer', lambda p, x: forward(p, x, relu_last=True), 'last layer'),
    ('mlp_forward', 'weights not transposed', lambda p, x: forward(p, x, transpose=False), None),
    ('mlp_step', 'relu mask missing', lambda *a: mlp_step(*a, mask=False), 'mask'),
    ('mlp_step', 'summed squared error', lambda *a: mlp_step(*a, divide_by='none'), 'summed'),
    ('mlp_step', 'mean over the batch only', lambda *a: mlp_step(*a, divide_by='batch'), 'N·n_out'),
    ('mlp_step', 'factor 2 missing', lambda *a: mlp_step(*a, two=False), 'factor 2'),
    ('mlp_step', 'bias gradient averaged', lambda *a: mlp_step(*a, bias_grad='mean'), 'shape and transpose'),
    ('exp', '= instead of +=', exp_overwrites, 'overwritten'),
    ('exp', 'wrong value', exp_wrong_value, 'value (item 0)'),
    ('exp', 'no backward set', exp_no_backward, 'local derivative'),
    ('tanh', 'chain rule factor missing', tanh_no_chain, "chain rule"),
    ('log', 'wrong local derivative', log_wrong_derivative, 'local derivative'),
    ('div', 'sign error in d/db', div_sign_error, 'local derivative'),
    ('topological_order', 'duplicates shared nodes', topo_duplicates, 'seen'),
    ('topological_order', 'root first', topo_pre_order, 'post-order'),
    ('topological_order', 'leaves missing', topo_misses_leaves, 'missing'),
    ('backward', 'order not reversed', backward_unreversed, 'reversed'),
    ('backward', 'no seed gradient', backward_no_seed, 'root.grad = 1'),
    ('backward', 'once per path', backward_per_path, 'once per path'),
    ('cross_entropy', 'no log-sum-exp', ce_naive, 'log-sum-exp'),
    ('cross_entropy', 'sum, not mean', ce_sum, 'mean'),
    ('cross_entropy', 'softmax over the batch', ce_wrong_dim, 'wrong dimension'),
    ('sgd', 'EMA momentum', sgd(ema=True), '1 − μ'),
    ('sgd', 'ignores Nesterov', sgd(nesterov=False), 'nesterov'),
    ('sgd', 'no weight decay', sgd(decay=False), 'weight_decay'),
    ('adam', 'no bias correction', adam(False, bias_correction=False), 'bias correction'),
    ('adam', 'eps inside the square root', adam(False, eps_inside=True), 'eps goes outside'),
    ('adam', 'decoupled decay (AdamW)', adam(True), 'AdamW'),
    ('adamw', 'coupled weight decay', adam(False), 'coupled weight decay'),
    ('adamw', 'no bias correction', adam(True, bias_correction=False), 'bias correction'),
    ('adamw', 'decay after the update', adam(True, decay_after=True), 'old weight'),
    ('schedule', 'warmup off by one', sched(plus_one=False), 'off by one'),
    ('schedule', 'decays to 0, not min_lr', sched(floor=False), 'min_lr'),
    ('schedule', 'not clamped after total_steps', sched(clamp=False), 'clamp'),
    ('schedule', 'no warmup', sched(warmup=False), 'no warmup'),
]

@pytest.mark.parametrize('checker, what, fn, hint', WRONG, ids=[f'{c}: {w}' for c, w, _, _ in WRONG])
def test_wrong_implementations_are_rejected_with_their_hint(checker, what, fn, hint):
    check = CHECKERS[checker][0]
    with pytest.raises(CheckFailed) as e: check(fn, seed=0)
    assert 'trial' in str(e.value)
    if hint is not None: assert 'hint:' in str(e.value) and hint in str(e.value), str(e.value)
    report = check(fn, seed=1, raise_on_fail=False)
    assert report.attempted and not report.ok

@pytest.mark.parametrize('checker', list(CHECKERS))
def test_stub_is_not_attempted_and_does_not_raise(checker, capsys):
    report = CHECKERS[checker][0](stub, seed=0)
    assert report.attempted is False and not report.ok and 'not written yet' in capsys.readouterr().out

ALTERNATIVES = [  # correct implementations written differently from the reference (layouts, dtypes, in place, ties)
    ('derivative', lambda x: torch.special.ndtr(x) + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    ('perceptron', perceptron),
    ('mlp_forward', lambda params, x: nr.to_sequential(params)(x).detach() if all(b is not None for _, b in params) else nr.mlp_forward(params, x)),
    ('mlp_step', mlp_step_autograd),
    ('exp', lambda a: 2.718281828459045 ** a),
    ('tanh', lambda a: 2 * (2 * a).sigmoid() - 1),
    ('log', lambda a: a.log()),
    ('div', div_composite),
    ('topological_order', topo_recursive),
    ('backward', backward_own_order),
    ('cross_entropy', ce_alternative),
    ('sgd', sgd(in_place=True)),
    ('adam', adam(False, in_place=True)),
    ('adamw', torch_adamw_step),
    ('schedule', sched_linear_space),
]

@pytest.mark.parametrize('checker, fn', ALTERNATIVES, ids=[a[0] for a in ALTERNATIVES])
def test_alternative_correct_implementations_pass(checker, fn):
    for seed in (0, 1):
        assert CHECKERS[checker][0](fn, seed=seed).ok

@pytest.mark.parametrize('checker', list(CHECKERS))
def test_reference_passes_on_fresh_inputs(checker):
    check, reference = CHECKERS[checker]
    assert check(reference).ok  # no seed: fresh random inputs, as the learner gets them

def test_names_are_taken_from_the_function():
    def my_exp(a): return a.exp()
    def my_d_sigmoid(x): return nr.d_sigmoid(x)
    def my_silu(x): return nr.silu(x)
    assert ag.check_value_op(my_exp, seed=0).name == 'Value op exp'
    assert nr.check_derivative(my_d_sigmoid, seed=0).name == 'derivative of sigmoid'
    assert nr.check_activation(my_silu, seed=0).ok
    with pytest.raises(ValueError, match='pass name='): ag.check_value_op(lambda a: a)
    with pytest.raises(ValueError, match='pass name='): nr.check_activation(lambda x: x)
