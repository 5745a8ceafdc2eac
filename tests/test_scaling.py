"""Tests of llm_lab.scaling: the law, the Huber fit recovering known constants, the frontier, cached runs, checkers."""
import json, math

import numpy as np
import pytest
import torch

from llm_lab.core import CheckFailed
from llm_lab.model import GPT
from llm_lab.scaling import (scaling_law, huber, ScalingLaw, CHINCHILLA, BESIROGLU, fit_scaling_law, _objective, RunSpec, run_scaling,
                             non_embedding_params)
from llm_lab.model import GPTConfig

SMALL = dict(alpha=[0.2, 0.6], beta=[0.2, 0.6], e=[0.0, 1.0], a=[0, 5, 10], b=[0, 5, 10])   # 72 starts: the tests stay fast

def synthetic(law, noise, seed=0, n=7):
    rng = np.random.default_rng(seed)
    N, D = np.meshgrid(np.logspace(7, 10, n), np.logspace(9, 12, n))
    return N, D, law.loss(N, D) * np.exp(rng.normal(0, noise, N.shape))

def test_law_and_huber():
    assert scaling_law(1e9, 1e12, 1.69, 406.4, 410.7, 0.34, 0.28) == pytest.approx(1.69 + 406.4 / 1e9 ** 0.34 + 410.7 / 1e12 ** 0.28)
    r = np.array([-2e-3, -1e-3, 0, 5e-4, 3e-3])
    assert np.allclose(huber(r, 1e-3), [1e-3 * 1.5e-3, 0.5e-6, 0, 0.5 * 25e-8, 1e-3 * 2.5e-3])
    # continuous and with a continuous derivative at delta
    assert huber(1e-3 + 1e-12, 1e-3) == pytest.approx(huber(1e-3, 1e-3), abs=1e-14)

def test_objective_gradient_matches_finite_differences():
    N, D, L = synthetic(CHINCHILLA, 0.02, n=4)
    args = (np.log(N.ravel()), np.log(D.ravel()), np.log(L.ravel()), 1e-2)
    theta = np.array([0.3, 0.25, 0.4, 6.0, 6.2])
    f, g = _objective(theta, *args)
    eps = 1e-6
    num = [(_objective(theta + eps * e, *args)[0] - _objective(theta - eps * e, *args)[0]) / (2 * eps) for e in np.eye(5)]
    assert np.allclose(g, num, rtol=1e-4, atol=1e-9)

@pytest.mark.parametrize('law', [CHINCHILLA, ScalingLaw(E=2.5, A=5000.0, B=900.0, alpha=0.45, beta=0.35)])
def test_fit_recovers_known_constants(law):
    N, D, L = synthetic(law, 0.005, seed=1)
    fit = fit_scaling_law(N, D, L, grid=SMALL)
    assert fit.alpha == pytest.approx(law.alpha, abs=0.04) and fit.beta == pytest.approx(law.beta, abs=0.04)
    assert fit.E == pytest.approx(law.E, rel=0.05)
    assert np.abs(fit.loss(N, D) / law.loss(N, D) - 1).max() < 0.01
    exact = fit_scaling_law(*synthetic(law, 0.0, seed=1), grid=SMALL)
    assert exact.alpha == pytest.approx(law.alpha, abs=1e-3) and exact.A == pytest.approx(law.A, rel=0.02)

def test_fit_is_robust_to_outliers():
    N, D, L = synthetic(CHINCHILLA, 0.003, seed=2)
    L = L.copy(); L.flat[[3, 17, 30]] *= 1.5          # three runs that went badly wrong
    fit = fit_scaling_law(N, D, L, grid=SMALL)
    assert fit.alpha == pytest.approx(0.34, abs=0.05) and fit.beta == pytest.approx(0.28, abs=0.05)

def test_fit_input_errors():
    with pytest.raises(ValueError, match='same length'): fit_scaling_law([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3])
    with pytest.raises(ValueError, match='at least 5'): fit_scaling_law([1, 2], [1, 2], [1, 2])
    with pytest.raises(ValueError, match='positive'): fit_scaling_law([1, 2, 3, 4, -5], [1] * 5, [1] * 5)

def test_compute_optimal_frontier():
    for C in (1e18, 5.76e23):
        n, d = CHINCHILLA.optimal(C)
        assert 6 * n * d == pytest.approx(C, rel=1e-9)
        Ns = n * np.logspace(-1, 1, 2001)
        assert Ns[np.argmin(CHINCHILLA.loss(Ns, C / 6 / Ns))] == pytest.approx(n, rel=0.01)
    assert CHINCHILLA.beta / (CHINCHILLA.alpha + CHINCHILLA.beta) == pytest.approx(0.46, abs=0.01)  # Hoffmann et al. Table 2

