"Tests for llm_lab.model: config, parameter and FLOP counts, both block styles, KV cache, sampling, GPT-2 loading, errors, seq2seq, checkers."
import json, math, sys
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_lab.core import CheckFailed
from llm_lab.attention import padding_mask
from llm_lab.model import (GPTConfig, GPT, RMSNorm, MLP, SwiGLU, RotaryEmbedding, MultiHeadAttention, Block, KVCache,
                           make_norm, sinusoidal_positions, apply_rotary, rotate_half, top_k_filter, top_p_filter, sample_next,
                           flops_per_token, check_state_dict, gpt2_config_from_hf, EncoderLayer, DecoderLayer,
                           Seq2SeqTransformer, check_rmsnorm, check_rope, check_top_p)

TINY = dict(vocab_size=97, context_len=32, n_layer=2, n_head=4, d_model=32)
CONFIGS = {
    'gpt2': GPTConfig.gpt2(**TINY),
    'llama': GPTConfig.llama(**TINY),
    'llama-gqa': GPTConfig.llama(**TINY, n_kv_head=2),
    'mqa-sinusoidal': GPTConfig.gpt2(**TINY, n_kv_head=1, pos='sinusoidal', bias=False, tie_embeddings=False),
    'nopos-manual': GPTConfig.gpt2(**TINY, pos='none', attn_impl='manual', norm='rmsnorm', mlp='swiglu'),
}


# ---------------------------------------------------------------- config
def test_config_defaults_and_resolution():
    c = GPTConfig()
    assert (c.vocab_size, c.context_len, c.n_layer, c.n_head, c.d_model) == (512, 128, 4, 4, 128)
    assert c.n_kv_head == 4 and c.d_ff == 512 and c.attn_impl == 'sdpa' and c.d_head == 32
    assert GPTConfig(mlp='swiglu', d_model=128).d_ff == 352  # int(8*128/3)=341 -> 352
    assert GPTConfig(mlp='swiglu', d_model=96, n_head=4).d_ff == 256
    assert GPTConfig(d_ff=100).d_ff == 100
    l = GPTConfig.llama(n_kv_head=2)
    assert (l.norm, l.mlp, l.pos, l.bias, l.tie_embeddings, l.n_kv_head) == ('rmsnorm', 'swiglu', 'rope', False, False, 2)
    g = GPTConfig.gpt2(d_model=64)
    assert (g.norm, g.mlp, g.pos, g.bias, g.tie_embeddings, g.d_model) == ('layernorm', 'gelu', 'learned', True, True, 64)
    assert GPTConfig(**asdict(l)) == l  # round-trips through a dict (checkpoints)


@pytest.mark.parametrize('kw,match', [
    (dict(d_model=100, n_head=3), 'divisible'), (dict(n_head=4, n_kv_head=3), 'multiple of n_kv_head'),
    (dict(norm='batchnorm'), 'norm must be one of'), (dict(mlp='relu'), 'mlp must be one of'), (dict(pos='alibi'), 'pos must be'),
    (dict(attn_impl='flash'), 'attn_impl'), (dict(n_layer=0), 'positive'), (dict(vocab_size=-1), 'positive'),
    (dict(dropout=1.0), 'dropout'), (dict(d_ff=0), 'd_ff'), (dict(pos='rope', d_model=12, n_head=4), 'even head size'),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match): GPTConfig(**kw)


@pytest.mark.parametrize('name', CONFIGS)
def test_num_params_exact(name):
    c = CONFIGS[name]
    m = GPT(c)
    assert sum(p.numel() for p in m.parameters()) == c.num_params() == m.num_params()


def test_num_params_published():
    assert GPTConfig.gpt2(vocab_size=50257, context_len=1024, n_layer=12, n_head=12, d_model=768).num_params() == 124_439_808
    assert GPTConfig.llama(vocab_size=32000, context_len=4096, n_layer=32, n_head=32, d_model=4096, d_ff=11008).num_params() == 6_738_415_616


@pytest.mark.parametrize('name', ['gpt2', 'llama-gqa'])
def test_flops_per_token_matches_counter(name):
    from torch.utils.flop_counter import FlopCounterMode
    c = GPTConfig(**{**asdict(CONFIGS[name]), 'attn_impl': 'manual'})
    m, T = GPT(c), 16
    with FlopCounterMode(display=False) as fc: m(torch.randint(0, c.vocab_size, (1, T)))
    assert fc.get_total_flops() == T * flops_per_token(c, T)
    parts = flops_per_token(c, T, breakdown=True)
    assert sum(parts.values()) == flops_per_token(c, T) and parts['lm_head'] == 2 * c.d_model * c.vocab_size


# ---------------------------------------------------------------- components
def test_rmsnorm_matches_torch():
    x = torch.randn(3, 5, 16) * 7
    ours, theirs = RMSNorm(16, eps=1e-6), nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad(): ours.weight.normal_(); theirs.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    assert ours(x.bfloat16()).dtype == torch.float32 or ours(x.bfloat16()).dtype == torch.bfloat16
    assert isinstance(make_norm(GPTConfig(bias=False)), nn.LayerNorm) and make_norm(GPTConfig(bias=False)).bias is None


def test_mlp_and_swiglu_weights_are_out_by_in():
    c = GPTConfig.llama(d_model=32, n_head=4)
    sw, mlp = SwiGLU(c), MLP(GPTConfig(d_model=32, n_head=4))
    assert sw.gate_proj.weight.shape == (c.d_ff, 32) and sw.down_proj.weight.shape == (32, c.d_ff)
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(sw(x), F.linear(F.silu(F.linear(x, sw.gate_proj.weight)) * F.linear(x, sw.up_proj.weight), sw.down_proj.weight))
    want = F.linear(F.gelu(F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias), approximate='tanh'), mlp.down_proj.weight, mlp.down_proj.bias)
    torch.testing.assert_close(mlp(x), want)


