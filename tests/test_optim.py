"Tests for llm_lab.optim: losses, optimizers, schedules, clipping, init, regularisation and the chapter's checkers."
import copy, math

import matplotlib
matplotlib.use('Agg')
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_lab.core import CheckFailed
from llm_lab.optim import (
    SGD, RMSprop, Adam, AdamW, Dropout, EarlyStopping, OPTIMIZERS, activation_stats, check_adam_step,
    check_adamw_step, check_cross_entropy, check_schedule, check_sgd_step, clip_grad_norm_, cross_entropy, dropout,
    fit, init_std, load_optimizer, log_softmax, logsumexp, lr_lambda, softmax, lr_linear, lr_step, lr_warmup_cosine,
    make_mlp, make_regression_task, mse_loss, optimizer_parity, optimizer_path, plot_optimizer_paths, rosenbrock,
    save_optimizer)

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "These tests use tiny tensors: with test workers sharing a few cores, a second intra-op thread only adds waiting."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---------------------------------------------------------------- losses

def test_mse_matches_torch():
    a, b = torch.randn(4, 5, 6), torch.randn(4, 5, 6)
    for red in ('mean', 'sum', 'none'):
        torch.testing.assert_close(mse_loss(a, b, red), F.mse_loss(a, b, reduction=red))
    with pytest.raises(ValueError, match='shape'): mse_loss(a, b[0])
    with pytest.raises(ValueError, match='reduction'): mse_loss(a, b, 'avg')

def test_logsumexp_is_stable():
    x = torch.randn(6, 9, dtype=torch.float32) * 1000
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, -1))
    torch.testing.assert_close(logsumexp(x, 0), torch.logsumexp(x, 0))
    torch.testing.assert_close(log_softmax(x), F.log_softmax(x, -1))
    row = torch.tensor([[-math.inf, -math.inf], [0.0, -math.inf]])
    torch.testing.assert_close(logsumexp(row), torch.logsumexp(row, -1))

@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('dim', [0, 1, -1])
def test_softmax_is_stable_and_keeps_dtype(dtype, dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, 7, generator=g, dtype=torch.float64) * 1e4
    x[0, 0] = torch.tensor([1e30, -1e30, 0, 0, 0, 0, 0])  # absurd logits
    x[1, :, 2] = -torch.arange(6.0) * 1e5
    x = x.to(dtype)
    p = softmax(x, dim)
    assert p.dtype == dtype and torch.isfinite(p).all()
    torch.testing.assert_close(p, torch.softmax(x, dim), atol=1e-12 if dtype == torch.float64 else 1e-6, rtol=0)
    torch.testing.assert_close(p.sum(dim), torch.ones_like(p.sum(dim)))
    naive = x.exp() / x.exp().sum(dim, keepdim=True)
    assert not torch.isfinite(naive).all()  # the inputs do overflow a literal softmax

def test_softmax_half_and_errors():
    x = torch.randn(4, 9) * 20
    for dt in (torch.float16, torch.bfloat16):
        p = softmax(x.to(dt))
        assert p.dtype == dt
        torch.testing.assert_close(p.float(), torch.softmax(x.to(dt).float(), -1), atol=2e-3, rtol=1e-2)
    for fn in (softmax, logsumexp, log_softmax):
        with pytest.raises(TypeError, match='floating-point tensor'): fn(torch.arange(5))
        with pytest.raises(TypeError, match='floating-point tensor'): fn([1.0, 2.0])

def test_random_logits_give_log_v_plus_half():
    "Equal logits give exactly log V; N(0, 1) logits give about log V + 1/2 (the chapter's claim)."
    g = torch.Generator().manual_seed(0)
    V = 50
    targets = torch.randint(0, V, (20000,), generator=g)
    assert abs(cross_entropy(torch.zeros(20000, V), targets).item() - math.log(V)) < 1e-5
    loss = cross_entropy(torch.randn(20000, V, generator=g), targets).item()
    assert abs(loss - (math.log(V) + 0.5)) < 0.04 and abs(loss - math.log(V)) > 0.4

