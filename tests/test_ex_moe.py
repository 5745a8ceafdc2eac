"""The exercise checkers of chapter 14: each accepts the solution and another correct implementation, reports a stub as
not attempted without raising, and rejects a table of named wrong implementations (with the hint where one is given)."""

import pytest
import torch
import torch.nn.functional as F

from llm_lab.core import CheckFailed
from llm_lab.moe import check_moe_forward, check_load_balancing_loss
from conftest import load_solution, stub

sol = load_solution('14_moe.py')


def test_stubs_not_attempted():
    for check in (check_moe_forward, check_load_balancing_loss):
        r = check(stub)
        assert not r.attempted and not r.ok


def test_solutions_pass():
    assert check_moe_forward(sol.my_moe_forward, seed=0).ok
    assert check_load_balancing_loss(sol.my_load_balancing_loss, seed=0).ok


def moe_dense_masked(x, rw, gu, dn, k):  # correct too: softmax over the k top logits, every expert on every token, masked
    logits = x @ rw.t(); top, idx = logits.topk(k, -1)
    w = torch.zeros_like(logits).scatter(-1, idx, F.softmax(top, -1))          # = renormalised top-k probabilities
    gate, up = torch.einsum('nd,efd->enf', x, gu).chunk(2, -1)
    y = torch.einsum('enf,edf->end', F.silu(gate) * up, dn)                    # (E, N, d)
    return torch.einsum('ne,end->nd', w, y)

def lb_bincount(logits, k):  # correct: counts with bincount, a float result
    E = logits.shape[-1]; p = logits.softmax(-1)
    f = torch.bincount(p.topk(k, -1).indices.reshape(-1), minlength=E).double() / logits.shape[0]
    return float(E * (f * p.mean(0)).sum())

def test_alternative_correct_implementations_pass():
    assert check_moe_forward(moe_dense_masked, seed=1).ok
    assert check_load_balancing_loss(lb_bincount, seed=1).ok


def _moe(normalize=True, act=F.silu, swap=False, k_override=None):
    def fn(x, rw, gu, dn, k):
        k = k_override or k
        p = F.softmax(x @ rw.t(), -1); w, idx = p.topk(k, -1)
        if normalize: w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(rw.shape[0]):
            tok, slot = torch.where(idx == e); a, b = (x[tok] @ gu[e].t()).chunk(2, -1)
            if swap: a, b = b, a
            out.index_add_(0, tok, (act(a) * b) @ dn[e].t() * w[tok, slot, None])
        return out
    return fn

def moe_softmax_over_all_then_weights_unsorted(x, rw, gu, dn, k):  # uses the expert id as the weight index: wrong
    p = F.softmax(x @ rw.t(), -1); w, idx = p.topk(k, -1); w = w / w.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(rw.shape[0]):
        tok, slot = torch.where(idx == e); a, b = (x[tok] @ gu[e].t()).chunk(2, -1)
        out.index_add_(0, tok, (F.silu(a) * b) @ dn[e].t() * p[tok, e, None])
    return out

MOE_WRONG = {
    'weights not renormalised': (_moe(normalize=False), 'renormalised'),
    'gate and up swapped': (_moe(swap=True), 'gate rows first'),
    'GELU experts': (_moe(act=F.gelu), 'SiLU'),
    'top-1 instead of top-k': (_moe(k_override=1), 'top-1'),
    'raw probability as weight': (moe_softmax_over_all_then_weights_unsorted, None),
}

@pytest.mark.parametrize('name', list(MOE_WRONG))
def test_moe_wrong_rejected(name):
    fn, hint = MOE_WRONG[name]
    with pytest.raises(CheckFailed) as e: check_moe_forward(fn, seed=0)
    if hint: assert hint in str(e.value)


def _lb(no_e=False, by_k=False, top1=False, probs_of_chosen=False):
    def fn(logits, k):
        E = logits.shape[-1]; p = F.softmax(logits, -1); ids = p.topk(1 if top1 else k, -1).indices
        f = F.one_hot(ids, E).sum(1).double().mean(0)
        P = (p * F.one_hot(ids, E).sum(1)).mean(0) if probs_of_chosen else p.mean(0)
        return (1 if no_e else E) * (f * P).sum() / (k if by_k else 1)
    return fn

LB_WRONG = {
    'missing the factor E': (_lb(no_e=True), 'number of experts E'),
    'f divided by N·k': (_lb(by_k=True), 'not by N·k'),
    'counts only the first choice': (_lb(top1=True), 'all k choices'),
    'P over the chosen experts only': (_lb(probs_of_chosen=True), None),
}

@pytest.mark.parametrize('name', list(LB_WRONG))
def test_lb_wrong_rejected(name):
    fn, hint = LB_WRONG[name]
    with pytest.raises(CheckFailed) as e: check_load_balancing_loss(fn, seed=0)
    if hint: assert hint in str(e.value)
