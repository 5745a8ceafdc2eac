"""Chapter 13's checkers: the solutions and alternative correct implementations pass, stubs report 'not written yet' without
raising, and each named wrong implementation is rejected with its hint."""
import importlib.util, math
from pathlib import Path
import pytest, torch
import torch.nn as nn
import torch.nn.functional as F
from llm_lab.core import CheckFailed
from llm_lab.tuners import NF4_CODE, check_lora_layer, check_nf4_quantize, check_nf4_dequantize, check_prefix_attention

_spec = importlib.util.spec_from_file_location('sol13', Path(__file__).parents[1] / 'solutions' / '13_peft.py')
sol = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(sol)


def lora_variant(scaling=lambda r, a: a / r, zero_b=True, merge_scale=True, skip_when_merged=True):
    class L(sol.MyLoraLinear):
        def __init__(self, base, r, alpha):
            super().__init__(base, r, alpha)
            self.scaling, self._plain = scaling(r, alpha), merge_scale
            if not zero_b: nn.init.normal_(self.lora_B)
        def delta(self): return (self.scaling if self._plain else 1.0) * self.lora_B @ self.lora_A
        def forward(self, x):
            y = self.base(x)
            if self.merged and skip_when_merged: return y
            return y + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T
    return L


class LoraNoMergedFlag(sol.MyLoraLinear):  # correct, written differently: merged state kept by a delta buffer
    def forward(self, x):
        return F.linear(x, self.base.weight, self.base.bias) + (0 if self.merged else self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B))


class Stub(nn.Module):
    def __init__(self, base, r, alpha): super().__init__(); raise NotImplementedError


LORA_WRONG = {
    'scaling r/alpha inverted': (lora_variant(scaling=lambda r, a: r / a), 'inverted'),
    'no scaling': (lora_variant(scaling=lambda r, a: 1.0), 'not scaled'),
    'B not zero-initialised': (lora_variant(zero_b=False), 'lora_B to zero'),
    'merge forgets the scaling': (lora_variant(merge_scale=False), 'merge forgot the scaling'),
    'update counted twice after merge': (lora_variant(skip_when_merged=False), 'counted twice'),
}


@pytest.mark.parametrize('name', LORA_WRONG)
def test_lora_checker_rejects(name):
    cls, hint = LORA_WRONG[name]
    with pytest.raises(CheckFailed, match=hint): check_lora_layer(cls, seed=0)


def test_lora_checker_accepts_and_stub():
    assert check_lora_layer(sol.MyLoraLinear, seed=0).ok
    assert check_lora_layer(LoraNoMergedFlag, seed=1).ok
    report = check_lora_layer(Stub)
    assert not report.attempted and not report.ok


def nf4_global_absmax(w, bs):
    m = w.abs().max()
    return (w[:, None] / m - NF4_CODE).abs().argmin(-1), m.reshape(1)


def nf4_uniform(w, bs):
    b = w.view(-1, bs); a = b.abs().amax(1)
    return ((b / a[:, None] + 1) * 7.5).round().long().view(-1), a


def nf4_unnormalised(w, bs):
    b = w.view(-1, bs); a = b.abs().amax(1)
    return (b[..., None] - NF4_CODE).abs().argmin(-1).view(-1), a


def nf4_quant_alt(w, bs):  # correct: bucketize against the midpoints between levels, int32 codes
    b = w.view(-1, bs); a = b.abs().amax(1)
    mids = (NF4_CODE[1:] + NF4_CODE[:-1]) / 2
    return torch.bucketize((b / a[:, None]).contiguous(), mids).view(-1).int(), a


@pytest.mark.parametrize('fn,hint', [(nf4_global_absmax, 'one absmax per block'), (nf4_uniform, 'NF4 levels'),
                                     (nf4_unnormalised, 'divide each block')], ids=['global absmax', 'uniform grid', 'not normalised'])
def test_nf4_quantize_rejects(fn, hint):
    with pytest.raises(CheckFailed, match=hint): check_nf4_quantize(fn, seed=0)


def test_nf4_quantize_accepts_and_stub():
    assert check_nf4_quantize(sol.my_nf4_quantize, seed=0).ok and check_nf4_quantize(nf4_quant_alt, seed=1).ok
    def stub(w, bs): raise NotImplementedError
    assert not check_nf4_quantize(stub).attempted


def test_nf4_dequantize():
    assert check_nf4_dequantize(sol.my_nf4_dequantize, seed=0).ok
    alt = lambda c, a, bs: (NF4_CODE[c.long()].view(-1, bs) * a[:, None]).flatten()
    assert check_nf4_dequantize(alt, seed=1).ok
    with pytest.raises(CheckFailed, match='repeat_interleave'):
        check_nf4_dequantize(lambda c, a, bs: NF4_CODE[c.long()] * a.repeat(bs), seed=0)
    def stub(c, a, bs): raise NotImplementedError
    assert not check_nf4_dequantize(stub).attempted


def prefix_variant(offset_zero=False, causal=True, scale=True):
    def fn(q, k, v, pk, pv):
        T, P = q.shape[2], pk.shape[2]
        K, V = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        s = q @ K.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1)
        if causal: s = s.masked_fill(~torch.ones(T, P + T, dtype=torch.bool).tril(0 if offset_zero else P), float('-inf'))
        return s.softmax(-1) @ V
    return fn


@pytest.mark.parametrize('kw,hint', [(dict(offset_zero=True), 'top-left'), (dict(causal=False), 'no causal mask'), (dict(scale=False), 'sqrt')],
                         ids=['top-left mask', 'no causal mask', 'missing 1/sqrt(D)'])
def test_prefix_attention_rejects(kw, hint):
    with pytest.raises(CheckFailed, match=hint): check_prefix_attention(prefix_variant(**kw), seed=0)


def test_prefix_attention_accepts_and_stub():
    assert check_prefix_attention(sol.my_prefix_attention, seed=0).ok
    sdpa = lambda q, k, v, pk, pv: F.scaled_dot_product_attention(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2),
        attn_mask=torch.ones(q.shape[2], pk.shape[2] + q.shape[2], dtype=torch.bool).tril(pk.shape[2]))
    assert check_prefix_attention(sdpa, seed=1).ok
    def stub(*a): raise NotImplementedError
    assert not check_prefix_attention(stub).attempted