@pytest.mark.parametrize('shape', [(7, 5), (3, 4, 11), (1, 2)])
@pytest.mark.parametrize('label_smoothing', [0.0, 0.2])
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_cross_entropy_matches_torch(shape, label_smoothing, reduction):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(*shape, generator=g) * 50).requires_grad_()
    targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
    targets.view(-1)[::3] = -100
    targets.view(-1)[-1] = 0  # keep at least one real target
    ours = cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction=reduction)
    ref_logits = logits.detach().clone().requires_grad_()
    C = shape[-1]
    theirs = F.cross_entropy(ref_logits.reshape(-1, C), targets.reshape(-1), label_smoothing=label_smoothing,
                             reduction=reduction)
    if reduction == 'none': theirs = theirs.view(shape[:-1])
    torch.testing.assert_close(ours, theirs)
    ours.sum().backward(); theirs.sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)

def test_cross_entropy_custom_ignore_index_and_half_precision():
    logits, targets = torch.randn(10, 4), torch.tensor([0, 1, 2, 3, 7, 7, 1, 2, 3, 0])
    torch.testing.assert_close(cross_entropy(logits, targets, ignore_index=7), F.cross_entropy(logits, targets, ignore_index=7))
    out = cross_entropy(logits.bfloat16(), targets, ignore_index=7)
    assert out.dtype == torch.float32 and abs(out.item() - F.cross_entropy(logits, targets, ignore_index=7).item()) < 0.05

def test_cross_entropy_errors():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r'targets of shape \(4,\)'): cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match='integer'): cross_entropy(logits, torch.zeros(4))
    with pytest.raises(TypeError, match='float'): cross_entropy(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match='label_smoothing'): cross_entropy(logits, torch.zeros(4, dtype=torch.long), label_smoothing=2.0)
    with pytest.raises(ValueError, match=r'\[0, 3\).*found 5'): cross_entropy(logits, torch.tensor([0, 1, 5, -100]))
    with pytest.raises(ValueError, match=r'\[0, 3\).*found -1'): cross_entropy(logits, torch.tensor([0, -1, 2, 1]))
    with pytest.raises(TypeError, match='integer'): cross_entropy(logits, torch.tensor([True, False, True, True]))

# ---------------------------------------------------------------- optimizers: parity with torch.optim

CASES = [  # (ours, torch's, hyperparameters)
    (SGD, torch.optim.SGD, dict(lr=0.1)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.5, weight_decay=0.05)),
    (SGD, torch.optim.SGD, dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (RMSprop, torch.optim.RMSprop, dict(lr=1e-2)),
    (RMSprop, torch.optim.RMSprop, dict(lr=3e-3, alpha=0.9, eps=1e-6, weight_decay=0.05)),
    (RMSprop, torch.optim.RMSprop, dict(lr=1e-3, momentum=0.9)),
    (RMSprop, torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True, weight_decay=0.01)),
    (Adam, torch.optim.Adam, dict(lr=1e-3)),
    (Adam, torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6)),
    (Adam, torch.optim.Adam, dict(lr=3e-3, weight_decay=0.1)),
    (Adam, torch.optim.Adam, dict(lr=3e-3, betas=(0.0, 0.99), weight_decay=0.01)),
    (AdamW, torch.optim.AdamW, dict(lr=1e-3)),
    (AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    (AdamW, torch.optim.AdamW, dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.5)),
]
IDS = [f'{ours.__name__}-{kw}' for ours, _, kw in CASES]

@pytest.mark.parametrize('ours,theirs,kw', CASES, ids=IDS)
def test_parity_100_steps(ours, theirs, kw):
    diff = optimizer_parity(lambda m: ours(m.parameters(), **kw), lambda m: theirs(m.parameters(), **kw), steps=100, seed=1)
    assert diff < 1e-6

@pytest.mark.parametrize('ours,theirs,kw', CASES[::3], ids=IDS[::3])
def test_parity_float64(ours, theirs, kw):
    diff = optimizer_parity(lambda m: ours(m.parameters(), **kw), lambda m: theirs(m.parameters(), **kw),
                            steps=100, seed=2, dtype=torch.float64)
    assert diff < 1e-12