def test_rope_relative_and_matches_complex_form():
    rope = RotaryEmbedding(8, 64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    s = lambda m, n: (rope(q, m) * rope(k, n)).sum()
    torch.testing.assert_close(s(9, 4), s(30, 25), atol=1e-5, rtol=1e-5)
    # the rotate-half layout is a complex multiplication of (x[i], x[i + D/2]) by e^{i·pos·θ_i}
    x, pos = torch.randn(1, 1, 5, 8), 3
    z = torch.complex(x[..., :4], x[..., 4:])
    ang = torch.arange(pos, pos + 5)[:, None] * 10000 ** (-torch.arange(0, 8, 2) / 8)
    rz = z * torch.polar(torch.ones_like(ang), ang)
    torch.testing.assert_close(rope(x, pos), torch.cat([rz.real, rz.imag], -1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='RoPE positions'): rope(torch.randn(1, 1, 10, 8), offset=60)


def test_sinusoidal_table():
    pe = sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16) and torch.allclose(pe[0, 0::2], torch.zeros(8)) and torch.allclose(pe[0, 1::2], torch.ones(8))
    assert math.isclose(pe[7, 2].item(), math.sin(7 / 10000 ** (2 / 16)), rel_tol=1e-5)


def test_block_loads_weights_alone():
    c = CONFIGS['llama-gqa']
    a, b = Block(c), Block(c)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, c.d_model)
    torch.testing.assert_close(a(x), b(x))
    attn = a.attn
    assert isinstance(attn, MultiHeadAttention) and not attn.fused and attn.k_proj.weight.shape == (2 * c.d_head, c.d_model)
    assert Block(CONFIGS['gpt2']).attn.fused


# ---------------------------------------------------------------- forward, impls, errors
@pytest.mark.parametrize('name', CONFIGS)
def test_forward_loss_and_impls_agree(name):
    torch.manual_seed(0)
    c = CONFIGS[name]
    m = GPT(c)
    idx = torch.randint(0, c.vocab_size, (2, 12))
    tgt = torch.randint(0, c.vocab_size, (2, 12)); tgt[0, :4] = -100
    logits, loss = m(idx, tgt)
    assert logits.shape == (2, 12, c.vocab_size)
    torch.testing.assert_close(loss, F.cross_entropy(logits[tgt != -100], tgt[tgt != -100]))
    assert m(idx)[1] is None
    for impl in ('manual', 'sdpa'):
        other = GPT(GPTConfig(**{**asdict(c), 'attn_impl': impl})); other.load_state_dict(m.state_dict())
        torch.testing.assert_close(other(idx)[0], logits, atol=1e-5, rtol=1e-5)


def test_causality():
    m = GPT(CONFIGS['llama'])
    a = torch.randint(0, 97, (1, 10)); b = a.clone(); b[0, 6:] = (b[0, 6:] + 1) % 97
    torch.testing.assert_close(m(a)[0][:, :6], m(b)[0][:, :6])


