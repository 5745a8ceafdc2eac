"""Chapter 06 exercises: each checker gives 'not written yet' for the stub, rejects named wrong implementations with the
right hint, and accepts the solution and other correct implementations; a learner's block plugs into GPT."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_lab.core import CheckFailed
from llm_lab.model import (GPT, GPTConfig, RotaryEmbedding, apply_rotary, check_block, check_decode_step, check_rmsnorm,
                           check_rope, check_top_p, rotate_half, top_p_filter)


def _solutions():
    spec = importlib.util.spec_from_file_location('solutions_06', Path(__file__).parents[1] / 'solutions' / '06_transformer.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

SOL = _solutions()


# ---------------------------------------------------------------- stubs: a report, no exception
class StubBlock(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        raise NotImplementedError

class StubForwardBlock(SOL.MyBlock):
    def forward(self, x, kv_cache=None, token_positions=None): raise NotImplementedError

def stub(*args): raise NotImplementedError

@pytest.mark.parametrize('checker,fn', [(check_block, StubBlock), (check_block, StubForwardBlock), (check_decode_step, stub),
                                        (check_rope, stub), (check_rmsnorm, stub), (check_top_p, stub)])
def test_stub_is_not_attempted(checker, fn):
    report = checker(fn)
    assert report.attempted is False and not report.ok
    assert 'not written yet' in str(report)


# ---------------------------------------------------------------- the block
class PostNorm(SOL.MyBlock):
    def forward(self, x, kv_cache=None, token_positions=None):
        h = self.norm_1(x + self.attn(x, kv_cache, token_positions))
        return self.norm_2(h + self.mlp(h))

class NoAttnResidual(SOL.MyBlock):
    def forward(self, x, kv_cache=None, token_positions=None):
        h = self.attn(self.norm_1(x), kv_cache, token_positions)
        return h + self.mlp(self.norm_2(h))

class NoMlpResidual(SOL.MyBlock):
    def forward(self, x, kv_cache=None, token_positions=None):
        return self.mlp(self.norm_2(x + self.attn(self.norm_1(x), kv_cache, token_positions)))

class Norm1Twice(SOL.MyBlock):
    def forward(self, x, kv_cache=None, token_positions=None):
        h = x + self.attn(self.norm_1(x), kv_cache, token_positions)
        return h + self.mlp(self.norm_1(h))

class MlpReadsInput(SOL.MyBlock):  # GPT-J's parallel block, not GPT-2's
    def forward(self, x, kv_cache=None, token_positions=None):
        return x + self.attn(self.norm_1(x), kv_cache, token_positions) + self.mlp(self.norm_2(x))

class IgnoresCache(SOL.MyBlock):
    def forward(self, x, kv_cache=None, token_positions=None):
        h = x + self.attn(self.norm_1(x))
        return h + self.mlp(self.norm_2(h))

class OtherNames(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        ref = SOL.MyBlock(config, layer_idx)
        self.ln1, self.attention, self.ln2, self.ff = ref.norm_1, ref.attn, ref.norm_2, ref.mlp
    def forward(self, x, kv_cache=None, token_positions=None):
        h = x + self.attention(self.ln1(x), kv_cache, token_positions)
        return h + self.ff(self.ln2(h))

@pytest.mark.parametrize('name,cls,hint', [
    ('post-norm instead of pre-norm', PostNorm, 'post-norm'),
    ('missing attention residual', NoAttnResidual, 'attention residual is missing'),
    ('missing MLP residual', NoMlpResidual, 'MLP residual is missing'),
    ('norm_1 before the MLP', Norm1Twice, 'use norm_2'),
    ('MLP reads the block input (parallel block)', MlpReadsInput, 'stream after attention'),
    ('KV cache not passed to attention', IgnoresCache, 'cache is ignored'),
    ('parts under other names', OtherNames, "Block's names"),
])
def test_block_checker_rejects(name, cls, hint):
    with pytest.raises(CheckFailed, match=hint): check_block(cls, seed=0)


class ReassigningBlock(nn.Module):
    "Correct, written differently: parts built in another order, the stream updated in place of a new name."
    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.mlp, self.norm_2 = SOL.make_mlp(config), SOL.make_norm(config)
        self.attn, self.norm_1 = SOL.MultiHeadAttention(config, layer_idx), SOL.make_norm(config)
    def forward(self, x, kv_cache=None, token_positions=None):
        x = torch.add(x, self.attn(self.norm_1(x), kv_cache=kv_cache, token_positions=token_positions))
        x = torch.add(x, self.mlp(self.norm_2(x)))
        return x

@pytest.mark.parametrize('cls', [SOL.MyBlock, ReassigningBlock])
def test_block_checker_accepts(cls):
    assert check_block(cls, seed=1).ok


def test_learner_block_plugs_into_gpt():
    c = GPTConfig.llama(vocab_size=61, context_len=16, n_layer=2, n_head=4, n_kv_head=2, d_model=32)
    ref, mine = GPT(c), GPT(c, block=SOL.MyBlock)
    mine.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 61, (2, 12))
    assert torch.equal(mine(idx)[0], ref(idx)[0])
    assert torch.equal(mine.generate(idx[:, :3], 8, temperature=0), ref.generate(idx[:, :3], 8, temperature=0))


# ---------------------------------------------------------------- the decode step
def _step(model, token, cache, *, advance=True, advance_first=False, position_zero=False, use_cache=True, final_norm=True):
    if advance_first: cache.advance(1)
    x = model.tok_emb(token)
    if model.pos_emb is not None: x = x + model.pos_emb(torch.tensor([0 if position_zero else cache.pos]))
    for block in model.blocks: x = block(x, cache if use_cache else None)
    if advance and not advance_first: cache.advance(1)
    return model.lm_head(model.norm_f(x) if final_norm else x)[:, -1]

@pytest.mark.parametrize('name,kw,hint', [
    ('cache position not advanced', dict(advance=False), r'cache.advance\(1\)'),
    ('advanced before the blocks (RoPE offset and cache slot wrong)', dict(advance_first=True), 'after the blocks, not before'),
    ('position embedding at 0', dict(position_zero=True), 'sits at position cache.pos'),
    ('blocks run without the cache', dict(use_cache=False), 'pass the cache to every block'),
    ('no final norm', dict(final_norm=False), 'norm_f'),
])
def test_decode_checker_rejects(name, kw, hint):
    with pytest.raises(CheckFailed, match=hint): check_decode_step(lambda m, t, c: _step(m, t, c, **kw), seed=0)

def test_decode_checker_refuses_calling_the_model():
    with pytest.raises(CheckFailed, match="model's parts"): check_decode_step(lambda m, t, c: m(t, kv_cache=c)[0][:, -1], seed=0)

def _step_with_positions(model, token, cache):
    "Correct, written differently: explicit token positions, (B, 1, V) logits."
    pos = torch.full((token.shape[0], 1), cache.pos)
    x = model.tok_emb(token) + (model.pos_emb(pos) if model.pos_emb is not None else 0)
    for block in model.blocks: x = block(x, kv_cache=cache, token_positions=pos)
    cache.advance(1)
    return model.lm_head(model.norm_f(x))

@pytest.mark.parametrize('fn', [SOL.my_decode_step, _step_with_positions])
def test_decode_checker_accepts(fn):
    assert check_decode_step(fn, seed=2).ok


# ---------------------------------------------------------------- RoPE, RMSNorm, top-p
def _interleaved(x, off):
    D, T = x.shape[-1], x.shape[-2]
    ang = torch.arange(off, off + T)[:, None] * 10000 ** (-torch.arange(0, D, 2) / D)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], D // 2, 2).contiguous()) * torch.polar(torch.ones_like(ang), ang)
    return torch.view_as_real(z).flatten(-2)

def _rope(x, off, sign=1, start=None, expo=2):
    D, T = x.shape[-1], x.shape[-2]
    ang = torch.arange(off if start is None else start, (off if start is None else start) + T)[:, None] * 10000.0 ** (-torch.arange(0, D // 2) * expo / D)
    ang = torch.cat([ang, ang], -1)
    return x * ang.cos() + sign * rotate_half(x) * ang.sin()

@pytest.mark.parametrize('name,fn,hint', [
    ('offset ignored', lambda x, off: _rope(x, off, start=0), 'offset \\+ t'),
    ('neighbouring pairs', _interleaved, 'rotate-half layout'),
    ('rotated the wrong way', lambda x, off: _rope(x, off, sign=-1), 'wrong direction'),
    ('exponent i/D', lambda x, off: _rope(x, off, expo=1), 'exponent 2i/D'),
])
def test_rope_checker_rejects(name, fn, hint):
    with pytest.raises(CheckFailed, match=hint): check_rope(fn, seed=0)

def _rope_complex(x, off):
    "Correct, written differently: complex multiplication of (x_i, x_{i+D/2})."
    D, T = x.shape[-1], x.shape[-2]
    z = torch.complex(x[..., :D // 2], x[..., D // 2:])
    ang = torch.arange(off, off + T)[:, None] * 10000 ** (-torch.arange(0, D, 2) / D)
    rz = z * torch.polar(torch.ones_like(ang), ang)
    return torch.cat([rz.real, rz.imag], -1)

@pytest.mark.parametrize('fn', [SOL.my_rope, _rope_complex, lambda x, off: RotaryEmbedding(x.shape[-1], off + x.shape[-2])(x, off)])
def test_rope_checker_accepts(fn):
    assert check_rope(fn, seed=3).ok

def test_rmsnorm_checker():
    assert check_rmsnorm(lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w, seed=0).ok
    layernorm = lambda x, w, eps: F.layer_norm(x, x.shape[-1:], w, None, eps)
    with pytest.raises(CheckFailed, match='does not subtract the mean'): check_rmsnorm(layernorm, seed=0)

def test_top_p_checker():
    assert check_top_p(top_p_filter, seed=0).ok
    def drops_crossing_token(logits, p):
        s, o = logits.sort(-1, descending=True)
        drop = s.softmax(-1).cumsum(-1) > p
        return logits.masked_fill(drop.scatter(-1, o, drop), float('-inf'))
    with pytest.raises(CheckFailed): check_top_p(drops_crossing_token, seed=0)