def _groups(cls, **kw):
    "Three groups: first layer at the base lr, second layer at 3x with other hyperparameters, biases at lr/10 without decay."
    def make(model):
        named = dict(model.named_parameters())
        return cls([dict(params=[named['0.weight']]),
                    dict(params=[named['2.weight'], named['4.weight']], lr=kw['lr'] * 3, weight_decay=0.2),
                    dict(params=[p for n, p in named.items() if n.endswith('bias')], lr=kw['lr'] / 10, weight_decay=0.0)], **kw)
    return make

@pytest.mark.parametrize('ours,theirs,kw', [
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    (RMSprop, torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5, weight_decay=0.01)),
    (Adam, torch.optim.Adam, dict(lr=3e-3, weight_decay=0.01)),
    (AdamW, torch.optim.AdamW, dict(lr=3e-3, weight_decay=0.01))], ids=['SGD', 'RMSprop', 'Adam', 'AdamW'])
def test_parity_param_groups(ours, theirs, kw):
    assert optimizer_parity(_groups(ours, **kw), _groups(theirs, **kw), steps=100, seed=3) < 1e-6

class WithSchedule:
    "An optimizer plus a LambdaLR warmup-cosine schedule, stepped together (what optimizer_parity needs)."
    def __init__(self, opt):
        self.opt = opt
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda('cosine', warmup_steps=10, total_steps=80, min_lr=0.1))
    def zero_grad(self): self.opt.zero_grad()
    def step(self): self.opt.step(); self.sched.step()

@pytest.mark.parametrize('cls', [SGD, RMSprop, Adam, AdamW])
def test_parity_with_torch_scheduler(cls):
    kw = dict(lr=1e-2, momentum=0.9) if cls is SGD else dict(lr=1e-2)
    theirs = getattr(torch.optim, cls.__name__)
    assert optimizer_parity(lambda m: WithSchedule(cls(m.parameters(), **kw)),
                            lambda m: WithSchedule(theirs(m.parameters(), **kw))) < 1e-6

def test_step_closure_skips_missing_grads_and_add_param_group():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = Adam([a], lr=0.1)
    loss = opt.step(lambda: (a ** 2).sum().backward() or (a ** 2).sum())
    assert loss.item() == pytest.approx(3.0) and not torch.equal(a.detach(), torch.ones(3))
    opt.add_param_group(dict(params=[b], lr=0.5))
    opt.step()  # b has no gradient: untouched, no state
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    b.grad = torch.ones(2); opt.step()
    assert opt.state[b]['step'] == 1 and opt.state[a]['step'] == 3
    torch.testing.assert_close(b.detach(), torch.full((2,), 0.5))  # first Adam step moves by lr

def test_sparse_gradient_is_refused():
    p = nn.Parameter(torch.ones(3)); p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match='sparse'): SGD([p], lr=0.1).step()

@pytest.mark.parametrize('make,name', [
    (lambda p: SGD(p, lr=-1.0), 'lr'), (lambda p: SGD(p, lr=0.1, momentum=-0.5), 'momentum'),
    (lambda p: SGD(p, lr=0.1, nesterov=True), 'Nesterov'), (lambda p: RMSprop(p, alpha=1.5), 'alpha'),
    (lambda p: Adam(p, betas=(1.0, 0.999)), 'beta1'), (lambda p: Adam(p, betas=(0.9,)), 'betas'),
    (lambda p: AdamW(p, eps=-1e-8), 'eps'), (lambda p: AdamW(p, weight_decay=-0.1), 'weight_decay')])
def test_bad_hyperparameters(make, name):
    with pytest.raises(ValueError, match=name): make([nn.Parameter(torch.ones(2))])

# ---------------------------------------------------------------- optimizers: saving and resuming

def _train(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g)
        opt.zero_grad(); mse_loss(model(x), x[:, :3].sin()).backward(); opt.step()

def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

@pytest.mark.parametrize('make', [lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
                                  lambda ps: RMSprop(ps, lr=1e-2, momentum=0.5, centered=True),
                                  lambda ps: Adam(ps, lr=1e-2, weight_decay=0.1),
                                  lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1)])