def test_clear_errors():
    m = GPT(CONFIGS['gpt2'])
    with pytest.raises(ValueError, match='context_len=32'): m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match='vocabulary'): m(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match='vocabulary'): m(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match=r'\(B, T\)'): m(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match='integer'): m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match='targets'): m(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(TypeError, match='GPTConfig'): GPT(dict(TINY))
    cache = KVCache(m.config, 1)
    m(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match='after 30 cached'): m(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


def test_load_state_dict_errors_name_keys_and_shapes():
    m = GPT(CONFIGS['gpt2'])
    sd = m.state_dict()
    sd.pop('blocks.0.norm_1.bias'); sd['extra.weight'] = torch.zeros(1)
    sd['blocks.1.mlp.up_proj.weight'] = torch.zeros(3, 32)
    with pytest.raises(ValueError) as e: GPT(CONFIGS['gpt2']).load_state_dict(sd)
    msg = str(e.value)
    assert 'blocks.0.norm_1.bias' in msg and 'extra.weight' in msg and 'blocks.1.mlp.up_proj.weight' in msg
    assert '(3, 32)' in msg and '(128, 32)' in msg
    # a tied model accepts a state dict without the head
    sd = {k: v for k, v in m.state_dict().items() if k != 'lm_head.weight'}
    m2 = GPT(CONFIGS['gpt2']); m2.load_state_dict(sd)
    assert m2.lm_head.weight is m2.tok_emb.weight and torch.equal(m2.lm_head.weight, m.lm_head.weight)
    with pytest.raises(ValueError, match='mis-shaped'): check_state_dict(nn.Linear(3, 4), {'weight': torch.zeros(4, 4), 'bias': torch.zeros(4)})


def test_triton_impl_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'llm_lab.kernels.flash', None)  # import of the kernel fails
    m = GPT(GPTConfig(**{**TINY, 'attn_impl': 'triton'}))
    with pytest.raises(RuntimeError, match="attn_impl='triton'"): m(torch.zeros(1, 4, dtype=torch.long))


def test_triton_impl_matches_sdpa():
    from llm_lab.core import triton_status, use_triton_interpreter
    if triton_status() == 'missing': pytest.skip('triton not installed')
    if 'triton' not in sys.modules: use_triton_interpreter()
    try:
        from llm_lab.kernels.flash import flash_attention  # noqa: F401
        from llm_lab.kernels import ops
    except Exception as e: pytest.skip(f'flash kernel not importable: {e}')
    if not torch.cuda.is_available() and not getattr(ops, 'INTERPRETED', False):
        pytest.skip('triton was imported before the interpreter could be switched on (run this test alone)')
    cfg = dict(vocab_size=50, context_len=16, n_layer=1, n_head=2, d_model=32)
    a = GPT(GPTConfig.llama(**cfg, n_kv_head=1)); b = GPT(GPTConfig.llama(**cfg, n_kv_head=1, attn_impl='triton'))
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 50, (1, 8))
    torch.testing.assert_close(b(idx)[0], a(idx)[0], atol=2e-4, rtol=2e-4)
    assert torch.equal(a.generate(idx[:, :3], 4, temperature=0), b.generate(idx[:, :3], 4, temperature=0))


# ---------------------------------------------------------------- KV cache and generation
@pytest.mark.parametrize('name', CONFIGS)
def test_cache_chunks_equal_full_forward(name):
    torch.manual_seed(0)
    c = CONFIGS[name]
    m = GPT(c).eval()
    idx = torch.randint(0, c.vocab_size, (2, 20))
    full = m(idx)[0]
    cache = KVCache(c, 2)
    parts = [m(idx[:, a:b], kv_cache=cache)[0] for a, b in ((0, 7), (7, 8), (8, 13), (13, 14), (14, 20))]
    assert cache.pos == 20 and cache.nbytes() == 2 * c.n_layer * 2 * c.n_kv_head * c.context_len * c.d_head * 4
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('name', CONFIGS)
def test_greedy_cache_equals_no_cache(name):
    torch.manual_seed(1)
    c = CONFIGS[name]
    m = GPT(c)
    prompt = torch.randint(0, c.vocab_size, (3, 5))
    a = m.generate(prompt, 40, temperature=0)   # 45 > context_len=32: the window slides
    b = m.generate(prompt, 40, temperature=0, use_cache=False)
    assert a.shape == (3, 45) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)
    assert m.training  # generate restores the mode


def test_generate_long_prompt_and_sampling():
    torch.manual_seed(2)
    m = GPT(CONFIGS['llama'])
    long = torch.randint(0, 97, (1, 50))
    assert m.generate(long, 3, temperature=0).shape == (1, 53)  # cropped to the context
    g = lambda: torch.Generator().manual_seed(5)
    p = long[:, :4]
    x1 = m.generate(p, 12, temperature=1.3, top_k=20, top_p=0.9, generator=g())
    x2 = m.generate(p, 12, temperature=1.3, top_k=20, top_p=0.9, generator=g(), use_cache=False)
    assert torch.equal(x1, x2)
    assert torch.equal(m.generate(p, 8, top_k=1, generator=g()), m.generate(p, 8, temperature=0))


