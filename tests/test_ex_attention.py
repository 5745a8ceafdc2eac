"""The exercise checkers of chapter 05 (llm_lab.attention): each accepts correct work written in other ways (layouts,
dtypes, ways to avoid NaN), rejects the usual mistakes with a hint naming it, and says 'not written yet' to the stub."""
import math

import pytest
import torch
from einops import rearrange

from llm_lab.core import CheckFailed
from llm_lab.attention import (Attention, causal_mask, check_attention, check_causal_mask, check_causal_self_attention,
                               check_packed_causal_mask, check_repeat_kv, document_ids, packed_causal_mask, repeat_kv,
                               scaled_dot_product_attention)


def stub(*args): raise NotImplementedError


@pytest.mark.parametrize('checker', [check_attention, check_causal_self_attention, check_packed_causal_mask,
                                     check_causal_mask, check_repeat_kv])
def test_stub_is_not_attempted(checker, capsys):
    report = checker(stub)
    assert not report.attempted and not report.ok and 'not written yet' in capsys.readouterr().out


def _expect_hint(checker, fn, hint, **kw):
    with pytest.raises(CheckFailed) as e: checker(fn, seed=0, **kw)
    msg = str(e.value)
    assert 'trial' in msg and hint in msg, msg


# ---------------------------------------------------------------- exercise 1: attention with a mask
def attn_ok(q, k, v, m):
    "Correct, written out: finite row max, clamped denominator."
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~m, float('-inf'))
    mx = s.amax(-1, keepdim=True).nan_to_num(0.0, neginf=0.0)
    e = (s - mx).exp()
    return (e / e.sum(-1, keepdim=True).clamp_min(1e-30)) @ v


def attn_ok_float64(q, k, v, m):
    "Correct in float64, with an additive mask and nan_to_num: a different dtype and way to avoid NaN."
    bias = torch.zeros(m.shape, dtype=torch.float64).masked_fill(~m, float('-inf'))
    w = torch.softmax(q.double() @ k.double().transpose(-2, -1) / q.shape[-1] ** 0.5 + bias, -1).nan_to_num(0.0)
    return w @ v.double()


def attn_torch_fixed(q, k, v, m):
    "Correct: torch's kernel with empty rows zeroed."
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m).nan_to_num(0.0) * m.any(-1, keepdim=True)


def _naive(q, k, v, m, scale, dim=-1):
    s = (q @ k.transpose(-2, -1)) * scale
    return s.masked_fill(~m, float('-inf')).softmax(dim).nan_to_num(0.0) @ v


@pytest.mark.parametrize('fn', [attn_ok, attn_ok_float64, attn_torch_fixed,
                                lambda q, k, v, m: scaled_dot_product_attention(q, k, v, mask=m)])
def test_attention_accepts_correct(fn):
    assert check_attention(fn, trials=30, seed=0).ok


@pytest.mark.parametrize('name,fn,hint', [
    ('NaN on fully masked rows', lambda q, k, v, m: ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).masked_fill(~m, float('-inf')).softmax(-1) @ v, 'NaN'),
    ('missing 1/sqrt(d)', lambda q, k, v, m: _naive(q, k, v, m, 1.0), 'missing 1/√d'),
    ('divided by d', lambda q, k, v, m: _naive(q, k, v, m, 1 / q.shape[-1]), 'divided the scores by d'),
    ('mask inverted', lambda q, k, v, m: _naive(q, k, v, ~m, q.shape[-1] ** -0.5), 'the mask is inverted'),
    ('softmax over the wrong axis', lambda q, k, v, m: _naive(q, k, v, m, q.shape[-1] ** -0.5, dim=-2), 'softmax over the wrong axis'),
])
def test_attention_rejects(name, fn, hint):
    _expect_hint(check_attention, fn, hint)


# ---------------------------------------------------------------- exercise 2: causal multi-head self-attention
def mha_ok(x, w_qkv, w_o, n_head):
    "Correct, the chapter's way: the library's Attention with the given weights (no biases)."
    attn = Attention(x.shape[-1], n_head, bias=False)
    with torch.no_grad(): attn.qkv_proj.weight.copy_(w_qkv); attn.o_proj.weight.copy_(w_o)
    return attn(x, is_causal=True).detach()


def mha_per_head_loop(x, w_qkv, w_o, n_head):
    "Correct, another layout: a Python loop over heads with view/transpose and an additive -inf mask."
    B, T, d = x.shape; D = d // n_head
    q, k, v = (x @ w_qkv.T).chunk(3, -1)
    bias = torch.full((T, T), float('-inf')).triu(1)
    outs = []
    for h in range(n_head):
        sl = slice(h * D, (h + 1) * D)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(-2, -1) / math.sqrt(D) + bias, -1)
        outs.append(w @ v[..., sl])
    return torch.cat(outs, -1) @ w_o.T