@pytest.mark.parametrize('via', ['state_dict', 'file'])
def test_resume_is_identical(make, via, tmp_path):
    straight = _model(); opt = make(straight.parameters())
    _train(straight, opt, 25, seed=1); _train(straight, opt, 25, seed=2)
    first = _model(); opt = make(first.parameters()); _train(first, opt, 25, seed=1)
    resumed = _model(); resumed.load_state_dict(first.state_dict())
    if via == 'file':
        save_optimizer(opt, tmp_path / 'opt.safetensors')
        opt2 = load_optimizer(make(resumed.parameters()), tmp_path / 'opt.safetensors')
    else:
        opt2 = make(resumed.parameters()); opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(resumed, opt2, 25, seed=2)
    for a, b in zip(straight.parameters(), resumed.parameters()): assert torch.equal(a, b)

def test_state_dicts_interchange_with_torch(tmp_path):
    "torch's AdamW state loads into ours (and ours into torch's), and both continue identically."
    m_ref, m_ours, m_back = _model(), _model(), _model()
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    _train(m_ref, ref, 20, seed=1)
    for m in (m_ours, m_back): m.load_state_dict(m_ref.state_dict())
    ours = AdamW(m_ours.parameters(), lr=1e-2); ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    save_optimizer(ref, tmp_path / 'torch_opt.safetensors')  # save_optimizer also takes torch's optimizers
    back = load_optimizer(torch.optim.AdamW(m_back.parameters(), lr=1e-2), tmp_path / 'torch_opt.safetensors')
    _train(m_ref, ref, 20, seed=2); _train(m_ours, ours, 20, seed=2); _train(m_back, back, 20, seed=2)
    for a, b, c in zip(m_ref.parameters(), m_ours.parameters(), m_back.parameters()):
        assert (a - b).abs().max() < 1e-6 and torch.equal(a, c)
    torch_again = torch.optim.AdamW(m_ours.parameters(), lr=1e-2); torch_again.load_state_dict(ours.state_dict())
    _train(m_ours, torch_again, 5, seed=3); _train(m_ref, ref, 5, seed=3)
    for a, b in zip(m_ref.parameters(), m_ours.parameters()): assert (a - b).abs().max() < 1e-6  # ours' state drives torch's

@pytest.mark.parametrize('make', [lambda ps: AdamW(ps, lr=1e-2, betas=(0.8, 0.95)), lambda ps: Adam(ps, lr=1e-2),
                                  lambda ps: SGD(ps, lr=0.05, momentum=0.9), lambda ps: RMSprop(ps, lr=1e-2, centered=True),
                                  lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.95)),
                                  lambda ps: torch.optim.Adam([dict(params=ps[:2]), dict(params=ps[2:], lr=1e-3)], lr=1e-2)],
                         ids=['AdamW', 'Adam', 'SGD', 'RMSprop', 'torch AdamW', 'torch Adam two groups'])
def test_saved_and_loaded_optimizer_compares_equal(make, tmp_path):
    "After save_optimizer + load_optimizer the optimizer equals the original: param_groups (betas a tuple) and state."
    model = _model(); opt = make(list(model.parameters())); _train(model, opt, 5, seed=1)
    save_optimizer(opt, tmp_path / 'opt.safetensors')
    back = load_optimizer(make(list(model.parameters())), tmp_path / 'opt.safetensors')
    saved, loaded = opt.state_dict(), back.state_dict()
    assert loaded['param_groups'] == saved['param_groups']
    assert [g.get('betas') for g in back.param_groups] == [g.get('betas') for g in opt.param_groups]
    assert all(type(g.get('betas')) is type(h.get('betas')) for g, h in zip(back.param_groups, opt.param_groups))
    assert saved['state'].keys() == loaded['state'].keys()
    for i, st in saved['state'].items():
        assert st.keys() == loaded['state'][i].keys()
        for k, v in st.items(): assert torch.equal(torch.as_tensor(v), torch.as_tensor(loaded['state'][i][k])), (i, k)

