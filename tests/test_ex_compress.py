"""Chapter 17's checkers: the solutions and alternative correct implementations pass, stubs report 'not written yet' without
raising, and each named wrong implementation is rejected with its hint."""
import importlib.util
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from llm_lab.core import CheckFailed
from llm_lab.compress import check_group_int4, check_gptq, check_nm_mask, check_distill_loss, obq_quantize

_spec = importlib.util.spec_from_file_location('sol17', Path(__file__).parents[1] / 'solutions' / '17_compression.py')
sol = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(sol)


def stub(*args): raise NotImplementedError


def int4_per_row(w, gs): return sol.my_quantize_int4(w, w.shape[1])
def int4_asym(w, gs):
    b = w.reshape(-1, gs); s = b.abs().amax(1, keepdim=True) / 8
    return ((b / s).round().clamp(-8, 7) * s).reshape(w.shape)
def int4_trunc(w, gs):
    b = w.reshape(-1, gs); s = b.abs().amax(1, keepdim=True) / 7
    return (torch.trunc(b / s) * s).reshape(w.shape)

def gptq_rtn(w, H, bits):
    qmax = 2 ** (bits - 1) - 1; s = w.abs().amax(1, keepdim=True) / qmax
    return (w / s).round().clamp(-qmax, qmax) * s
def gptq_variant(div=True, inverse=True):
    def f(w, H, bits):
        W, qmax = w.clone(), 2 ** (bits - 1) - 1
        s = W.abs().amax(1) / qmax
        U = torch.linalg.cholesky(torch.linalg.inv(H) if inverse else H, upper=True)
        for i in range(W.shape[1]):
            q = (W[:, i] / s).round().clamp(-qmax, qmax) * s
            err = (W[:, i] - q) / (U[i, i] if div else 1.0)
            W[:, i] = q; W[:, i + 1:] -= err[:, None] * U[i, i + 1:][None, :]
        return W
    return f

def nm_smallest(s, n, m): return sol.my_nm_mask(-s, n, m)
def nm_columns(s, n, m): return sol.my_nm_mask(s.T.contiguous(), n, m).T if s.shape[0] % m == 0 else sol.my_nm_mask(s, n, m) * 0

def kd_no_t2(s, t, T): return sol.my_distill_loss(s, t, T) / (T * T)
def kd_reversed(s, t, T): return sol.my_distill_loss(t, s, T)
def kd_per_batch(s, t, T): return sol.my_distill_loss(s, t, T) * s.shape[1]

WRONG = {
    'int4: one scale per row': (check_group_int4, int4_per_row, 'own absmax'),
    'int4: scale absmax/8 onto -8..7': (check_group_int4, int4_asym, 'absmax / 7'),
    'int4: truncation': (check_group_int4, int4_trunc, 'nearest'),
    'gptq: no error feedback (RTN)': (check_gptq, gptq_rtn, 'round-to-nearest'),
    'gptq: error not divided by U_ii': (check_gptq, gptq_variant(div=False), 'U\\[i, i\\]'),
    'gptq: Cholesky of H, not H^-1': (check_gptq, gptq_variant(inverse=False), 'inverse Hessian'),
    'nm: keeps the smallest': (check_nm_mask, nm_smallest, 'largest'),
    'kd: missing T^2': (check_distill_loss, kd_no_t2, 'T²'),
    'kd: reversed KL': (check_distill_loss, kd_reversed, 'reversed'),
    'kd: mean over batch only': (check_distill_loss, kd_per_batch, 'every position'),
}


@pytest.mark.parametrize('name', WRONG)
def test_wrong_rejected_with_hint(name):
    check, fn, hint = WRONG[name]
    with pytest.raises(CheckFailed, match=hint): check(fn, seed=0)


def test_nm_columns_rejected():
    with pytest.raises(CheckFailed): check_nm_mask(nm_columns, seed=0)


@pytest.mark.parametrize('check', [check_group_int4, check_gptq, check_nm_mask, check_distill_loss])
def test_stub_not_attempted(check):
    report = check(stub)
    assert report.attempted is False and not report.ok


def test_solutions_and_alternatives_pass():
    assert check_group_int4(sol.my_quantize_int4, seed=1).ok
    assert check_group_int4(lambda w, gs: torch.stack([sol.my_quantize_int4(r[None], gs)[0] for r in w]), seed=1).ok   # row by row
    assert check_gptq(sol.my_gptq, seed=1).ok
    assert check_gptq(lambda w, H, b: obq_quantize(w, H, b, damp=0.0), seed=1).ok                                  # the OBQ loop
    assert check_nm_mask(sol.my_nm_mask, seed=1).ok
    assert check_nm_mask(lambda s, n, m: (s.reshape(s.shape[0], -1, m).argsort(-1, descending=True).argsort(-1) < n).reshape(s.shape).int(), seed=1).ok  # ranks, int dtype
    assert check_distill_loss(sol.my_distill_loss, seed=1).ok
    assert check_distill_loss(lambda s, t, T: F.kl_div(F.log_softmax(s / T, -1).flatten(0, 1), F.softmax(t / T, -1).flatten(0, 1), reduction='batchmean') * T ** 2, seed=1).ok
