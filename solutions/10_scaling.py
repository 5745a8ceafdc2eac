"""Solutions to the exercises of chapter 10 (scaling laws). Try them yourself first: nbs/3_pretraining/10_scaling.ipynb."""
import itertools

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp


def my_fit_scaling_law(N, D, L):
    "The constants (E, A, B, alpha, beta) of L = E + A/N^alpha + B/D^beta that best fit the runs (Chinchilla's approach 3)."
    logN, logD, logL = (np.log(np.asarray(x, dtype=float).ravel()) for x in (N, D, L))
    delta = 1e-3

    def objective(theta):
        "Summed Huber loss of the log-space residuals, and its gradient (L-BFGS needs it to be fast)."
        alpha, beta, e, a, b = theta
        u = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])   # the three terms, in log space
        pred = logsumexp(u, axis=0)                                               # log(sum of exp) = log of the predicted loss
        w = np.exp(u - pred)                                                      # d pred / d u (softmax weights)
        r = pred - logL
        huber = np.where(np.abs(r) <= delta, 0.5 * r ** 2, delta * (np.abs(r) - 0.5 * delta))
        dr = np.clip(r, -delta, delta)                                            # Huber'(r)
        grad = [-(dr * w[0] * logN).sum(), -(dr * w[1] * logD).sum(), (dr * w[2]).sum(), (dr * w[0]).sum(), (dr * w[1]).sum()]
        return huber.sum(), np.array(grad)

    best = None
    # the objective has local minima: start from a small grid and keep the best end point
    for start in itertools.product([0.3, 1.0], [0.3, 1.0], [-1.0, 1.0], [0.0, 5.0, 10.0], [0.0, 5.0, 10.0]):
        res = minimize(objective, start, jac=True, method='L-BFGS-B', bounds=[(0, 4), (0, 4), (None, None), (None, None), (None, None)])
        if best is None or res.fun < best.fun: best = res
    alpha, beta, e, a, b = best.x
    return float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), float(alpha), float(beta)


def my_compute_optimal(C, E, A, B, alpha, beta):
    "The (N, D) minimising E + A/N^alpha + B/D^beta subject to 6·N·D = C."
    # along D = C/(6N): dL/dN = -alpha A N^(-alpha-1) + beta B (C/6)^(-beta) N^(beta-1) = 0
    # => N^(alpha+beta) = (alpha A / (beta B)) (C/6)^beta
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N = G * (C / 6) ** (beta / (alpha + beta))
    return N, C / (6 * N)


CHECKS = {'my_fit_scaling_law': 'llm_lab.scaling:check_fit_scaling_law',
          'my_compute_optimal': 'llm_lab.scaling:check_compute_optimal'}