def test_load_optimizer_refuses_a_different_number_of_groups(tmp_path):
    model = _model(); opt = Adam(model.parameters()); save_optimizer(opt, tmp_path / 'o.safetensors')
    ps = list(model.parameters())
    with pytest.raises(ValueError, match='holds 1 param groups, the optimizer has 2'):
        load_optimizer(Adam([dict(params=ps[:2]), dict(params=ps[2:])]), tmp_path / 'o.safetensors')

def test_load_optimizer_errors(tmp_path):
    from safetensors.torch import save_file
    opt = SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(FileNotFoundError, match='no optimizer file'): load_optimizer(opt, tmp_path / 'missing.safetensors')
    save_file({'w': torch.ones(2)}, str(tmp_path / 'weights.safetensors'))
    with pytest.raises(ValueError, match='not written by save_optimizer'): load_optimizer(opt, tmp_path / 'weights.safetensors')

# ---------------------------------------------------------------- schedules

def _torch_lrs(make_sched, n=70, lr=0.3):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr); sched = make_sched(opt); out = []
    for _ in range(n): out.append(opt.param_groups[0]['lr']); opt.step(); sched.step()
    return np.array(out)

def test_schedules_match_torch_schedulers():
    S = torch.optim.lr_scheduler
    cos = _torch_lrs(lambda o: S.CosineAnnealingLR(o, T_max=60, eta_min=0.03))
    np.testing.assert_allclose([lr_warmup_cosine(s, 0.3, 0, 60, 0.03) for s in range(61)], cos[:61], atol=1e-12)
    np.testing.assert_allclose([lr_linear(s, 0.3, 0, 60, 0.06) for s in range(70)],
                               _torch_lrs(lambda o: S.LinearLR(o, 1.0, 0.2, total_iters=60)), atol=1e-12)
    np.testing.assert_allclose([lr_step(s, 0.3, 9, 0.7) for s in range(70)], _torch_lrs(lambda o: S.StepLR(o, 9, 0.7)), atol=1e-12)
    np.testing.assert_allclose(_torch_lrs(lambda o: S.LambdaLR(o, lr_lambda('linear', warmup_steps=5, total_steps=50, min_lr=0.1))),
                               [lr_linear(s, 0.3, 5, 50, 0.03) for s in range(70)], atol=1e-12)

@pytest.mark.parametrize('fn', [lr_warmup_cosine, lr_linear])
def test_warmup_and_decay_shape(fn):
    lrs = [fn(s, 1.0, 10, 100, 0.1) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[100] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1)
    assert fn(0, 1.0, 0, 50) == 1.0 and fn(4, 1.0, 5, 5, 0.2) == pytest.approx(1.0) and fn(5, 1.0, 5, 5, 0.2) == pytest.approx(0.2)

def test_schedule_errors():
    for fn in (lr_warmup_cosine, lr_linear):
        with pytest.raises(ValueError, match='step must be an int >= 0'): fn(-1, 1.0, 10, 100)
        with pytest.raises(ValueError, match='step must be an int >= 0'): fn(2.5, 1.0, 10, 100)
    with pytest.raises(ValueError, match='step must be >= 0'): lr_step(-3, 1.0, 5)
    with pytest.raises(ValueError, match='warmup_steps'): lr_warmup_cosine(0, 1.0, 20, 10)
    with pytest.raises(ValueError, match='step_size'): lr_step(0, 1.0, 0)
    with pytest.raises(ValueError, match='unknown schedule'): lr_lambda('exponential')
    with pytest.raises(ValueError, match='warmup_steps'): lr_lambda('cosine', warmup_steps=20, total_steps=10)

# ---------------------------------------------------------------- clipping

@pytest.mark.parametrize('max_norm', [0.1, 1.0, 1e6])
@pytest.mark.parametrize('norm_type', [1.0, 2.0, float('inf')])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    torch.manual_seed(0)
    a = _model(); b = copy.deepcopy(a)
    for pa, pb in zip(a.parameters(), b.parameters()): pa.grad = torch.randn_like(pa) * 3; pb.grad = pa.grad.clone()
    a[2].bias.grad = b[2].bias.grad = None  # a parameter without a gradient is skipped
    na = clip_grad_norm_(a.parameters(), max_norm, norm_type)
    nb = nn.utils.clip_grad_norm_(b.parameters(), max_norm, norm_type)
    torch.testing.assert_close(na, nb)
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.grad is not None: torch.testing.assert_close(pa.grad, pb.grad)

