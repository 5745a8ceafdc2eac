"Tests for llm_lab.attention: parity with torch's scaled_dot_product_attention and nn.MultiheadAttention, masks, GQA, checkers."
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from llm_lab.core import CheckFailed
from llm_lab.attention import (causal_mask, padding_mask, attention_weights, repeat_kv, scaled_dot_product_attention,
                               split_heads, merge_heads, Attention, plot_attention, document_ids, packed_causal_mask)

# A few times the largest error measured against torch's kernel over 300 random cases (f64 8.9e-16, f32 4.8e-7, bf16 1.6e-2).
TOL = {torch.float64: 5e-15, torch.float32: 2e-6, torch.bfloat16: 3e-2}
MHA_TOL = 1e-6  # nn.MultiheadAttention vs ours in float32: 1.5e-7 measured


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
    with pytest.raises(ValueError, match=r'mask of shape \(5, 5\) does not fit the scores \(\.\.\., Tq=3, Tk=3\)'):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match='bool'): scaled_dot_product_attention(q, q, q, mask=torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match='divisible'): Attention(30, 4)
    with pytest.raises(ValueError, match='n_head must be a positive int, got 0'): Attention(32, 0)
    with pytest.raises(ValueError, match='n_kv_head must be a positive int, got 0'): Attention(32, 4, n_kv_head=0)
    with pytest.raises(ValueError, match='d_model must be a positive int'): Attention(32.0, 4)
    with pytest.raises(ValueError, match='multiple of n_kv_head'): Attention(32, 4, n_kv_head=3)
    with pytest.raises(ValueError, match='n_head must be a positive int, got 0'): split_heads(torch.randn(1, 3, 8), 0)
    with pytest.raises(ValueError, match='n_head must be a positive int'): split_heads(torch.randn(1, 3, 8), 2.0)
    with pytest.raises(ValueError, match='divisible'): split_heads(torch.randn(1, 3, 8), 3)
    with pytest.raises(ValueError, match=r'\(B, T, H\*D\)'): split_heads(torch.randn(3, 8), 2)
    with pytest.raises(ValueError, match='separate projections'): Attention(32, 4)(torch.randn(1, 3, 32), torch.randn(1, 2, 32))
    with pytest.raises(ValueError, match=r'\(B, T, 32\)'): Attention(32, 4)(torch.randn(3, 16))


def test_wrong_mask_shapes_are_refused():
    "Masks that would broadcast into the wrong thing, or not at all, raise an error naming the expected shape."
    attn, x = Attention(32, 4), torch.randn(2, 5, 32)
    lengths_as_mask = torch.ones(2, 5, dtype=torch.bool)  # (B, T): the classic mistake, broadcast over (Tq, Tk)
    with pytest.raises(ValueError, match=r'padding_mask\(lengths, Tk\)'): attn(x, mask=lengths_as_mask)
    with pytest.raises(ValueError, match='at most 4 dims'): attn(x, mask=torch.ones(1, 2, 4, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match='does not fit'): attn(x, mask=torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match='does not broadcast'): attn(x, mask=torch.ones(3, 1, 5, 5, dtype=torch.bool))
    assert attn(x, mask=padding_mask(torch.tensor([5, 2]), 5)).shape == (2, 5, 32)
    assert attn(x, mask=torch.ones(5, dtype=torch.bool)).shape == (2, 5, 32)  # a (Tk,) key mask broadcasts correctly


def test_document_ids_and_packed_mask():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [5, 6, 0, 1, 2, 3]])  # the second row starts mid-document
    assert document_ids(pos).tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 1]]
    m = packed_causal_mask(pos)
    assert m.shape == (2, 1, 6, 6)
    assert m[0, 0].int().tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                                      [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]
    assert torch.equal(packed_causal_mask(torch.arange(4)), causal_mask(4)[None, None])  # one document: plain causal
    with pytest.raises(TypeError, match='integers'): document_ids(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r'\(B, T\) or \(T,\)'): document_ids(torch.zeros(1, 2, 3, dtype=torch.long))


@pytest.mark.parametrize('impl', ['manual', 'sdpa'])
def test_packed_attention_equals_one_document_at_a_time(impl):
    torch.manual_seed(0)
    attn = Attention(32, 4, n_kv_head=2, impl=impl)
    lens = [[3, 1, 4], [2, 6]]
    xs = [[torch.randn(1, n, 32) for n in row] for row in lens]
    x = torch.cat([torch.cat(row, 1) for row in xs], 0)                                      # (2, 8, 32)
    pos = torch.tensor([[i for n in row for i in range(n)] for row in lens])                  # (2, 8)
    want = torch.cat([torch.cat([attn(xi, is_causal=True) for xi in row], 1) for row in xs], 0)
    torch.testing.assert_close(attn(x, token_positions=pos), want, atol=MHA_TOL, rtol=MHA_TOL)
    keep = padding_mask(torch.tensor([8, 7]), 8)  # combine with a padding mask: the last token of row 1 is hidden
    out = attn(x, mask=keep, token_positions=pos)
    torch.testing.assert_close(out[0], want[0], atol=MHA_TOL, rtol=MHA_TOL)
    torch.testing.assert_close(out[1, :2], want[1, :2], atol=MHA_TOL, rtol=MHA_TOL)
    with pytest.raises(ValueError, match='cannot be used with a context'):
        Attention(32, 4, fused=False)(x, torch.randn(2, 3, 32), token_positions=pos)
    with pytest.raises(ValueError, match=r'token_positions must have shape \(B, T\) = \(2, 8\)'): attn(x, token_positions=pos[:, :5])


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
    torch.testing.assert_close(ours(x, mask=keep, is_causal=True), want, atol=MHA_TOL, rtol=MHA_TOL)
    torch.testing.assert_close(ours(x, mask=m), want, atol=MHA_TOL, rtol=MHA_TOL)


def test_fused_equals_separate_and_cross_attention():
    torch.manual_seed(0)
    sep = Attention(32, 8, n_kv_head=2, fused=False)
    fused = Attention(32, 8, n_kv_head=2, fused=True)
    with torch.no_grad():
        fused.qkv_proj.weight.copy_(torch.cat([sep.q_proj.weight, sep.k_proj.weight, sep.v_proj.weight]))
        fused.qkv_proj.bias.copy_(torch.cat([sep.q_proj.bias, sep.k_proj.bias, sep.v_proj.bias]))
        fused.o_proj.load_state_dict(sep.o_proj.state_dict())
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    torch.testing.assert_close(sep(x, is_causal=True), fused(x, is_causal=True), atol=MHA_TOL, rtol=MHA_TOL)
    sdpa = Attention(32, 8, n_kv_head=2, fused=False, impl='sdpa'); sdpa.load_state_dict(sep.state_dict())
    keep = padding_mask(torch.tensor([3, 1]), 3)
    torch.testing.assert_close(sep(x, ctx, mask=keep), sdpa(x, ctx, mask=keep), atol=MHA_TOL, rtol=MHA_TOL)
    assert sep.q_proj.weight.shape == (32, 32) and sep.k_proj.weight.shape == (8, 32)  # out x in


def test_plot_attention():
    import matplotlib; matplotlib.use('Agg')
    ax = plot_attention(torch.rand(2, 3, 4, 4).softmax(-1), list('abcd'), layer=1, head=2)
    assert ax.get_xlabel().startswith('key')
    with pytest.raises(ValueError, match='len\\(tokens\\)'): plot_attention(torch.rand(4, 4), list('abc'))
