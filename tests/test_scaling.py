"""Tests of llm_lab.scaling: the law, the Huber fit recovering known constants, the frontier, cached runs, checkers."""
import json, math

import numpy as np
import pytest
import torch

from llm_lab.core import CheckFailed
from llm_lab.model import GPT
from llm_lab.scaling import (scaling_law, huber, ScalingFit, CHINCHILLA, fit_scaling_law, _objective, RunSpec, run_scaling,
                             non_embedding_params, check_scaling_law, check_compute_optimal, check_huber)

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

@pytest.mark.parametrize('law', [CHINCHILLA, ScalingFit(E=2.5, A=5000.0, B=900.0, alpha=0.45, beta=0.35)])
def test_fit_recovers_known_constants(law):
    N, D, L = synthetic(law, 0.005, seed=1)
    fit = fit_scaling_law(N, D, L)
    assert fit.alpha == pytest.approx(law.alpha, abs=0.04) and fit.beta == pytest.approx(law.beta, abs=0.04)
    assert fit.E == pytest.approx(law.E, rel=0.05)
    assert np.abs(fit.loss(N, D) / law.loss(N, D) - 1).max() < 0.01
    exact = fit_scaling_law(*synthetic(law, 0.0, seed=1))
    assert exact.alpha == pytest.approx(law.alpha, abs=1e-3) and exact.A == pytest.approx(law.A, rel=0.02)

def test_fit_is_robust_to_outliers():
    N, D, L = synthetic(CHINCHILLA, 0.003, seed=2)
    L = L.copy(); L.flat[[3, 17, 30]] *= 1.5          # three runs that went badly wrong
    fit = fit_scaling_law(N, D, L)
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
    assert pts[0]['N'] == non_embedding_params(c) == c.num_params() - c.vocab_size * c.d_model - c.context_len * c.d_model
    assert 12 * c.n_layer * c.d_model ** 2 < pts[0]['N'] < 13 * c.n_layer * c.d_model ** 2   # ≈ 12·L·d² plus biases and norms
    assert len(list((tmp_path / 'scaling').glob('*.json'))) == 1
    assert run_scaling(spec) == pts
    sep = run_scaling(RunSpec(d_model=16, tokens=(512, 1024), eval_batches=2, mode='separate'))
    assert [p['D'] for p in sep] == [512, 1024] and sep[1]['loss'] != pts[1]['loss']
    with pytest.raises(ValueError, match='mode'): run_scaling(RunSpec(d_model=16, tokens=(512,), mode='other'), cache=False)
    with pytest.raises(ValueError, match='repeat data'): run_scaling(RunSpec(d_model=16, tokens=(10 ** 8,)), cache=False)

def test_checkers_accept_reference_and_reject_wrong():
    assert check_scaling_law(lambda N, D, E, A, B, a, b: E + A / N ** a + B / D ** b).ok
    with pytest.raises(CheckFailed): check_scaling_law(lambda N, D, E, A, B, a, b: E + A / N ** a + B / N ** b)
    with pytest.raises(CheckFailed): check_scaling_law(lambda N, D, E, A, B, a, b: A / N ** a + B / D ** b)
    assert check_compute_optimal(lambda C, E, A, B, a, b: ScalingFit(E, A, B, a, b).optimal(C)).ok
    def swapped(C, E, A, B, a, b):  # exponents exchanged: N ∝ C^(α/(α+β))
        G = (a * A / (b * B)) ** (1 / (a + b)); return G * (C / 6) ** (a / (a + b)), (C / 6) ** (b / (a + b)) / G
    with pytest.raises(CheckFailed): check_compute_optimal(swapped)
    with pytest.raises(CheckFailed): check_compute_optimal(lambda C, E, A, B, a, b: ScalingFit(E, A, B, a, b).optimal(C / 6))
    assert check_huber(lambda r, d: np.where(np.abs(r) <= d, 0.5 * r ** 2, d * (np.abs(r) - 0.5 * d))).ok
    with pytest.raises(CheckFailed): check_huber(lambda r, d: np.where(np.abs(r) <= d, 0.5 * r ** 2, d * np.abs(r)))
    with pytest.raises(CheckFailed): check_huber(lambda r, d: 0.5 * r ** 2)
