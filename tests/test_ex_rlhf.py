"""The exercise checkers of chapter 15 reject named wrong implementations (with their hint), report stubs as not attempted,
and accept the solutions and alternative correct implementations."""
import importlib.util
from pathlib import Path

import pytest
import torch

from llm_lab.core import CheckFailed
from llm_lab.rlhf import check_gae, check_clipped_loss, check_value_loss, gae

_spec = importlib.util.spec_from_file_location('sol15', Path(__file__).parents[1] / 'solutions' / '15_rlhf.py')
sol = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(sol)


def stub(*args): raise NotImplementedError


@pytest.mark.parametrize('check', [check_gae, check_clipped_loss, check_value_loss])
def test_stub_is_not_attempted(check):
    report = check(stub)
    assert report.attempted is False and not report.ok


# --- GAE -----------------------------------------------------------------------------------------------------
def gae_no_lambda(r, v, m, gamma, lam): return gae(r, v, m, gamma, 1.0)

def gae_pad_leak(r, v, m, gamma, lam): a, _ = gae(r, v, torch.ones_like(m), gamma, lam); return a * m, (a + v) * m

def gae_returns_are_rewards(r, v, m, gamma, lam): a, _ = gae(r, v, m, gamma, lam); return a, r * m

def gae_forward_recursion(r, v, m, gamma, lam):  # accumulates the wrong way: A_t = delta_t + gamma*lam*A_{t-1}
    mf = m.float(); r, v = r * mf, v * mf
    nxt = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], 1)
    delta = (r + gamma * nxt - v) * mf
    adv, run = torch.zeros_like(v), torch.zeros_like(v[:, 0])
    for t in range(v.shape[1]): run = (delta[:, t] + gamma * lam * run) * mf[:, t]; adv[:, t] = run
    return adv, (adv + v) * mf

@pytest.mark.parametrize('fn, hint', [(gae_no_lambda, 'lam is missing'), (gae_pad_leak, 'must count as 0'),
                                      (gae_returns_are_rewards, 'advantages + values'), (gae_forward_recursion, None)],
                         ids=['lambda dropped', 'padding value leaks', 'returns wrong', 'forward recursion'])
def test_gae_rejects(fn, hint):
    with pytest.raises(CheckFailed) as e: check_gae(fn, trials=30, seed=0)
    if hint: assert hint in str(e.value)

def test_gae_accepts():
    assert check_gae(sol.my_gae, trials=30).ok
    def vectorised(r, v, m, gamma, lam):   # a closed form: A_t = sum_l (gamma*lam)^l delta_{t+l} as a matrix product
        mf = m.float(); r, v = r * mf, v * mf
        T = v.shape[1]
        delta = (r + gamma * torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], 1) - v) * mf
        k = torch.arange(T); expo = (k[None] - k[:, None]).float()
        W = torch.where(expo >= 0, (gamma * lam) ** expo.clamp_min(0), torch.zeros(()))   # W[t, s] = (gamma lam)^(s-t), s >= t
        adv = (delta @ W.T) * mf
        return adv, (adv + v) * mf
    assert check_gae(vectorised, trials=30).ok


# --- clipped loss --------------------------------------------------------------------------------------------
def clip_only(lp, old, a, m, eps):
    r = torch.exp(lp - old).clamp(1 - eps, 1 + eps); return -(r * a[:, None])[m].mean()

def max_not_min(lp, old, a, m, eps):
    r = torch.exp(lp - old); A = a[:, None]; return -torch.max(r * A, r.clamp(1 - eps, 1 + eps) * A)[m].mean()

def per_sequence_mean(lp, old, a, m, eps):
    r = torch.exp(lp - old); A = a[:, None]; t = -torch.min(r * A, r.clamp(1 - eps, 1 + eps) * A) * m
    return (t.sum(-1) / m.sum(-1)).mean()

def unmasked(lp, old, a, m, eps):
    r = torch.exp(lp - old); A = a[:, None]; return -torch.min(r * A, r.clamp(1 - eps, 1 + eps) * A).mean()

@pytest.mark.parametrize('fn, hint', [(clip_only, 'take the min'), (max_not_min, 'pessimistic'),
                                      (per_sequence_mean, 'not per response'), (unmasked, None)],
                         ids=['clipped term only', 'max instead of min', 'mean per response', 'padding counted'])
def test_clipped_loss_rejects(fn, hint):
    with pytest.raises(CheckFailed) as e: check_clipped_loss(fn, trials=30, seed=0)
    if hint: assert hint in str(e.value)

def test_clipped_loss_accepts():
    assert check_clipped_loss(sol.my_clipped_loss, trials=30).ok
    def via_where(lp, old, a, m, eps):   # the same objective written as PPO's "which branch is active" form
        r = torch.exp(lp - old); A = a[:, None].expand_as(r)
        clipped = torch.where(A >= 0, torch.minimum(r, torch.full_like(r, 1 + eps)), torch.maximum(r, torch.full_like(r, 1 - eps)))
        return -(clipped * A)[m].mean()
    assert check_clipped_loss(via_where, trials=30).ok


# --- clipped value loss --------------------------------------------------------------------------------------
def _errs(v, old, ret, c): return (v - ret) ** 2, (old + (v - old).clamp(-c, c) - ret) ** 2

def vl_min(v, old, ret, m, c): l1, l2 = _errs(v, old, ret, c); return 0.5 * torch.min(l1, l2)[m].mean()

def vl_no_half(v, old, ret, m, c): l1, l2 = _errs(v, old, ret, c); return torch.max(l1, l2)[m].mean()

def vl_clip_value(v, old, ret, m, c): return 0.5 * torch.max((v - ret) ** 2, (v.clamp(-c, c) - ret) ** 2)[m].mean()

def vl_unclipped(v, old, ret, m, c): return 0.5 * ((v - ret) ** 2)[m].mean()

def vl_unmasked(v, old, ret, m, c): l1, l2 = _errs(v, old, ret, c); return 0.5 * torch.max(l1, l2).mean()

def vl_clip_around_returns(v, old, ret, m, c):  # keeps the prediction near the target instead of near the old prediction
    return 0.5 * torch.max((v - ret) ** 2, (ret + (v - ret).clamp(-c, c) - ret) ** 2)[m].mean()

@pytest.mark.parametrize('fn, hint', [(vl_min, 'LARGER'), (vl_no_half, 'HALF'), (vl_clip_value, 'CHANGE'), (vl_unclipped, 'also compute'),
                                      (vl_unmasked, None), (vl_clip_around_returns, None)],
                         ids=['min instead of max', 'no 1/2', 'V clipped, not its change', 'no clipping', 'padding counted',
                              'clipped around the returns'])
def test_value_loss_rejects(fn, hint):
    with pytest.raises(CheckFailed) as e: check_value_loss(fn, trials=30, seed=0)
    if hint: assert hint in str(e.value)

def test_value_loss_accepts():
    assert check_value_loss(sol.my_value_loss, trials=30).ok
    def via_where(v, old, ret, m, c):   # the clipped prediction written with torch.where
        vc = torch.where(v > old + c, old + c, torch.where(v < old - c, old - c, v))
        return 0.5 * torch.where((vc - ret) ** 2 > (v - ret) ** 2, (vc - ret) ** 2, (v - ret) ** 2)[m].mean()
    assert check_value_loss(via_where, trials=30).ok
