"""The exercise checkers of chapter 10 (scaling): each accepts correct implementations (the solution and another), reports
a stub as not attempted without raising, and rejects a table of named wrong implementations (with the hint where one is given)."""
import functools

import numpy as np
import pytest

from llm_lab.core import CheckFailed
from llm_lab.scaling import (ScalingLaw, check_fit_scaling_law, check_compute_optimal, check_huber,
                             check_scaling_law)
from conftest import load_solution, stub

sol = load_solution('10_scaling.py')


@functools.lru_cache(maxsize=None)
def _fit_cached(key):
    return sol.my_fit_scaling_law(*(np.frombuffer(b) for b in key))

def fit(N, D, L):  # the solution's fit, computed once per data set (a fit takes seconds; several tests reuse it)
    return _fit_cached((N.tobytes(), D.tobytes(), L.tobytes()))

# ------------------------------------------------------------------ the fit

def test_fit_stub_is_not_attempted():
    r = check_fit_scaling_law(stub)
    assert not r.attempted and not r.ok


def test_fit_accepts_solution_in_every_return_form():
    assert check_fit_scaling_law(fit, trials=1, seed=0).ok                                    # a tuple
    assert check_fit_scaling_law(lambda N, D, L: ScalingLaw(*fit(N, D, L)), trials=1, seed=0).ok   # a ScalingLaw
    assert check_fit_scaling_law(lambda N, D, L: dict(zip(('E', 'A', 'B', 'alpha', 'beta'), fit(N, D, L))), trials=1, seed=0).ok


def _logs(N, D, L):
    E, A, B, a, b = fit(N, D, L); return np.log(E), np.log(A), np.log(B), a, b

def _swapped(N, D, L):
    E, A, B, a, b = fit(N, D, L); return E, A, B, b, a

def _linear_regression_no_floor(N, D, L):  # a straight line in log-log: no irreducible loss, one power law
    X = np.stack([np.ones(len(N)), np.log(N), np.log(D)], 1)
    c = np.linalg.lstsq(X, np.log(L), rcond=None)[0]
    return 0.0, float(np.exp(c[0])), 0.0, float(-c[1]), 0.3

WRONG_FITS = {
    'returns log-space parameters': (_logs, 'log A'),
    'alpha and beta swapped': (_swapped, 'swap'),
    'no irreducible loss (log-log line)': (_linear_regression_no_floor, 'local minima'),
    'constant prediction': (lambda N, D, L: (float(np.mean(L)), 0.0, 0.0, 0.5, 0.5), 'local minima'),
}


@pytest.mark.parametrize('name', WRONG_FITS)
def test_fit_rejects(name):
    fn, hint = WRONG_FITS[name]
    with pytest.raises(CheckFailed, match=hint) as e:
        check_fit_scaling_law(fn, trials=1, seed=0)
    assert 'held-out' in str(e.value) and 'trial 1' in str(e.value)


def test_fit_reports_a_crash():
    with pytest.raises(CheckFailed, match='ZeroDivisionError'):
        check_fit_scaling_law(lambda N, D, L: 1 / 0, trials=1, seed=0)

# ------------------------------------------------------------------ the compute-optimal split

def test_compute_optimal_stub_and_solutions():
    assert not check_compute_optimal(stub).attempted
    assert check_compute_optimal(sol.my_compute_optimal).ok
    def numerical(C, E, A, B, a, b):  # another correct route: D first, D* = (C/6)/N*
        G = (b * B / (a * A)) ** (1 / (a + b)); D = G * (C / 6) ** (a / (a + b)); return C / (6 * D), D
    assert check_compute_optimal(numerical).ok


def _swapped_exponents(C, E, A, B, a, b):
    G = (a * A / (b * B)) ** (1 / (a + b)); return G * (C / 6) ** (a / (a + b)), (C / 6) ** (b / (a + b)) / G

WRONG_OPTIMA = {
    'C = N·D (forgot the 6)': (lambda C, E, A, B, a, b: ScalingLaw(E, A, B, a, b).optimal(6 * C), '6'),
    'D = C/N': (lambda C, E, A, B, a, b: (sol.my_compute_optimal(C, E, A, B, a, b)[0], C / sol.my_compute_optimal(C, E, A, B, a, b)[0]), 'D = C/\\(6N\\)'),
    'exponents swapped': (_swapped_exponents, 'swap'),
    'twenty tokens per parameter whatever the law': (lambda C, E, A, B, a, b: ((C / 120) ** 0.5, 20 * (C / 120) ** 0.5), None),
}


@pytest.mark.parametrize('name', WRONG_OPTIMA)
def test_compute_optimal_rejects(name):
    fn, hint = WRONG_OPTIMA[name]
    with pytest.raises(CheckFailed, match=hint or 'expected') as e:
        check_compute_optimal(fn, seed=0)
    assert 'inputs' in str(e.value)

# ------------------------------------------------------------------ the other exported checkers (law, Huber)

def test_law_and_huber_checkers():
    assert check_scaling_law(lambda N, D, E, A, B, a, b: E + A / N ** a + B / D ** b).ok
    with pytest.raises(CheckFailed): check_scaling_law(lambda N, D, E, A, B, a, b: E + A / N ** a + B / N ** b)
    with pytest.raises(CheckFailed): check_scaling_law(lambda N, D, E, A, B, a, b: A / N ** a + B / D ** b)
    assert check_huber(lambda r, d: np.where(np.abs(r) <= d, 0.5 * r ** 2, d * (np.abs(r) - 0.5 * d))).ok
    with pytest.raises(CheckFailed, match='do not meet'): check_huber(lambda r, d: np.where(np.abs(r) <= d, 0.5 * r ** 2, d * np.abs(r)), seed=0)
    with pytest.raises(CheckFailed, match='linear'): check_huber(lambda r, d: 0.5 * r ** 2, seed=0)
    assert not check_huber(stub).attempted