def test_clip_grad_norm_edge_cases():
    p = nn.Parameter(torch.ones(4)); p.grad = torch.full((4,), 3.0)
    assert clip_grad_norm_(p, 1.0).item() == pytest.approx(6.0) and p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert clip_grad_norm_([nn.Parameter(torch.ones(2))], 1.0).item() == 0.0
    with pytest.raises(ValueError, match='max_norm'): clip_grad_norm_(p, -1.0)

# ---------------------------------------------------------------- loss surface

def test_rosenbrock_and_paths():
    assert rosenbrock(torch.tensor([1.0, 1.0])).item() == 0.0
    path = optimizer_path('Adam', 0.05, steps=300)
    assert path.shape == (301, 2) and rosenbrock(torch.tensor(path[-1])) < rosenbrock(torch.tensor(path[0]))
    assert len(optimizer_path('SGD', 0.1, steps=300)) < 301  # diverges and stops early
    with pytest.raises(ValueError, match='unknown optimizer'): optimizer_path('Adagrad', 0.1)
    fig = plot_optimizer_paths({name: 1e-3 for name in OPTIMIZERS}, steps=20)
    assert fig.axes[0].get_xlabel() == 'x' and fig.axes[1].get_ylabel()

# ---------------------------------------------------------------- initialisation and regularisation

def test_init_std_matches_torch_initialisers():
    torch.manual_seed(0)
    w = torch.empty(600, 900)
    nn.init.xavier_normal_(w); assert abs(w.std() / init_std('xavier', 900, 600) - 1) < 0.01
    nn.init.kaiming_normal_(w, nonlinearity='relu'); assert abs(w.std() / init_std('kaiming', 900, 600) - 1) < 0.01
    nn.init.kaiming_normal_(w, nonlinearity='tanh'); assert abs(w.std() / init_std('kaiming', 900, 600, 'tanh') - 1) < 0.01
    assert abs(nn.Linear(900, 600).weight.std() / init_std('default', 900, 600) - 1) < 0.01
    with pytest.raises(ValueError, match='init scheme'): init_std('orthogonal', 3, 3)
    with pytest.raises(ValueError, match='fan_in and fan_out must be >= 1'): init_std('kaiming', 0, 3)
    with pytest.raises(ValueError, match="activation must be 'tanh' or 'relu'"): make_mlp(2, 8, 'gelu')

def test_make_mlp_and_activation_stats():
    torch.manual_seed(0)
    m = make_mlp(10, 64, 'relu', 'kaiming', n_in=32, n_out=3, dropout=0.1)
    assert m(torch.randn(5, 32)).shape == (5, 3) and sum(isinstance(l, Dropout) for l in m) == 10
    stats = activation_stats(make_mlp(12, 128, 'relu', 'kaiming'), torch.randn(256, 128))
    assert len(stats) == 12 and 0.3 < stats[-1][1] < 3
    stats = activation_stats(make_mlp(12, 128, 'relu', 'xavier'), torch.randn(256, 128))
    assert stats[-1][1] < 0.1 * stats[0][1]  # ReLU under Xavier fades

def test_dropout_matches_torch():
    x = torch.randn(300, 40)
    for p in (0.1, 0.5, 0.9):
        torch.manual_seed(7); ours = dropout(x, p)
        torch.manual_seed(7); theirs = F.dropout(x, p)
        assert torch.equal(ours, theirs)
    assert torch.equal(dropout(x, 0.5, training=False), x) and torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    layer = Dropout(0.5); layer.eval(); assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match='p'): dropout(x, 1.5)

