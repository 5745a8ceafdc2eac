"""The exercise checkers of chapter 16 reject named wrong implementations (with their hint), report stubs as not attempted,
and accept the solutions and alternative correct implementations."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llm_lab.core import CheckFailed
from llm_lab.preference import check_dpo_loss, check_group_advantages

_spec = importlib.util.spec_from_file_location('sol16', Path(__file__).parents[1] / 'solutions' / '16_preference.py')
sol = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(sol)


def stub(*args): raise NotImplementedError


@pytest.mark.parametrize('check', [check_dpo_loss, check_group_advantages])
def test_stub_is_not_attempted(check):
    report = check(stub)
    assert report.attempted is False and not report.ok


@pytest.mark.parametrize('fn, hint', [
    (lambda c, r, rc, rr, b: -F.logsigmoid(b * (c - r)), 'log-RATIO'),
    (lambda c, r, rc, rr, b: -F.logsigmoid((c - rc) - (r - rr)), 'beta'),
    (lambda c, r, rc, rr, b: -F.logsigmoid(b * ((r - rr) - (c - rc))), 'chosen first'),
    (lambda c, r, rc, rr, b: -F.logsigmoid(b * ((c - rc) - (r - rr))).mean(), 'one loss per pair'),
    (lambda c, r, rc, rr, b: F.logsigmoid(b * ((c - rc) - (r - rr))), None),
], ids=['no reference', 'no beta', 'chosen and rejected swapped', 'batch mean', 'sign'])
def test_dpo_loss_rejects(fn, hint):
    with pytest.raises(CheckFailed) as e: check_dpo_loss(fn, trials=20, seed=0)
    if hint: assert hint in str(e.value)


def test_dpo_loss_accepts():
    assert check_dpo_loss(sol.my_dpo_loss, trials=20).ok
    softplus = lambda c, r, rc, rr, b: F.softplus(-b * ((c - rc) - (r - rr)))         # -log sigmoid(x) = softplus(-x)
    assert check_dpo_loss(softplus, trials=20).ok


@pytest.mark.parametrize('fn, hint', [
    (lambda r, eps: (r - r.mean()) / (r.std() + eps), 'within each group'),
    (lambda r, eps: (r - r.mean(-1, keepdim=True)) / r.std(-1, keepdim=True), 'add eps'),
    (lambda r, eps: (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True, unbiased=False) + eps), 'unbiased'),
    (lambda r, eps: r - r.mean(-1, keepdim=True), None),
], ids=['batch statistics', 'no eps', 'biased std', 'not scaled'])
def test_group_advantages_rejects(fn, hint):
    with pytest.raises(CheckFailed) as e: check_group_advantages(fn, trials=20, seed=0)
    if hint: assert hint in str(e.value)


def test_group_advantages_accepts():
    assert check_group_advantages(sol.my_group_advantages, trials=20).ok
    def loop(r, eps):   # one group at a time
        return torch.stack([(row - row.mean()) / (row.std() + eps) for row in r])
    assert check_group_advantages(loop, trials=20).ok
