"Tests for llm_lab.attention: parity with torch's scaled_dot_product_attention and nn.MultiheadAttention, masks, GQA, checkers."
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from llm_lab.core import CheckFailed
from llm_lab.attention import (causal_mask, padding_mask, attention_weights, repeat_kv, scaled_dot_product_attention,
                               split_heads, merge_heads, Attention, plot_attention,
                               check_attention, check_causal_mask, check_repeat_kv)

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}


def _qkv(g, B, H, Hkv, Tq, Tk, D, dtype):
    q = torch.randn(B, H, Tq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype)
    return q, k, v


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 3), H=st.integers(1, 4), Tq=st.integers(1, 9), Tk=st.integers(1, 9), D=st.integers(1, 16),
       kind=st.sampled_from(['none', 'causal', 'bool', 'float', 'padding']), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_sdpa_matches_torch(B, H, Tq, Tk, D, kind, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = _qkv(g, B, H, H, Tq, Tk, D, dtype)
    mask, causal = None, False
    if kind == 'causal': causal = True
    elif kind == 'bool': mask = torch.rand(B, 1, Tq, Tk, generator=g) > 0.4
    elif kind == 'float': mask = torch.randn(Tq, Tk, generator=g).to(dtype)
    elif kind == 'padding': mask = padding_mask(torch.randint(0, Tk + 1, (B,), generator=g), Tk)
    ours = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert not ours.isnan().any()
    if kind in ('bool', 'padding', 'causal'):  # rows with nothing to attend to: ours are zeros by contract
        allowed = torch.ones(Tq, Tk, dtype=torch.bool) if mask is None else mask
        if causal: allowed = allowed & torch.ones(Tq, Tk, dtype=torch.bool).tril()
        empty = ~allowed.expand(B, H, Tq, Tk).any(-1)  # (B, H, Tq)
        assert (ours[empty] == 0).all()
        theirs = theirs.masked_fill(empty[..., None], 0.0)  # older torch versions give NaN there
    torch.testing.assert_close(ours, theirs, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize('H,Hkv', [(4, 4), (4, 2), (6, 1)])
def test_sdpa_gqa_and_dtypes(dtype, H, Hkv):
    g = torch.Generator().manual_seed(H * 10 + Hkv)
    q, k, v = _qkv(g, 2, H, Hkv, 7, 7, 8, dtype)
    ours = scaled_dot_product_attention(q, k, v, is_causal=True)
    theirs = F.scaled_dot_product_attention(q, repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv), is_causal=True)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.double(), theirs.double(), atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(ours.double(), F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).double(),
                               atol=TOL[dtype], rtol=TOL[dtype])


def test_fully_masked_rows_are_zero_with_finite_grads():
    q, k, v = (torch.randn(1, 2, 4, 8, requires_grad=True) for _ in range(3))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert (out == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    w = attention_weights(q, k, mask=torch.tensor([[True, False, False, False]] + [[False] * 4] * 3))
    assert torch.allclose(w[..., 0, 0], torch.ones(())) and (w[..., 1:, :] == 0).all()


def test_masks():
    assert torch.equal(causal_mask(3), torch.ones(3, 3, dtype=torch.bool).tril())
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert torch.equal(causal_mask(2, 4, offset=0), torch.ones(2, 4, dtype=torch.bool).tril())
    pm = padding_mask(torch.tensor([2, 0]), 3)
    assert pm.shape == (2, 1, 1, 3) and pm[:, 0, 0].tolist() == [[True, True, False], [False, False, False]]
    with pytest.raises(ValueError, match='lengths'): padding_mask(torch.tensor([5]), 3)


def test_clear_errors():
    q = torch.randn(1, 4, 3, 8)
    with pytest.raises(ValueError, match='multiple of the kv heads'): scaled_dot_product_attention(q, torch.randn(1, 3, 3, 8), torch.randn(1, 3, 3, 8))
    with pytest.raises(ValueError, match='last dimension'): scaled_dot_product_attention(q, torch.randn(1, 4, 3, 7), torch.randn(1, 4, 3, 7))
    with pytest.raises(ValueError, match='broadcast'): scaled_dot_product_attention(q, q, q, mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match='bool'): scaled_dot_product_attention(q, q, q, mask=torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match='divisible'): Attention(30, 4)
    with pytest.raises(ValueError, match='separate projections'): Attention(32, 4)(torch.randn(1, 3, 32), torch.randn(1, 2, 32))
    with pytest.raises(ValueError, match=r'\(B, T, 32\)'): Attention(32, 4)(torch.randn(3, 16))


def test_heads_roundtrip():
    x = torch.randn(2, 5, 12)
    assert torch.equal(split_heads(x, 4), x.view(2, 5, 4, 3).transpose(1, 2))
    assert torch.equal(merge_heads(split_heads(x, 4)), x)
    y = torch.randn(2, 3, 4, 5)
    assert repeat_kv(y, 1) is y and torch.equal(repeat_kv(y, 2), y.repeat_interleave(2, dim=1))


@pytest.mark.parametrize('impl', ['manual', 'sdpa'])
def test_attention_matches_nn_multihead(impl):
    torch.manual_seed(0)
    ours, theirs = Attention(32, 4, impl=impl), nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv_proj.weight); theirs.in_proj_bias.copy_(ours.qkv_proj.bias)
        theirs.out_proj.load_state_dict(ours.o_proj.state_dict())
    x = torch.randn(2, 6, 32)
    keep = padding_mask(torch.tensor([6, 3]), 6)
    m = keep & causal_mask(6)
    want, _ = theirs(x, x, x, attn_mask=~causal_mask(6), key_padding_mask=~keep[:, 0, 0], need_weights=False)
    torch.testing.assert_close(ours(x, mask=keep, is_causal=True), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x, mask=m), want, atol=1e-5, rtol=1e-5)