def test_early_stopping():
    model = nn.Linear(2, 1); stopper = EarlyStopping(patience=2, min_delta=0.01)
    with torch.no_grad(): model.weight.fill_(1.0)
    assert not stopper(1.0, model)
    with torch.no_grad(): model.weight.fill_(2.0)
    assert not stopper(0.995) and stopper(0.999)  # improvements below min_delta do not count
    stopper.restore(model); assert torch.equal(model.weight, torch.ones(1, 2)) and stopper.best_step == 0
    with pytest.raises(RuntimeError, match='no weights'): EarlyStopping().restore(model)
    with pytest.raises(ValueError, match='patience'): EarlyStopping(patience=0)

def test_regression_task_and_fit():
    t1, t2 = make_regression_task(seed=3), make_regression_task(seed=3)
    assert all(torch.equal(t1[k], t2[k]) for k in t1) and t1['x_train'].shape == (20, 1) and t1['y_val'].shape == (200, 1)
    torch.manual_seed(0)
    hist = fit(make_mlp(2, 16, 'tanh', n_in=1), t1, steps=200, eval_every=50)
    assert hist['step'] == [0, 50, 100, 150, 200] and hist['train'][-1] < hist['train'][0]
    stopper = EarlyStopping(patience=1)
    hist = fit(make_mlp(2, 16, 'tanh', n_in=1), t1, steps=2000, early_stopping=stopper)
    assert len(hist['step']) < 201 and stopper.best_state is not None

# ---------------------------------------------------------------- checkers: the reference passes, wrong answers fail

def ref_sgd(p, g, state, hp):
    g = g + hp['weight_decay'] * p
    if hp['momentum']:
        state['b'] = g.clone() if 'b' not in state else hp['momentum'] * state['b'] + g
        g = g + hp['momentum'] * state['b'] if hp['nesterov'] else state['b']
    return p - hp['lr'] * g

def sgd_ema_momentum(p, g, state, hp):  # momentum as an exponential moving average: a different optimizer
    g = g + hp['weight_decay'] * p
    if hp['momentum']:
        state['b'] = hp['momentum'] * state.get('b', torch.zeros_like(g)) + (1 - hp['momentum']) * g
        g = g + hp['momentum'] * state['b'] if hp['nesterov'] else state['b']
    return p - hp['lr'] * g

def sgd_no_weight_decay(p, g, state, hp): return ref_sgd(p, g, state, {**hp, 'weight_decay': 0.0})
def sgd_ignores_nesterov(p, g, state, hp): return ref_sgd(p, g, state, {**hp, 'nesterov': False})

def sgd_in_place(p, g, state, hp):  # modifying p in place and returning None is accepted
    p.copy_(ref_sgd(p, g, state, hp))

def make_adam(decoupled=False, bias_correction=True, eps_inside=False):
    def step(p, g, state, hp):
        if not state: state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
        state['t'] += 1
        if decoupled: p = p * (1 - hp['lr'] * hp['weight_decay'])
        else: g = g + hp['weight_decay'] * p
        state['m'] = hp['beta1'] * state['m'] + (1 - hp['beta1']) * g
        state['v'] = hp['beta2'] * state['v'] + (1 - hp['beta2']) * g * g
        m, v = state['m'], state['v']
        if bias_correction: m, v = m / (1 - hp['beta1'] ** state['t']), v / (1 - hp['beta2'] ** state['t'])
        denom = (v + hp['eps']).sqrt() if eps_inside else v.sqrt() + hp['eps']
        return p - hp['lr'] * m / denom
    return step

def test_checkers_accept_references():
    assert check_cross_entropy(lambda z, y: cross_entropy(z, y), seed=0).ok
    assert check_cross_entropy(lambda z, y: -(z - torch.logsumexp(z, -1, keepdim=True)).gather(1, y[:, None]).mean(), seed=1).ok
    assert check_sgd_step(ref_sgd, seed=0).ok and check_sgd_step(sgd_in_place, seed=1).ok
    assert check_adam_step(make_adam(), seed=0).ok and check_adamw_step(make_adam(decoupled=True), seed=0).ok
    assert check_schedule(lr_warmup_cosine, seed=0).ok

def naive_ce(z, y): return -torch.log(torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)).gather(1, y[:, None]).mean()
def ce_sum(z, y): return F.cross_entropy(z, y, reduction='sum')
def ce_wrong_dim(z, y): return -(z - torch.logsumexp(z, 0, keepdim=True)).gather(1, y[:, None]).mean()

