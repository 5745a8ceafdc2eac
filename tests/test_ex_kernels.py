"""The exercise checkers of chapters 18 and 19 (issue 10): each rejects a table of named wrong implementations
(with the hint for the mistake), returns attempted=False for the stub without raising, and accepts other correct
implementations. The reference solutions themselves are run by tests/test_solutions.py.

Wrong answers are mostly written in torch: a checker only sees outputs, and a torch function that makes the same
mistake as a kernel produces the same output, much faster than the interpreter. One wrong Triton kernel checks
the path end to end.
"""
import math
import pytest
import torch
import torch.nn.functional as F
from llm_lab.core import has_triton, CheckFailed

pytestmark = pytest.mark.skipif(not has_triton(), reason="Triton is not installed (it has Linux wheels only)")

from llm_lab.kernels import ops, flash
from llm_lab.kernels.ops import triton, tl


def stub(*args): raise NotImplementedError


def rejects(checker, fn, hint=None):
    with pytest.raises(CheckFailed) as e: checker(fn)
    if hint is not None: assert hint in str(e.value), str(e.value)
    return str(e.value)


# ---------------------------------------------------------------- chapter 18: softmax
def softmax_no_max(x): return torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)


def softmax_unmasked_padding(x):  # padding lanes loaded as 0 (other=0.0) instead of -inf: they add e^(0 - max) to the sum
    N = x.shape[-1]
    pad = torch.zeros(x.shape[0], triton.next_power_of_2(N) - N, device=x.device)
    return torch.softmax(torch.cat([x, pad], -1), -1)[:, :N]


SOFTMAX_WRONG = {
    'no max subtraction': (softmax_no_max, 'subtract the row max'),
    'wrong reduction axis': (lambda x: torch.softmax(x, 0), 'down the columns'),
    'mask missing on the last block': (softmax_unmasked_padding, 'not a power of two'),
    'log-softmax instead': (lambda x: torch.log_softmax(x, -1), None),
}


@pytest.mark.parametrize('name', SOFTMAX_WRONG)
def test_check_softmax_rejects(name):
    fn, hint = SOFTMAX_WRONG[name]
    rejects(ops.check_softmax, fn, hint)


@triton.jit
def _softmax_kernel_no_max(x_ptr, y_ptr, stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride + cols, mask=cols < n_cols, other=-float('inf'))
    num = tl.exp(x)                                                  # the mistake: no max subtraction
    tl.store(y_ptr + row * stride + cols, num / tl.sum(num, axis=0), mask=cols < n_cols)


def test_check_softmax_rejects_a_real_kernel_and_accepts_others():
    def launch(x):
        y = torch.empty_like(x)
        _softmax_kernel_no_max[(x.shape[0],)](x, y, x.stride(0), x.shape[1], BLOCK=triton.next_power_of_2(x.shape[1]))
        return y
    rejects(ops.check_softmax, launch, 'subtract the row max')
    assert ops.check_softmax(lambda x: ops.softmax(x)).ok                              # the chapter's kernel
    assert ops.check_softmax(lambda x: torch.exp(x - torch.logsumexp(x, -1, keepdim=True))).ok   # another correct way


# ---------------------------------------------------------------- chapter 18: LayerNorm backward
def _ln_parts(x, w, dy):
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    r = torch.rsqrt(var + 1e-5); xhat = (x - mu) * r; u = dy * w
    return r, xhat, u


def ln_no_mean_u(x, w, dy):
    r, xhat, u = _ln_parts(x, w, dy)
    return r * (u - xhat * (u * xhat).mean(-1, keepdim=True)), (dy * xhat).sum(0), dy.sum(0)


def ln_dw_not_summed(x, w, dy):
    r, xhat, u = _ln_parts(x, w, dy)
    return r * (u - xhat * (u * xhat).mean(-1, keepdim=True) - u.mean(-1, keepdim=True)), dy * xhat, dy


def ln_dw_with_x(x, w, dy):
    r, xhat, u = _ln_parts(x, w, dy)
    return r * (u - xhat * (u * xhat).mean(-1, keepdim=True) - u.mean(-1, keepdim=True)), (dy * x).sum(0), dy.sum(0)


def ln_unmasked_padding(x, w, dy):  # xc = x - mean without where(mask, …): padded lanes add (0 - mean)² to the variance
    M, N = x.shape
    P = triton.next_power_of_2(N)
    xp = torch.cat([x, torch.zeros(M, P - N, device=x.device)], -1)          # other=0 on the padding lanes
    mu = xp.sum(-1, keepdim=True) / N; var = ((xp - mu) ** 2).sum(-1, keepdim=True) / N   # (0 - mean)² counted in the variance
    r = torch.rsqrt(var + 1e-5); xhat = (xp - mu) * r
    u = torch.cat([dy * w, torch.zeros(M, P - N, device=x.device)], -1)
    dx = r * (u - xhat * (u * xhat).sum(-1, keepdim=True) / N - u.sum(-1, keepdim=True) / N)
    return dx[:, :N], (dy * xhat[:, :N]).sum(0), dy.sum(0)