def test_fused_equals_separate_and_cross_attention():
    torch.manual_seed(0)
    sep = Attention(32, 8, n_kv_head=2, fused=False)
    fused = Attention(32, 8, n_kv_head=2, fused=True)
    with torch.no_grad():
        fused.qkv_proj.weight.copy_(torch.cat([sep.q_proj.weight, sep.k_proj.weight, sep.v_proj.weight]))
        fused.qkv_proj.bias.copy_(torch.cat([sep.q_proj.bias, sep.k_proj.bias, sep.v_proj.bias]))
        fused.o_proj.load_state_dict(sep.o_proj.state_dict())
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    torch.testing.assert_close(sep(x, is_causal=True), fused(x, is_causal=True), atol=1e-5, rtol=1e-5)
    sdpa = Attention(32, 8, n_kv_head=2, fused=False, impl='sdpa'); sdpa.load_state_dict(sep.state_dict())
    keep = padding_mask(torch.tensor([3, 1]), 3)
    torch.testing.assert_close(sep(x, ctx, mask=keep), sdpa(x, ctx, mask=keep), atol=1e-5, rtol=1e-5)
    assert sep.q_proj.weight.shape == (32, 32) and sep.k_proj.weight.shape == (8, 32)  # out x in


def test_plot_attention():
    import matplotlib; matplotlib.use('Agg')
    ax = plot_attention(torch.rand(2, 3, 4, 4).softmax(-1), list('abcd'), layer=1, head=2)
    assert ax.get_xlabel().startswith('key')
    with pytest.raises(ValueError, match='len\\(tokens\\)'): plot_attention(torch.rand(4, 4), list('abc'))


def test_checkers_accept_reference():
    assert check_causal_mask(lambda tq, tk: causal_mask(tq, tk)).ok
    assert check_attention(lambda q, k, v, m: scaled_dot_product_attention(q, k, v, mask=m)).ok
    assert check_repeat_kv(repeat_kv).ok


def test_checkers_reject_wrong():
    with pytest.raises(CheckFailed): check_causal_mask(lambda tq, tk: torch.ones(tq, tk, dtype=torch.bool).tril(), trials=30, seed=0)
    # no scaling by 1/sqrt(d)
    def unscaled(q, k, v, m): return scaled_dot_product_attention(q, k, v, mask=m, scale=1.0)
    with pytest.raises(CheckFailed): check_attention(unscaled, seed=0)
    # torch.softmax on a fully masked row: NaN instead of zeros
    def nan_rows(q, k, v, m):
        s = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
        return s.masked_fill(~m, float('-inf')).softmax(-1) @ v
    with pytest.raises(CheckFailed): check_attention(nan_rows, seed=0)
    # repeat instead of repeat_interleave: kv heads in the wrong order
    with pytest.raises(CheckFailed): check_repeat_kv(lambda x, r: x.repeat(1, r, 1, 1), trials=30, seed=0)