def sched_no_plus_one(s, max_lr, w, total, min_lr):
    return max_lr * s / w if s < w else lr_warmup_cosine(s, max_lr, w, total, min_lr)
def sched_to_zero(s, max_lr, w, total, min_lr): return lr_warmup_cosine(s, max_lr, w, total, 0.0)
def sched_no_clamp(s, max_lr, w, total, min_lr):
    if s < w: return max_lr * (s + 1) / w
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * (s - w) / max(1, total - w)))
def sched_no_warmup(s, max_lr, w, total, min_lr): return lr_warmup_cosine(s, max_lr, 0, total, min_lr)

WRONG = [
    ('naive cross-entropy (no log-sum-exp)', check_cross_entropy, naive_ce),
    ('cross-entropy summed, not averaged', check_cross_entropy, ce_sum),
    ('log-softmax over the wrong dimension', check_cross_entropy, ce_wrong_dim),
    ('SGD with EMA momentum', check_sgd_step, sgd_ema_momentum),
    ('SGD without weight decay', check_sgd_step, sgd_no_weight_decay),
    ('SGD ignoring Nesterov', check_sgd_step, sgd_ignores_nesterov),
    ('Adam without bias correction', check_adam_step, make_adam(bias_correction=False)),
    ('Adam with eps inside the square root', check_adam_step, make_adam(eps_inside=True)),
    ('Adam with decoupled decay (that is AdamW)', check_adam_step, make_adam(decoupled=True)),
    ('AdamW with coupled decay (that is Adam)', check_adamw_step, make_adam(decoupled=False)),
    ('AdamW without bias correction', check_adamw_step, make_adam(decoupled=True, bias_correction=False)),
    ('schedule warmup without +1', check_schedule, sched_no_plus_one),
    ('schedule decaying to 0, not min_lr', check_schedule, sched_to_zero),
    ('schedule not clamped after total_steps', check_schedule, sched_no_clamp),
    ('schedule without warmup', check_schedule, sched_no_warmup),
]

@pytest.mark.parametrize('what,checker,fn', WRONG, ids=[w[0] for w in WRONG])
@pytest.mark.parametrize('seed', [0, 1])
def test_checkers_reject_wrong_implementations(what, checker, fn, seed):
    report = checker(fn, seed=seed, raise_on_fail=False)
    assert not report.ok and 'trial' in report.failure
    with pytest.raises(CheckFailed): checker(fn, seed=seed)

def test_checker_reports_a_crash_clearly():
    def broken(p, g, state, hp): return p - hp['learning_rate'] * g
    report = check_sgd_step(broken, raise_on_fail=False)
    assert not report.ok and 'KeyError' in report.failure and 'learning_rate' in report.failure

# ---------------------------------------------------------------- property-based: hypothesis draws the inputs

from hypothesis import given, settings, strategies as st

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 8), scale=st.sampled_from([1e-3, 1.0, 80.0, 1e4]),
       smoothing=st.sampled_from([0.0, 0.1, 1.0]), seed=st.integers(0, 2**16))
def test_cross_entropy_property(n, c, scale, smoothing, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    targets = torch.randint(0, c, (n,), generator=g)
    ours = cross_entropy(logits, targets, label_smoothing=smoothing)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets, label_smoothing=smoothing))

@settings(max_examples=60, deadline=None)
@given(warmup=st.integers(0, 50), decay=st.integers(0, 300), max_lr=st.floats(1e-6, 1.0), ratio=st.floats(0.0, 1.0),
       step=st.integers(0, 500))
def test_schedules_stay_in_range(warmup, decay, max_lr, ratio, step):
    total, min_lr = warmup + decay, max_lr * ratio
    for fn in (lr_warmup_cosine, lr_linear):
        lr = fn(step, max_lr, warmup, total, min_lr)
        assert 0 < lr <= max_lr * (1 + 1e-12) or (lr == min_lr == 0 and step >= total)
        if step >= warmup: assert lr >= min_lr * (1 - 1e-12)
        if step >= total: assert lr == pytest.approx(min_lr, abs=1e-15)
