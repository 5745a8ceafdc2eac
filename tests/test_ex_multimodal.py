"""The exercise checkers of chapter 20 (multimodal): the solutions and alternatives pass, the stub is 'not attempted', and a
table of named wrong implementations is rejected with the expected hint."""

import pytest
import torch
import torch.nn.functional as F

from llm_lab.core import CheckFailed
from llm_lab.multimodal import check_patchify, check_clip_loss, check_gated_cross_attention, patchify
from conftest import load_solution, stub

sol = load_solution('20_multimodal.py')


@pytest.mark.parametrize('check', [check_patchify, check_clip_loss, check_gated_cross_attention])
def test_stub_is_not_attempted(check):
    r = check(stub)
    assert not r.attempted and not r.ok


def _patchify_unfold(x, p):   # another correct layout of the same computation
    B, C = x.shape[:2]
    return x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * p * p)

def _clip_loss_logsoftmax(L):   # by hand, with log-softmax over both axes of the same matrix
    i = torch.arange(len(L))
    return -(L.log_softmax(1)[i, i].mean() + L.log_softmax(0)[i, i].mean()) / 2

def _xattn_sdpa(x, image, w_q, w_k, w_v, w_o, gate, n_head):   # torch's kernel, float64 in between
    B, T, d = x.shape
    h = lambda t: t.unflatten(-1, (n_head, -1)).transpose(1, 2)
    o = F.scaled_dot_product_attention(h(x @ w_q.T), h(image @ w_k.T), h(image @ w_v.T)).transpose(1, 2).reshape(B, T, d)
    return x + gate.tanh() * (o @ w_o.T)


def test_solutions_and_alternatives_pass():
    assert check_patchify(sol.my_patchify, seed=0).ok and check_patchify(_patchify_unfold, seed=1).ok
    assert check_clip_loss(sol.my_clip_loss, seed=0).ok and check_clip_loss(_clip_loss_logsoftmax, seed=1).ok
    assert check_clip_loss(lambda L: float(sol.my_clip_loss(L)), seed=2).ok          # a Python float is fine
    assert check_gated_cross_attention(sol.my_gated_cross_attention, seed=0).ok and check_gated_cross_attention(_xattn_sdpa, seed=1).ok


def _channels_last(x, p):
    B, C = x.shape[:2]
    return x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(B, -1, C * p * p)

WRONG_PATCHIFY = {
    'unfold without the transpose': (lambda x, p: F.unfold(x, p, stride=p), 'transpose'),
    'channels last inside a patch': (_channels_last, 'channel-major'),
    'patches column by column': (lambda x, p: _col_order(x, p), 'row by row'),
}

def _col_order(x, p):
    out = patchify(x, p)
    B, N, _ = out.shape
    rows, cols = x.shape[2] // p, x.shape[3] // p
    order = torch.arange(N).reshape(rows, cols).T.flatten()           # column-major order of the same patches
    return out[:, order]


@pytest.mark.parametrize('name', WRONG_PATCHIFY)
def test_patchify_rejects(name):
    fn, hint = WRONG_PATCHIFY[name]
    with pytest.raises(CheckFailed, match=hint):
        check_patchify(fn, seed=0, trials=20)


WRONG_CLIP = {
    'image→text only': (lambda L: F.cross_entropy(L, torch.arange(len(L))), 'one direction'),
    'text→image only': (lambda L: F.cross_entropy(L.T, torch.arange(len(L))), 'one direction'),
    'sum instead of mean': (lambda L: 2 * sol.my_clip_loss(L), 'average'),
    'both terms over the columns': (lambda L: _both_columns(L), 'one direction'),
    'diagonal only': (lambda L: -L.diag().mean(), 'diagonal'),
}


def _both_columns(L):   # both terms normalise over the images (columns): text→image twice
    i = torch.arange(len(L))
    return -(L.log_softmax(0)[i, i].mean() + L.T.log_softmax(1)[i, i].mean()) / 2


@pytest.mark.parametrize('name', WRONG_CLIP)
def test_clip_loss_rejects(name):
    fn, hint = WRONG_CLIP[name]
    with pytest.raises(CheckFailed, match=hint):
        check_clip_loss(fn, seed=0, trials=20)


def _variant(**kw):
    from llm_lab.multimodal import _gated_xattn_ref
    return lambda *a: _gated_xattn_ref(*a, **kw)

WRONG_XATTN = {
    'gate without tanh': (_variant(squash=False), 'tanh'),
    'no residual': (_variant(residual=False), 'residual'),
    'causal mask': (_variant(causal=True), 'causal'),
    'missing 1/sqrt(d)': (_variant(scale=False), 'sqrt'),
    'self-attention instead of cross-attention': (_variant(self_attn=True), 'from the image'),
}


@pytest.mark.parametrize('name', WRONG_XATTN)
def test_gated_cross_attention_rejects(name):
    fn, hint = WRONG_XATTN[name]
    with pytest.raises(CheckFailed, match=hint):
        check_gated_cross_attention(fn, seed=0, trials=20)
