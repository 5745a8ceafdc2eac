"""Transformer variants: parity with transformers' T5 and BLOOM code, banded vs masked attention, memory, checkers."""
import math
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from conftest import require
from llm_lab.attention import scaled_dot_product_attention
from llm_lab.variants import (VariantConfig, VariantLM, alibi_slopes, alibi_bias, t5_bucket, T5RelativeBias, allowed_mask,
                              score_mask, banded_attention, mask_tokens, topic_task, xl_loss, corpus_bytes, eval_loss,
                              plot_alibi_reach, POSITIONS)


@pytest.mark.parametrize('n_head', [1, 2, 3, 5, 8, 12, 16, 20, 32])
def test_alibi_slopes_match_bloom(n_head):
    _get_alibi_slopes = require('transformers.models.bloom.modeling_bloom')._get_alibi_slopes
    torch.testing.assert_close(alibi_slopes(n_head), _get_alibi_slopes(n_head, 'cpu'), rtol=1e-6, atol=0)


def test_alibi_bias_is_linear_in_distance():
    b = alibi_bias(4, 5, 9, offset=4)                       # queries at 4..8 among 9 keys
    assert b.shape == (4, 5, 9)
    assert torch.allclose(b[:, :, 4:].diagonal(dim1=1, dim2=2), torch.zeros(4, 5))  # a query sees itself unpenalised
    torch.testing.assert_close(b[2, 0, 0], -alibi_slopes(4)[2] * 4)


@given(st.integers(1, 16).map(lambda x: 2 * x), st.integers(1, 300), st.booleans(), st.integers(0, 2**31 - 1))
def test_t5_bucket_matches_transformers(half_buckets, extra, bidirectional, seed):
    T5Attention = require('transformers.models.t5.modeling_t5').T5Attention
    n_buckets = 2 * half_buckets
    max_distance = n_buckets + extra
    rel = torch.randint(-1000, 1000, (7, 31), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(t5_bucket(rel, bidirectional, n_buckets, max_distance),
                       T5Attention._relative_position_bucket(rel, bidirectional, n_buckets, max_distance))


def test_t5_relative_bias_shape_and_sharing():
    rb = T5RelativeBias(n_head=3, bidirectional=False, n_buckets=8, max_distance=16)
    b = rb(5, 7, offset=2)
    assert b.shape == (3, 5, 7)
    torch.testing.assert_close(b[:, 1, 1], b[:, 2, 2])      # the same distance gets the same bias


def test_allowed_mask_cases():
    causal = allowed_mask(VariantConfig(), 4, 4)
    assert torch.equal(causal, torch.ones(4, 4).tril().bool())
    assert allowed_mask(VariantConfig(causal=False), 3, 3).all()
    w = allowed_mask(VariantConfig(causal=False, window=2), 5, 5)
    assert torch.equal(w, (torch.arange(5)[:, None] - torch.arange(5)[None]).abs() < 2)
    g = allowed_mask(VariantConfig(causal=False, window=1, global_tokens=(0,)), 4, 4)
    assert g[0].all() and g[:, 0].all() and not g[2, 3]
    mem = allowed_mask(VariantConfig(), 2, 5, offset=3)      # two queries after three memory positions
    assert torch.equal(mem, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool())


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('glob', [(), (0,), (3, 40)])
@pytest.mark.parametrize('T,w', [(1, 1), (37, 5), (64, 16), (101, 33), (50, 80)])
def test_banded_equals_masked(causal, glob, T, w):
    glob = tuple(g for g in glob if g < T)
    q, k, v = torch.randn(3, 2, 3, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(T + w)).unbind(0)
    cfg = VariantConfig(causal=causal, window=w, global_tokens=glob)
    ref = scaled_dot_product_attention(q, k, v, mask=allowed_mask(cfg, T, T))
    torch.testing.assert_close(banded_attention(q, k, v, w, causal, glob), ref, atol=1e-10, rtol=1e-10)


def test_banded_builds_fewer_score_bytes():
    q = torch.randn(1, 2, 2048, 8)
    stats = {}
    banded_attention(q, q, q, 32, stats=stats)
    assert stats['score_bytes'] < 2 * 2048 * 2048 * 4 / 15


def test_banded_bad_input():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match='share one shape'): banded_attention(q, q[..., :3], q, 2)
    with pytest.raises(ValueError, match='window'): banded_attention(q, q, q, 0)