def test_run_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv('LLM_LAB_CACHE', str(tmp_path))
    spec = RunSpec(d_model=16, tokens=(512, 1024), eval_batches=2)
    pts = run_scaling(spec)
    assert [p['D'] for p in pts] == [512, 1024] and all(math.isfinite(p['loss']) for p in pts)
    c = spec.config
    assert pts[0]['N'] == non_embedding_params(c) == GPT(c).num_params(non_embedding=True)
    assert pts[0]['N'] == c.num_params() - c.context_len * c.d_model   # tied: everything but the position table counts once
    assert len(list((tmp_path / 'scaling').glob('*.json'))) == 1
    assert run_scaling(spec) == pts
    sep = run_scaling(RunSpec(d_model=16, tokens=(512, 1024), eval_batches=2, mode='separate'))
    assert [p['D'] for p in sep] == [512, 1024] and sep[1]['loss'] != pts[1]['loss']
    with pytest.raises(ValueError, match='mode'): run_scaling(RunSpec(d_model=16, tokens=(512,), mode='other'), cache=False)
    with pytest.raises(ValueError, match='repeat data'): run_scaling(RunSpec(d_model=16, tokens=(10 ** 8,)), cache=False)

CONFIGS = {
    'gpt2-tied': dict(family='gpt2', vocab_size=300, context_len=64, n_layer=2, n_head=4, d_model=64),
    'gpt2-untied-nobias': dict(family='gpt2', vocab_size=301, context_len=32, n_layer=3, n_head=2, d_model=48, bias=False,
                               tie_embeddings=False, d_ff=100),
    'gpt2-sinusoidal': dict(family='gpt2', vocab_size=257, context_len=40, n_layer=1, n_head=4, d_model=32, pos='sinusoidal'),
    'llama-untied': dict(family='llama', vocab_size=300, context_len=64, n_layer=2, n_head=4, d_model=64),
    'llama-gqa-tied-bias': dict(family='llama', vocab_size=200, context_len=32, n_layer=2, n_head=4, n_kv_head=1, d_model=32,
                                bias=True, tie_embeddings=True),
}

@pytest.mark.parametrize('name', CONFIGS)
def test_non_embedding_params_matches_the_model(name):
    kw = dict(CONFIGS[name]); fam = kw.pop('family')
    c = getattr(GPTConfig, fam)(**kw)
    assert non_embedding_params(c) == GPT(c).num_params(non_embedding=True)

def test_non_embedding_params_of_a_7b_config_is_instant(monkeypatch):
    c = GPTConfig.llama(vocab_size=32000, context_len=4096, n_layer=32, n_head=32, d_model=4096, d_ff=11008)
    def no_modules(*a, **k): raise AssertionError('non_embedding_params built a module')
    monkeypatch.setattr(torch.nn.Module, '__init__', no_modules)   # arithmetic on the config only: no model is built
    n = non_embedding_params(c)
    monkeypatch.undo()
    assert n == c.num_params() - 32000 * 4096 == 6_607_343_616   # Llama 2 7B: 6.74B total minus the input embedding table

def test_law_bad_input():
    with pytest.raises(ValueError, match='C'): CHINCHILLA.optimal(0)
    with pytest.raises(ValueError, match='C'): CHINCHILLA.optimal(-1e20)
    with pytest.raises(ValueError, match='N and D'): CHINCHILLA.loss(0, 1e9)
    with pytest.raises(ValueError, match='N and D'): CHINCHILLA.loss(1e9, -5)

def test_published_laws_and_their_sources():
    assert 'Hoffmann' in CHINCHILLA.source and 'Besiroglu' in BESIROGLU.source
    n, d = BESIROGLU.optimal(5.76e23)
    assert 15 < d / n < 30 and CHINCHILLA.optimal(5.76e23)[1] / CHINCHILLA.optimal(5.76e23)[0] > 30


def test_plots():
    import matplotlib.pyplot as plt
    from llm_lab.scaling import plot_scaling_fit, plot_isoflop
    N, D, L = synthetic(CHINCHILLA, 0.0, n=3)
    pts = [{'N': n, 'D': d, 'loss': l} for n, d, l in zip(N.ravel(), D.ravel(), L.ravel())]
    ax = plot_scaling_fit(pts, CHINCHILLA)
    assert len(ax.lines) == 2 * 3                    # a fitted line and the dots per model size
    ax = plot_isoflop(20.0, CHINCHILLA, BESIROGLU)
    assert len(ax.lines) == 4 and ax.get_xscale() == 'log'
    plt.close('all')