def test_filters_and_sampling():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 0.1, 0.2, 5.0]])
    assert torch.isinf(top_k_filter(logits, 2)).sum(-1).tolist() == [2, 2]
    kept = ~torch.isinf(top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False], [False, False, False, True]]
    assert (~torch.isinf(top_p_filter(logits, 1.0))).all()
    assert sample_next(logits, temperature=0).flatten().tolist() == [0, 3]
    draws = torch.cat([sample_next(logits, top_p=0.7, generator=torch.Generator().manual_seed(s)) for s in range(50)], 1)
    assert set(draws[0].tolist()) <= {0, 1} and set(draws[1].tolist()) == {3}
    with pytest.raises(ValueError, match='top_p'): top_p_filter(logits, 0.0)
    with pytest.raises(ValueError, match='temperature'): sample_next(logits, temperature=-1)


# ---------------------------------------------------------------- checkpoints
def _tiny_hf_gpt2(tmp_path, **kw):
    transformers = pytest.importorskip('transformers')
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=48, vocab_size=120, bos_token_id=0, eos_token_id=0, **kw)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize('kw', [{}, dict(tie_word_embeddings=False, n_inner=80)])
def test_from_pretrained_matches_transformers(tmp_path, kw):
    hf = _tiny_hf_gpt2(tmp_path, **kw)
    ours = GPT.from_pretrained(tmp_path).eval()
    assert ours.config.context_len == 48 and ours.config.vocab_size == 120 and ours.config.tie_embeddings == kw.get('tie_word_embeddings', True)
    idx = torch.randint(0, 120, (2, 48))
    with torch.no_grad(): want = hf(idx).logits
    assert (ours(idx)[0] - want).abs().max().item() < 1e-4
    # and generation agrees with transformers' greedy search
    with torch.no_grad(): hf_out = hf.generate(idx[:, :5], max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(idx[:, :5], 10, temperature=0), hf_out)
    assert GPT.from_pretrained(tmp_path, attn_impl='manual').config.attn_impl == 'manual'


def test_gpt2_state_dict_without_prefix(tmp_path):
    """Hub 'gpt2' stores names without 'transformer.' and keeps old attn.bias buffers: both handled."""
    from safetensors.torch import load_file, save_file
    hf = _tiny_hf_gpt2(tmp_path)
    sd = {k.removeprefix('transformer.'): v for k, v in load_file(tmp_path / 'model.safetensors').items()}
    sd['h.0.attn.bias'] = torch.ones(1, 1, 48, 48)
    save_file(sd, tmp_path / 'model.safetensors')
    idx = torch.randint(0, 120, (1, 20))
    with torch.no_grad(): want = hf(idx).logits
    assert (GPT.from_pretrained(tmp_path)(idx)[0] - want).abs().max().item() < 1e-4


def test_save_and_reload_own_checkpoint(tmp_path):
    m = GPT(CONFIGS['llama-gqa'])
    m.save_pretrained(tmp_path / 'ck')
    assert json.loads((tmp_path / 'ck' / 'config.json').read_text())['n_kv_head'] == 2
    m2 = GPT.from_pretrained(tmp_path / 'ck')
    assert m2.config == m.config
    idx = torch.randint(0, 97, (1, 9))
    torch.testing.assert_close(m2(idx)[0], m(idx)[0])
    t = GPT(CONFIGS['gpt2']); t.save_pretrained(tmp_path / 'tied')
    assert GPT.from_pretrained(tmp_path / 'tied').lm_head.weight is not None


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='checkpoint folder'): GPT.from_pretrained(tmp_path / 'nope')
    (tmp_path / 'config.json').write_text('{"model_type": "gpt2"}')
    with pytest.raises(FileNotFoundError, match='model.safetensors'): GPT.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match='GPT-2'): gpt2_config_from_hf({'model_type': 'llama'})


