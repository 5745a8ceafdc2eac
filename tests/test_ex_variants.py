"""Chapter 07 exercises: each checker gives 'not written yet' for the stub, rejects named wrong implementations with the
right hint, and accepts the solution and other correct implementations."""
import importlib.util, math
from pathlib import Path

import pytest
import torch

from llm_lab.core import CheckFailed
from llm_lab.variants import VariantConfig, allowed_mask, alibi_slopes, t5_bucket, check_alibi_slopes, check_t5_bucket, check_window_mask


def _solutions():
    spec = importlib.util.spec_from_file_location('solutions_07', Path(__file__).parents[1] / 'solutions' / '07_variants.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

SOL = _solutions()

def stub(*args): raise NotImplementedError

@pytest.mark.parametrize('checker', [check_t5_bucket, check_window_mask, check_alibi_slopes])
def test_stub_is_not_attempted(checker):
    report = checker(stub)
    assert report.attempted is False and not report.ok
    assert 'not written yet' in str(report)


# ---------------------------------------------------------------- T5 buckets
def _t5(rel, bidirectional, n_buckets, max_distance, clamp=True, rounding=False):
    "An independent T5 bucketing with two switchable mistakes."
    out = torch.zeros_like(rel)
    n = n_buckets // 2 if bidirectional else n_buckets
    if bidirectional: out = out + (rel > 0).long() * n; d = rel.abs()
    else: d = torch.clamp(-rel, min=0)
    exact = n // 2
    big = torch.log(d.clamp(min=1).double() / exact) / math.log(max_distance / exact) * (n - exact)
    big = exact + (torch.round(big) if rounding else torch.floor(big)).long()
    if clamp: big = torch.minimum(big, torch.full_like(big, n - 1))
    return out + torch.where(d < exact, d, big)

@pytest.mark.parametrize('name,fn,hint', [
    ('query − key instead of key − query', lambda rel, b, n, md: t5_bucket(-rel, b, n, md), 'key position − query position'),
    ('bidirectional flag inverted', lambda rel, b, n, md: t5_bucket(rel, not b, n, md), 'splits the buckets'),
    ('last bucket not clamped', lambda rel, b, n, md: _t5(rel, b, n, md, clamp=False), 'clamp the logarithmic bucket'),
    ('log bucket rounded', lambda rel, b, n, md: _t5(rel, b, n, md, rounding=True), "don't round"),
    ('linear buckets', lambda rel, b, n, md: rel.abs().clamp(max=n - 1), None),
])
def test_t5_checker_rejects(name, fn, hint):
    with pytest.raises(CheckFailed, match=hint) if hint else pytest.raises(CheckFailed): check_t5_bucket(fn, trials=20, seed=0)

@pytest.mark.parametrize('fn', [SOL.my_t5_bucket, _t5])
def test_t5_checker_accepts(fn):
    assert check_t5_bucket(fn, trials=20, seed=1).ok


# ---------------------------------------------------------------- sliding-window mask
def _dist(t): return torch.arange(t)[:, None] - torch.arange(t)[None, :]

@pytest.mark.parametrize('name,fn,hint', [
    ('window inclusive (<=)', lambda t, w, c: (_dist(t).abs() <= w) & ((_dist(t) >= 0) if c else True), 'not <='),
    ('causal ignored', lambda t, w, c: _dist(t).abs() < w, 'also hide the keys after the query'),
    ('keys after the query (transposed)', lambda t, w, c: (_dist(t).abs() < w) & ((_dist(t) <= 0) if c else True), 'lower triangle'),
    ('no window (plain causal)', lambda t, w, c: (_dist(t) >= 0) if c else torch.ones(t, t, dtype=torch.bool), 'closer than `window`'),
])
def test_window_checker_rejects(name, fn, hint):
    with pytest.raises(CheckFailed, match=hint): check_window_mask(fn, trials=30, seed=0)

def _band_via_tril(t, w, c):
    "Correct, written differently: a band from triu/tril, as ints."
    ones = torch.ones(t, t, dtype=torch.int64)
    band = ones.tril(w - 1) * ones.triu(-(w - 1))
    return band.tril() if c else band

@pytest.mark.parametrize('fn', [SOL.my_window_mask, _band_via_tril])
def test_window_checker_accepts(fn):
    assert check_window_mask(fn, trials=30, seed=1).ok


# ---------------------------------------------------------------- ALiBi slopes
@pytest.mark.parametrize('name,fn,hint', [
    ('exponent off by one', lambda n: torch.tensor([2 ** (-8 * i / n) for i in range(n)]), "first head's slope"),
    ('no interleaving for non-powers of two', lambda n: torch.tensor([2 ** (-8 * (i + 1) / n) for i in range(n)]), 'interleaving'),
])
def test_alibi_checker_rejects(name, fn, hint):
    with pytest.raises(CheckFailed, match=hint): check_alibi_slopes(fn, trials=30, seed=0)

def _slopes_float64(n):
    "Correct, written differently: float64, geometric ratio from the first slope."
    p = 1 << (n.bit_length() - 1)
    first = lambda m: 2.0 ** (-8.0 / m)
    base = [first(p) ** (i + 1) for i in range(p)]
    extra = [first(2 * p) ** (2 * i + 1) for i in range(n - p)]
    return torch.tensor(base + extra, dtype=torch.float64)

@pytest.mark.parametrize('fn', [SOL.my_alibi_slopes, _slopes_float64, alibi_slopes])
def test_alibi_checker_accepts(fn):
    assert check_alibi_slopes(fn, trials=30, seed=1).ok