def _mha(x, w_qkv, w_o, n_head, diagonal=0, heads='(h d)', merged='(h d)', scale=None, dim=-1):
    "The usual mistakes, written independently of the module's own variants."
    B, T, d = x.shape
    q, k, v = (x @ w_qkv.T).split(d, -1)
    if heads == 'view': q, k, v = (t.reshape(B, n_head, T, d // n_head) for t in (q, k, v))
    else: q, k, v = (rearrange(t, f'b t {heads} -> b h t d', h=n_head) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-2, -1) * scale).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(diagonal), float('-inf'))
    y = s.softmax(dim) @ v
    y = y.reshape(B, T, d) if merged == 'view' else rearrange(y, f'b h t d -> b t {merged}', h=n_head)
    return y @ w_o.T


@pytest.mark.parametrize('fn', [mha_ok, mha_per_head_loop])
def test_causal_self_attention_accepts_correct(fn):
    assert check_causal_self_attention(fn, trials=30, seed=0).ok


@pytest.mark.parametrize('name,fn,hint', [
    ('off-by-one causal mask: diagonal masked (NaN row 0)', lambda *a: _mha(*a, diagonal=-1), 'is the diagonal masked'),
    ('off-by-one causal mask: diagonal masked (rows zeroed)', lambda *a: _mha(*a, diagonal=-1).nan_to_num(0.0), 'the diagonal is masked'),
    ('off-by-one causal mask: next token visible', lambda *a: _mha(*a, diagonal=1), 'each token also sees the next one'),
    ('no causal mask', lambda *a: _mha(*a, diagonal=10**6), 'no causal mask'),
    ('heads split in the wrong order (d h)', lambda *a: _mha(*a, heads='(d h)', merged='(d h)'), 'heads split in the wrong order'),
    ('heads split in the wrong order (d h), merged right', lambda *a: _mha(*a, heads='(d h)'), 'heads split in the wrong order'),
    ('heads split by a view without transpose', lambda *a: _mha(*a, heads='view', merged='view'), 'heads split in the wrong order'),
    ('heads merged by a view without transpose', lambda *a: _mha(*a, merged='view'), 'heads merged in the wrong order'),
    ('heads merged in the wrong order', lambda *a: _mha(*a, merged='(d h)'), 'heads merged in the wrong order'),
    ('scaled by 1/sqrt(d_model)', lambda x, *a: _mha(x, *a, scale=x.shape[-1] ** -0.5), 'scaled by 1/√d_model'),
    ('missing 1/sqrt(d)', lambda *a: _mha(*a, scale=1.0), 'missing 1/√d'),
    ('softmax over the wrong axis', lambda *a: _mha(*a, dim=-2), 'softmax over the wrong axis'),
])
def test_causal_self_attention_rejects(name, fn, hint):
    _expect_hint(check_causal_self_attention, fn, hint, trials=30)


# ---------------------------------------------------------------- exercise 3: the mask of packed sequences
def packed_loop(pos):
    "Correct, another way: Python loops, (B, T, T) output, document starts where the position is 0 (HF's rule)."
    B, T = pos.shape
    out = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        doc, docs = -1, []
        for t in range(T): doc += 1 if t == 0 or pos[b, t] == 0 else 0; docs.append(doc)
        for i in range(T):
            for j in range(i + 1): out[b, i, j] = docs[i] == docs[j]
    return out


def packed_positions_only(pos): return pos[:, None, :] <= pos[:, :, None]
def packed_plain_causal(pos): return causal_mask(pos.shape[-1]).expand(pos.shape[0], -1, -1)
def _same(pos): d = document_ids(pos); return d[:, :, None] == d[:, None, :]


@pytest.mark.parametrize('fn', [packed_loop, packed_causal_mask, lambda p: packed_causal_mask(p)[:, 0].int()])
def test_packed_mask_accepts_correct(fn):
    assert check_packed_causal_mask(fn, trials=60, seed=0).ok


@pytest.mark.parametrize('name,fn,hint', [
    ('documents see each other (plain causal)', packed_plain_causal, 'documents see each other'),
    ('positions compared, documents ignored', packed_positions_only, 'comparing positions is not enough'),
    ('diagonal masked', lambda p: _same(p) & causal_mask(p.shape[-1]).tril(-1), 'the diagonal'),
    ('not causal within a document', _same, 'not causal'),
])
def test_packed_mask_rejects(name, fn, hint):
    _expect_hint(check_packed_causal_mask, fn, hint, trials=60)


# ---------------------------------------------------------------- the other checkers
def test_causal_mask_and_repeat_kv_checkers():
    assert check_causal_mask(lambda tq, tk: torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq), seed=0).ok
    _expect_hint(check_causal_mask, lambda tq, tk: torch.ones(tq, tk, dtype=torch.bool).tril(), "top-left", trials=30)
    assert check_repeat_kv(lambda x, r: x.repeat_interleave(r, dim=1), seed=0).ok
    _expect_hint(check_repeat_kv, lambda x, r: x.repeat(1, r, 1, 1), 'wrong order', trials=30)