# ---------------------------------------------------------------- encoder-decoder
def test_encoder_decoder_layers_match_torch():
    torch.manual_seed(0)
    enc, dec = EncoderLayer(16, 2, 32), DecoderLayer(16, 2, 32)
    te = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    td = nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    with torch.no_grad():
        te.self_attn.in_proj_weight.copy_(enc.self_attn.qkv_proj.weight); te.self_attn.in_proj_bias.copy_(enc.self_attn.qkv_proj.bias)
        te.self_attn.out_proj.load_state_dict(enc.self_attn.o_proj.state_dict())
        td.self_attn.in_proj_weight.copy_(dec.self_attn.qkv_proj.weight); td.self_attn.in_proj_bias.copy_(dec.self_attn.qkv_proj.bias)
        td.self_attn.out_proj.load_state_dict(dec.self_attn.o_proj.state_dict())
        ca = dec.cross_attn
        td.multihead_attn.in_proj_weight.copy_(torch.cat([ca.q_proj.weight, ca.k_proj.weight, ca.v_proj.weight]))
        td.multihead_attn.in_proj_bias.copy_(torch.cat([ca.q_proj.bias, ca.k_proj.bias, ca.v_proj.bias]))
        td.multihead_attn.out_proj.load_state_dict(ca.o_proj.state_dict())
        for ours, theirs, norms in ((enc, te, 2), (dec, td, 3)):
            theirs.linear1.load_state_dict(ours.ff[0].state_dict()); theirs.linear2.load_state_dict(ours.ff[2].state_dict())
            for i in range(1, norms + 1): getattr(theirs, f'norm{i}').load_state_dict(getattr(ours, f'norm{i}').state_dict())
    src, tgt = torch.randn(2, 6, 16), torch.randn(2, 4, 16)
    keep = padding_mask(torch.tensor([6, 2]), 6)
    mem = enc(src, keep)
    torch.testing.assert_close(mem, te(src, src_key_padding_mask=~keep[:, 0, 0]), atol=1e-5, rtol=1e-5)
    want = td(tgt, mem, tgt_mask=nn.Transformer.generate_square_subsequent_mask(4), tgt_is_causal=True, memory_key_padding_mask=~keep[:, 0, 0])
    torch.testing.assert_close(dec(tgt, mem, keep), want, atol=1e-5, rtol=1e-5)


def test_seq2seq_shapes_loss_and_padding():
    torch.manual_seed(0)
    s2s = Seq2SeqTransformer(vocab_size=13, d_model=32, n_head=4, n_layer=1, d_ff=64, max_len=12).eval()
    src = torch.tensor([[5, 6, 7, 0, 0], [3, 4, 5, 6, 7]])
    tgt_in = torch.tensor([[1, 7, 6, 5], [1, 7, 6, 5]])
    logits, loss = s2s(src, tgt_in, torch.tensor([[7, 6, 5, 2], [0, 0, 0, 0]]))
    assert logits.shape == (2, 4, 13) and torch.isfinite(loss)
    # padding in the source does not change the output
    longer = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(s2s(longer, tgt_in)[0], logits, atol=1e-5, rtol=1e-5)
    assert s2s.greedy_decode(src, 1, 6).shape == (2, 7)
    with pytest.raises(ValueError, match='max_len'): s2s(torch.ones(1, 13, dtype=torch.long), tgt_in[:1])


# ---------------------------------------------------------------- checkers
def test_checkers_accept_reference():
    assert check_rmsnorm(lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w).ok
    assert check_rope(lambda x, off: RotaryEmbedding(x.shape[-1], off + x.shape[-2])(x, off)).ok
    assert check_top_p(top_p_filter).ok


def test_checkers_reject_wrong():
    # LayerNorm-like: subtracts the mean
    with pytest.raises(CheckFailed): check_rmsnorm(lambda x, w, eps: (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * w, seed=0)
    # interleaved pairs (2i, 2i+1) instead of (i, i + D/2)
    def interleaved(x, off):
        D, T = x.shape[-1], x.shape[-2]
        ang = torch.arange(off, off + T)[:, None] * 10000 ** (-torch.arange(0, D, 2) / D)
        z = torch.view_as_complex(x.reshape(*x.shape[:-1], D // 2, 2).contiguous()) * torch.polar(torch.ones_like(ang), ang)
        return torch.view_as_real(z).flatten(-2)
    with pytest.raises(CheckFailed): check_rope(interleaved, seed=0)
    # positions always from 0 (ignores the offset)
    with pytest.raises(CheckFailed): check_rope(lambda x, off: RotaryEmbedding(x.shape[-1], x.shape[-2])(x, 0), seed=0)
    # drops the token that crosses the threshold
    def wrong_top_p(logits, p):
        s, o = logits.sort(-1, descending=True)
        drop = s.softmax(-1).cumsum(-1) > p
        return logits.masked_fill(drop.scatter(-1, o, drop), float('-inf'))
    with pytest.raises(CheckFailed): check_top_p(wrong_top_p, seed=0)