@pytest.mark.parametrize('pos', POSITIONS)
def test_no_position_plumbing_matches_torch(pos):
    "Layer attention through score_mask equals torch's SDPA with the same bias."
    torch.manual_seed(0)
    m = VariantLM(VariantConfig(pos=pos)).eval()
    x = torch.randint(0, 256, (2, 12))
    layer = m.layers[0]
    h = layer.ln1(m.embed(x, 0))
    q, k, v = layer.attn.qkv(h)
    bias = m.bias(12, 12, 0)
    mask = score_mask(m.cfg, 12, 12, 0, bias)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=mask), ref, atol=1e-6, rtol=1e-6)


def test_causal_model_ignores_the_future():
    torch.manual_seed(0)
    m = VariantLM(VariantConfig(pos='alibi')).eval()
    a, b = torch.randint(0, 256, (2, 1, 20)).unbind(0)
    b[:, :10] = a[:, :10]
    torch.testing.assert_close(m(a)[0][:, :10], m(b)[0][:, :10])


def test_memory_is_used_and_detached():
    torch.manual_seed(0)
    m = VariantLM(VariantConfig(vocab_size=16, context_len=4, pos='t5', mem_len=4))
    seq = topic_task(2, 9, 16, 3, torch.Generator().manual_seed(0))
    _, _, mems = m(seq[:, :4])
    assert len(mems) == m.cfg.n_layer and mems[0].shape == (2, 4, m.cfg.d_model) and not mems[0].requires_grad
    with_mem, _, _ = m(seq[:, 4:8], mems=mems)
    without, _, _ = m(seq[:, 4:8])
    assert not torch.allclose(with_mem, without)
    losses = xl_loss(m, seq, 4)
    assert len(losses) == 2 and all(torch.isfinite(l) for l in losses)


def test_learned_positions_refuse_longer_inputs():
    m = VariantLM(VariantConfig(pos='learned', context_len=8))
    with pytest.raises(ValueError, match='cannot extrapolate'): m(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r'token id 300 is outside \[0, 256\)'): m(torch.full((1, 4), 300))
    assert m(torch.zeros(1, 8, dtype=torch.long))[0].shape == (1, 8, 256)


def test_config_validation():
    with pytest.raises(ValueError, match='pos must be'): VariantConfig(pos='absolute')
    with pytest.raises(ValueError, match='divisible'): VariantConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match='window'): VariantConfig(window=0)
    with pytest.raises(ValueError, match='positive'): VariantConfig(n_layer=0)


def test_mask_tokens_statistics_and_labels():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (200, 200), generator=g)
    inp, lab = mask_tokens(ids, 100, 100, generator=g)
    chosen = lab != -100
    assert torch.equal(lab[chosen], ids[chosen]) and torch.equal(inp[~chosen], ids[~chosen])
    n = chosen.sum().item()
    assert abs(n / ids.numel() - 0.15) < 4 * math.sqrt(0.15 * 0.85 / ids.numel())
    assert abs((inp[chosen] == 100).float().mean().item() - 0.8) < 4 * math.sqrt(0.16 / n)
    with pytest.raises(ValueError): mask_tokens(ids, 100, 100, p=1.5)


def test_eval_loss_reads_the_same_bytes():
    data = corpus_bytes(20_000)
    m = VariantLM(VariantConfig(pos='alibi')).eval()
    assert math.isfinite(eval_loss(m, data, 32, n_bytes=2048)) and math.isfinite(eval_loss(m, data, 256, n_bytes=2048))


def test_sinusoidal_embeddings_at_the_table_scale():
    "Token embeddings × √d at unit scale, like the sine table (a 0.02-scale embedding drowned in it and barely learned)."
    m = VariantLM(VariantConfig(pos='sinusoidal'))
    idx = torch.randint(0, 256, (4, 64))
    tok = m.embed(idx, 0) - m.pe[:64]
    ratio = tok.pow(2).mean().sqrt().item() / m.pe[:64].pow(2).mean().sqrt().item()
    assert 0.5 < ratio < 2, ratio


def test_plot_alibi_reach():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ax = plot_alibi_reach(4, 32)
    assert len(ax.lines) == 4 and ax.get_title() == 'ALiBi with 4 heads'
    plt.close('all')