def ln_unbiased_variance(x, w, dy):
    x = x.double().requires_grad_(); w = w.double().requires_grad_()
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=True, keepdim=True)
    ((x - mu) * torch.rsqrt(var + 1e-5) * w).backward(dy.double())
    return x.grad.float(), w.grad.float(), dy.sum(0)


LN_WRONG = {
    'dx without the mean of u': (ln_no_mean_u, 'missing the mean of u'),
    'dw and db not summed over rows': (ln_dw_not_summed, 'sums over the rows'),
    'dw from x instead of x-hat': (ln_dw_with_x, 'dw = Σ_rows dy · x̂'),
    'mask missing on the padding': (ln_unmasked_padding, 'not a power of two'),
    'unbiased variance': (ln_unbiased_variance, None),
}


@pytest.mark.parametrize('name', LN_WRONG)
def test_check_layer_norm_backward_rejects(name):
    fn, hint = LN_WRONG[name]
    rejects(ops.check_layer_norm_backward, fn, hint)


def test_check_layer_norm_backward_accepts_correct_ones():
    def autograd_ln(x, w, dy):                                       # autograd in float32, another correct way
        x, w, b = x.clone().requires_grad_(), w.clone().requires_grad_(), torch.zeros_like(w, requires_grad=True)
        F.layer_norm(x, x.shape[-1:], w, b, eps=1e-5).backward(dy)
        return x.grad, w.grad, b.grad
    def chapter_kernel(x, w, dy):                                    # the chapter's Triton LayerNorm
        x, w, b = x.clone().requires_grad_(), w.clone().requires_grad_(), torch.zeros_like(w, requires_grad=True)
        ops.layer_norm(x, w, b).backward(dy)
        return x.grad, w.grad, b.grad
    assert ops.check_layer_norm_backward(autograd_ln).ok and ops.check_layer_norm_backward(chapter_kernel).ok


# ---------------------------------------------------------------- chapter 18: matmul traffic
TRAFFIC_WRONG = {
    'no ceil on ragged tiles': (lambda M, N, K, bm, bn, e: e * (M * K * (N // bn) + K * N * (M // bm) + M * N), 'ceil'),
    'C not written': (lambda M, N, K, bm, bn, e: e * (M * K * -(-N // bn) + K * N * -(-M // bm)), 'writing C'),
    'elements, not bytes': (lambda M, N, K, bm, bn, e: M * K * -(-N // bn) + K * N * -(-M // bm) + M * N, 'elem_bytes'),
    'A and B read once (perfect reuse)': (lambda M, N, K, bm, bn, e: e * (M * K + K * N + M * N), None),
}


@pytest.mark.parametrize('name', TRAFFIC_WRONG)
def test_check_matmul_traffic_rejects(name):
    fn, hint = TRAFFIC_WRONG[name]
    rejects(ops.check_matmul_traffic, fn, hint)


def test_check_matmul_traffic_accepts_another_way():
    def by_programs(M, N, K, bm, bn, e):                             # sum over programs: each reads its panels
        pm, pn = math.ceil(M / bm), math.ceil(N / bn)
        return e * (pm * pn * 0 + M * K * pn + K * N * pm + M * N)
    assert ops.check_matmul_traffic(by_programs).ok


# ---------------------------------------------------------------- chapter 19
def lse_no_rescale(x, block):
    m, l = torch.full(x.shape[:1], -math.inf), torch.zeros(x.shape[:1])
    for j in range(0, x.shape[1], block):
        m_new = torch.maximum(m, x[:, j:j + block].amax(1))
        l, m = l + torch.exp(x[:, j:j + block] - m_new[:, None]).sum(1), m_new
    return m + torch.log(l)


LSE_WRONG = {
    'running sum not rescaled': (lse_no_rescale, 'rescale the running sum'),
    'no max (overflow)': (lambda x, block: torch.log(torch.exp(x).sum(-1)), 'running max'),
    'log of the max only': (lambda x, block: x.amax(-1), None),
}


@pytest.mark.parametrize('name', LSE_WRONG)
def test_check_online_logsumexp_rejects(name):
    fn, hint = LSE_WRONG[name]
    rejects(flash.check_online_logsumexp, fn, hint)


def flash_block_loop(q, k, v, causal, rescale_acc=True, normalise=True, skip_diagonal=False, scale=None, bn=32):
    "A blocked forward in torch that can make each of the usual mistakes."
    T = q.shape[-2]
    s = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if causal: s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(0 if skip_diagonal else 1), -math.inf)
    m = torch.full(s.shape[:-1], -math.inf, device=q.device); l = torch.zeros_like(m); acc = torch.zeros_like(q)
    for j in range(0, T, bn):
        sj = s[..., j:j + bn]
        m_new = torch.maximum(m, sj.amax(-1))
        p, alpha = torch.exp(sj - m_new[..., None]).nan_to_num(0.0), torch.exp(m - m_new).nan_to_num(0.0)
        l = l * alpha + p.sum(-1)
        acc = (acc * alpha[..., None] if rescale_acc else acc) + p @ v[..., j:j + bn, :]
        m = m_new
    return acc / l[..., None] if normalise else acc


FLASH_WRONG = {
    'un-rescaled accumulator': (lambda q, k, v, c: flash_block_loop(q, k, v, c, rescale_acc=False), 'accumulator is not rescaled'),
    'missing final 1/l': (lambda q, k, v, c: flash_block_loop(q, k, v, c, normalise=False), 'not normalised'),
    'causal mask ignored': (lambda q, k, v, c: flash_block_loop(q, k, v, False), 'causal'),
    'diagonal block skipped (off by one)': (lambda q, k, v, c: flash_block_loop(q, k, v, c, skip_diagonal=True), 'causal'),
    'missing 1/sqrt(d)': (lambda q, k, v, c: flash_block_loop(q, k, v, c, scale=1.0), 'not scaled'),
}


@pytest.mark.parametrize('name', FLASH_WRONG)
def test_check_flash_forward_rejects(name):
    fn, hint = FLASH_WRONG[name]
    rejects(flash.check_flash_forward, fn, hint)


def test_check_flash_forward_accepts_other_correct_ones():
    assert flash.check_flash_forward(lambda q, k, v, c: flash.flash_attention(q, k, v, c)).ok          # the chapter's kernel
    assert flash.check_flash_forward(lambda q, k, v, c: flash.flash_attention_torch(q, k, v, c, block_m=8, block_n=64)[0]).ok


def attn_backward_parts(q, k, v, do, causal, delta=True, scale_grads=True):
    s = q.shape[-1] ** -0.5
    S = q @ k.transpose(-1, -2) * s
    if causal: S = S.masked_fill(torch.ones(S.shape[-2:], dtype=torch.bool).triu(1), -math.inf)
    P = torch.softmax(S, -1); dP = do @ v.transpose(-1, -2)
    dS = P * (dP - (P * dP).sum(-1, keepdim=True)) if delta else P * dP
    f = s if scale_grads else 1.0
    return dS @ k * f, dS.transpose(-1, -2) @ q * f, P.transpose(-1, -2) @ do


BACKWARD_WRONG = {
    'missing the delta term': (lambda *a: attn_backward_parts(*a, delta=False), 'δ term is missing'),
    'dq, dk without the scale': (lambda *a: attn_backward_parts(*a, scale_grads=False), 'score scale'),
    'dv from P, not P transposed': (lambda q, k, v, do, c: (*attn_backward_parts(q, k, v, do, c)[:2],
                                                           torch.softmax(q @ k.transpose(-1, -2), -1) @ do), None),
}


@pytest.mark.parametrize('name', BACKWARD_WRONG)
def test_check_attention_backward_rejects(name):
    fn, hint = BACKWARD_WRONG[name]
    rejects(flash.check_attention_backward, fn, hint)


# ---------------------------------------------------------------- stubs, and no Triton
STUB_CHECKERS = [ops.check_softmax, ops.check_layer_norm_backward, ops.check_matmul_traffic,
                 flash.check_online_logsumexp, flash.check_flash_forward, flash.check_attention_backward]


@pytest.mark.parametrize('checker', STUB_CHECKERS, ids=lambda c: c.__name__)
def test_stub_is_not_attempted_and_does_not_raise(checker, capsys):
    report = checker(stub)
    assert report.attempted is False and not report.ok
    assert 'not written yet' in capsys.readouterr().out


@pytest.mark.parametrize('checker', [ops.check_softmax, ops.check_layer_norm_backward, flash.check_flash_forward], ids=lambda c: c.__name__)
def test_triton_checkers_without_triton_say_so(checker, monkeypatch, capsys):
    monkeypatch.setattr(ops, 'triton', ops._TritonMissing())
    report = checker(stub)
    assert report.attempted is False and 'Triton is not installed' in capsys.readouterr().out
