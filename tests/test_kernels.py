"""Tests of llm_lab.kernels.ops (chapter 18): every Triton kernel against a float64 torch reference.

Without a GPU the kernels run through Triton's interpreter (llm_lab.kernels.ops turns it on before importing
Triton), so shapes stay small. Tolerances are per dtype and stated next to each test: the kernels compute in
float32 and round their output to the input dtype, so the error is about one rounding of the output dtype
(fp16: 2^-11 ≈ 5e-4 relative, bf16: 2^-8 ≈ 4e-3 relative) times a small factor for reductions.
"""
import json, math, subprocess, sys
import pytest
import torch
import torch.nn.functional as F
from llm_lab.core import has_triton, CheckFailed

pytestmark = pytest.mark.skipif(not has_triton(), reason="Triton is not installed (it has Linux wheels only): "
                                "pip install 'llm_lab[kernels]' to run the kernel tests")

from llm_lab.kernels import ops  # imports without Triton too (kernels become stubs that raise when launched)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEV = 'cuda' if (torch.cuda.is_available() and not ops.INTERPRETED) else 'cpu'


def rand(*shape, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def maxerr(got, want): return (got.detach().double().cpu() - want.detach().double().cpu()).abs().max().item()


# ---------------------------------------------------------------- setup
def test_interpreter_mode_and_patch():
    if DEV == 'cpu':
        assert ops.INTERPRETED, "without CUDA, importing llm_lab.kernels.ops must turn on TRITON_INTERPRET"
        assert ops._patch_interpreter() is True  # idempotent, and applied


def test_missing_triton_gives_clear_error(monkeypatch):
    monkeypatch.setattr(ops, 'triton', ops._TritonMissing())
    with pytest.raises(RuntimeError, match='Triton is not installed'):
        ops.vector_add(torch.ones(3), torch.ones(3))


def test_import_without_triton_explains():
    code = ("import sys; sys.modules['triton'] = None  # as on macOS/Windows\n"
            "import torch\nfrom llm_lab.kernels import ops, flash\n"
            "assert ops.matmul_tile_stats(64, 64, 64, 32, 32)['programs'] == 4  # the analytical parts still work\n"
            "try: flash.flash_attention(*(torch.randn(1, 1, 4, 16),) * 3)\nexcept RuntimeError as e: print(e)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and 'Triton is not installed' in out.stdout, out.stderr[-2000:]


def test_gpu_mode_rejects_cpu_tensors(monkeypatch):
    monkeypatch.setattr(ops, 'INTERPRETED', False)  # as if the kernels had been built for a GPU
    err, msg = (ValueError, r'\.cuda\(\)') if torch.cuda.is_available() else (RuntimeError, 'import llm_lab.kernels before triton')
    with pytest.raises(err, match=msg):
        ops.softmax(torch.randn(2, 3))


# ---------------------------------------------------------------- vector add
@pytest.mark.parametrize('n', [1, 37, 1000, 4097])
@pytest.mark.parametrize('dtype', DTYPES)
def test_vector_add(n, dtype):
    x, y = rand(n, seed=1).to(dtype), rand(n, seed=2).to(dtype)
    got = ops.vector_add(x.to(DEV), y.to(DEV), block=256).cpu()
    want = x.double() + y.double()
    if dtype == torch.bfloat16:  # the interpreter rounds float32 -> bf16 by truncation: allow one bf16 ulp
        assert maxerr(got, want) <= 2 ** -7 * want.abs().max()
    else: assert torch.equal(got, x + y)                     # fp32 and fp16: exactly torch's result


def D(t): return t.to(DEV)


def test_vector_add_mixed_dtypes_promote_like_torch():
    x, y = rand(37, seed=1).float(), rand(37, seed=2).half()
    got = ops.vector_add(D(x), D(y)).cpu()
    assert got.dtype == torch.float32 and torch.equal(got, x + y)


# ---------------------------------------------------------------- 64-bit offsets (issue 11)
INT64_KERNELS = ['_add_kernel', '_softmax_fwd_kernel', '_softmax_bwd_kernel', '_norm_fwd_kernel', '_norm_bwd_kernel',
                 '_matmul_kernel', '_ce_fwd_kernel', '_ce_bwd_kernel']


@pytest.mark.parametrize('name', INT64_KERNELS)
def test_kernels_compute_offsets_in_64_bits(name):
    import inspect
    k = getattr(ops, name)
    while hasattr(k, 'fn'): k = k.fn                  # autotuner -> jit function -> python function
    src = inspect.getsource(k)
    assert 'tl.int64' in src, f'{name} computes row * stride in int32: it overflows past 2^31 elements'


BIG_STRIDE = '''
import sys, torch
from llm_lab.kernels import ops
dev = sys.argv[1]
stride = 2**30                                    # row 2 starts at element 2^31: row * stride overflows int32
try: base = torch.empty(2 * stride + 64, dtype=torch.float16, device=dev)   # 4 GiB of address space; untouched pages cost nothing on a CPU
except (RuntimeError, MemoryError) as e: print('SKIP', e); sys.exit(0)
x = base.as_strided((3, 64), (stride, 1))
x.copy_(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)).half().to(dev))
w, b = torch.ones(64, dtype=torch.float16, device=dev), torch.randn(64, 16, dtype=torch.float16, device=dev)
xf = x.float()
errs = [(ops.softmax(x).float() - torch.softmax(xf, -1)).abs().max().item(),
        (ops.rms_norm(x, w).float() - xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).abs().max().item(),
        (ops.matmul(x, b).float() - xf @ b.float()).abs().max().item() / (xf @ b.float()).abs().max().item()]
print('ERRS', errs)
assert max(errs) < 1e-2, errs
'''


def test_kernels_with_strides_past_int32():
    "A (3, 64) view whose rows are 2^30 elements apart: int32 offsets wrap and read outside the buffer (a crash)."
    out = subprocess.run([sys.executable, '-c', BIG_STRIDE, DEV], capture_output=True, text=True, timeout=600)
    if 'SKIP' in out.stdout: pytest.skip(out.stdout)
    assert out.returncode == 0 and 'ERRS' in out.stdout, (out.returncode, out.stdout[-500:], out.stderr[-2000:])


def test_vector_add_errors():
    with pytest.raises(ValueError, match='same shape'): ops.vector_add(D(torch.ones(3)), D(torch.ones(4)))
    with pytest.raises(TypeError, match='not supported'): ops.vector_add(D(torch.ones(3)), D(torch.ones(3)).double())
    with pytest.raises(ValueError, match='power of two'): ops.vector_add(D(torch.ones(3)), D(torch.ones(3)), block=100)
    with pytest.raises(TypeError, match='torch.Tensor'): ops.vector_add([1, 2], D(torch.ones(2)))


# ---------------------------------------------------------------- softmax
SOFTMAX_TOL = {torch.float32: (6e-7, 2e-7), torch.float16: (1e-3, 3e-4), torch.bfloat16: (1.5e-2, 6e-3)}  # (y, dx) abs; measured fp32 1.5e-7, 4e-8; fp16 2.3e-4, 6.5e-5; bf16 3.8e-3, 1.6e-3


@pytest.mark.parametrize('shape', [(37, 129), (1, 1), (5, 16), (3, 4, 33)])
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('max_block', [16384, 32])
def test_softmax_matches_float64(shape, dtype, max_block):
    x64, g64 = rand(*shape, scale=3, seed=1).to(dtype).double(), rand(*shape, seed=2).to(dtype).double()  # inputs as rounded
    ref_x = x64.clone().requires_grad_()
    ref = torch.softmax(ref_x, -1); ref.backward(g64)
    x = x64.to(dtype).to(DEV).requires_grad_()
    y = ops.softmax(x, max_block=max_block); y.backward(g64.to(dtype).to(DEV))
    ty, tg = SOFTMAX_TOL[dtype]
    assert y.dtype == dtype and y.shape == x.shape
    assert maxerr(y, ref) < ty and maxerr(x.grad, ref_x.grad) < tg * g64.abs().max()


@pytest.mark.parametrize('max_block', [16384, 16])
def test_softmax_masked_scores_and_noncontiguous(max_block):
    x = rand(40, 23, dtype=torch.float32, scale=2, seed=3).to(DEV)
    x[5:9, :] = -math.inf                                       # masked entries, like attention scores
    xt = x.t()                                                  # (23, 40), non-contiguous, 4 masked entries per row
    assert maxerr(ops.softmax(xt, max_block=max_block), torch.softmax(xt, -1)) < 1e-6
    assert maxerr(ops.softmax(xt * 1000, max_block=max_block), torch.softmax(xt * 1000, -1)) < 1e-6  # no overflow


def test_softmax_errors():
    with pytest.raises(TypeError, match='not supported'): ops.softmax(D(torch.randn(3, 4, dtype=torch.float64)))
    with pytest.raises(ValueError, match='at least one dimension'): ops.softmax(D(torch.tensor(1.0)))


# ---------------------------------------------------------------- layer norm / rms norm
NORM_TOL = {torch.float32: 6e-7, torch.float16: 2e-3, torch.bfloat16: 3e-2}  # relative to max |reference|; measured 1.3e-7, 4.4e-4, 7.1e-3


def rms_ref(x, w, eps=1e-6): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def run_grads(fn, tensors, g):
    ts = [t.clone().requires_grad_() for t in tensors]
    y = fn(*ts); y.backward(g.to(y.dtype).to(y.device))
    return [y] + [t.grad for t in ts]


@pytest.mark.parametrize('shape', [(37, 129), (1, 16), (2, 3, 70), (9, 1)])
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('kind', ['layer_norm', 'layer_norm_nobias', 'rms_norm'])
def test_norms_match_float64(shape, dtype, kind):
    N = shape[-1]
    x, w, b, g = (t.to(dtype).double() for t in (rand(*shape, scale=2, seed=4) + 0.5, 1 + 0.3 * rand(N, seed=5),
                                                    0.2 * rand(N, seed=6), rand(*shape, seed=7)))  # inputs as rounded
    if kind == 'layer_norm':
        ref = run_grads(lambda x, w, b: F.layer_norm(x, (N,), w, b), [x, w, b], g)
        got = run_grads(ops.layer_norm, [t.to(dtype).to(DEV) for t in (x, w, b)], g)
    elif kind == 'layer_norm_nobias':
        ref = run_grads(lambda x, w: F.layer_norm(x, (N,), w, None), [x, w], g)
        got = run_grads(ops.layer_norm, [t.to(dtype).to(DEV) for t in (x, w)], g)
    else:
        ref = run_grads(rms_ref, [x, w], g)
        got = run_grads(ops.rms_norm, [t.to(dtype).to(DEV) for t in (x, w)], g)
    for name, a, r in zip(['y', 'dx', 'dw', 'db'], got, ref):
        assert a.dtype == dtype
        assert maxerr(a, r) <= NORM_TOL[dtype] * max(1.0, r.abs().max().item()), name


def test_norm_rows_split_over_programs_deterministic():
    x, w, b, g = (rand(*s, dtype=torch.float32, seed=i).to(DEV) for i, s in enumerate([(103, 40), (40,), (40,), (103, 40)]))
    r1, r2 = run_grads(ops.layer_norm, [x, w, b], g), run_grads(ops.layer_norm, [x, w, b], g)
    assert all(torch.equal(a, c) for a, c in zip(r1, r2))       # partial sums, no atomics: bit-identical reruns


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_norms_fp32_weights_with_16bit_activations_as_under_autocast(dtype):
    N = 70
    x, w, b, g = rand(5, N, scale=2, seed=1), 1 + 0.3 * rand(N, seed=2), 0.2 * rand(N, seed=3), rand(5, N, seed=4)
    xh = x.to(dtype)
    ref = run_grads(lambda x, w, b: F.layer_norm(x, (N,), w, b), [xh.double(), w, b], g)
    got = run_grads(ops.layer_norm, [D(xh), D(w.float()), D(b.float())], g)   # bf16 x, fp32 weight and bias
    assert [t.dtype for t in got] == [dtype, dtype, torch.float32, torch.float32]   # y and dx in x's dtype, dw/db in the weights'
    for name, a, r in zip(['y', 'dx', 'dw', 'db'], got, ref):
        assert maxerr(a, r) <= NORM_TOL[dtype] * max(1.0, r.abs().max().item()), name
    with torch.autocast(DEV if DEV == 'cuda' else 'cpu', dtype=torch.bfloat16):
        h = F.linear(D(x.float()), D(torch.eye(N)))            # bf16 under autocast
        y = ops.rms_norm(h, D(w.float()))
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16


def test_norm_errors():
    x = D(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r'weight must have shape \(N,\)'): ops.layer_norm(x, D(torch.ones(7)))
    with pytest.raises(ValueError, match='bias must have shape'): ops.layer_norm(x, D(torch.ones(8)), D(torch.ones(3)))
    with pytest.raises(TypeError, match='not supported'): ops.rms_norm(x, D(torch.ones(8)).double())
    with pytest.raises(ValueError, match='wider than'): ops.rms_norm(D(torch.randn(1, ops.MAX_NORM_WIDTH + 1)), D(torch.ones(ops.MAX_NORM_WIDTH + 1)))


# ---------------------------------------------------------------- matmul
MM_TOL = {torch.float32: 1e-6, torch.float16: 1.5e-3, torch.bfloat16: 2e-2}  # relative to max |reference|; measured 1.9e-7, 3.4e-4, 5.1e-3


@pytest.mark.parametrize('mnk', [(37, 45, 129), (1, 1, 1), (64, 16, 32), (70, 33, 200)])
@pytest.mark.parametrize('dtype', DTYPES)
def test_matmul_matches_float64(mnk, dtype):
    M, N, K = mnk
    a, b = rand(M, K, seed=1), rand(K, N, seed=2)
    got = ops.matmul(a.to(dtype).to(DEV), b.to(dtype).to(DEV))
    ref = a.to(dtype).double() @ b.to(dtype).double()          # the inputs as rounded, the product exact
    assert got.dtype == dtype and got.shape == (M, N)
    assert maxerr(got, ref) <= MM_TOL[dtype] * max(1.0, ref.abs().max().item())


EPI_TOL = {torch.float32: (2e-6, 2e-6), torch.bfloat16: (2e-2, 2e-2)}  # (y, grads) relative to max |ref|; measured fp32 3e-7, 4e-7


@pytest.mark.parametrize('activation', ['relu', 'gelu', 'silu'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_matmul_epilogue_and_grad(activation, dtype):
    a, b, g = (t.to(dtype).double() for t in (rand(2, 19, 40, seed=1), rand(40, 21, seed=2), rand(2, 19, 21, seed=3)))  # as rounded
    ra, rb = a.clone().requires_grad_(), b.clone().requires_grad_()
    ops.ACTIVATIONS[activation](ra @ rb).backward(g)
    ta, tb = a.to(dtype).to(DEV).requires_grad_(), b.to(dtype).to(DEV).requires_grad_()
    y = ops.matmul(ta, tb, activation); y.backward(g.to(dtype).to(DEV))
    ref = ops.ACTIVATIONS[activation](a @ b)
    ty, tg = EPI_TOL[dtype]
    assert maxerr(y, ref) <= ty * ref.abs().max()
    assert maxerr(ta.grad, ra.grad) <= tg * ra.grad.abs().max() and maxerr(tb.grad, rb.grad) <= tg * rb.grad.abs().max()
    if activation == 'gelu' and dtype == torch.float32:   # the tolerance can tell the tanh form (ours) from exact GELU
        exact = F.gelu(a @ b)
        assert maxerr(exact, ref) > 5 * ty * ref.abs().max(), 'an exact-GELU epilogue would pass this test too'
        assert maxerr(y, exact) > ty * ref.abs().max()    # i.e. the test rejects the exact form


def test_matmul_autotune_key_includes_the_epilogue():
    assert 'ACTIVATION' in ops._matmul_kernel.keys


@pytest.mark.parametrize('config', ops.MATMUL_CONFIGS, ids=str)
def test_matmul_gpu_tile_configs(config):
    "Every autotuning candidate of the GPU, run through the interpreter on a ragged shape (the interpreter autotunes 32x32 only)."
    a, b = rand(70, 200, seed=1), rand(200, 33, seed=2)
    for dtype in (torch.float32, torch.bfloat16):
        got = ops._matmul(D(a.to(dtype)), D(b.to(dtype)), 'relu', config=config)
        ref = torch.relu(a.to(dtype).double() @ b.to(dtype).double())
        assert maxerr(got, ref) <= MM_TOL[dtype] * ref.abs().max(), dtype


def test_matmul_mixed_dtypes_cast_to_the_activation_dtype():
    x, w = rand(9, 40, seed=1), rand(40, 12, seed=2)
    wf = D(w.float()).requires_grad_()
    y = ops.matmul(D(x.bfloat16()), wf)                         # bf16 activations, fp32 weight
    assert y.dtype == torch.bfloat16
    ref = x.bfloat16().double() @ w.bfloat16().double()
    assert maxerr(y, ref) <= MM_TOL[torch.bfloat16] * ref.abs().max()
    y.float().sum().backward()
    assert wf.grad.dtype == torch.float32 and wf.grad.shape == w.shape


def test_matmul_strided_inputs():
    w = rand(45, 129, dtype=torch.float32, seed=1).to(DEV)      # a Linear weight (out, in)
    x = rand(37, 129, dtype=torch.float32, seed=2).to(DEV)
    assert maxerr(ops.matmul(x, w.t()), x.double() @ w.double().t()) < 1e-4   # w.t() is a strided view, no copy needed
    assert maxerr(ops.matmul(x[:, ::2], w[:, ::2].t()), x[:, ::2].double() @ w[:, ::2].double().t()) < 1e-4


def test_matmul_errors():
    with pytest.raises(ValueError, match=r'a \(\.\.\., K\) and b \(K, N\)'): ops.matmul(D(torch.randn(3, 4)), D(torch.randn(5, 6)))
    with pytest.raises(ValueError, match='activation'): ops.matmul(D(torch.randn(3, 4)), D(torch.randn(4, 6)), 'tanh')
    with pytest.raises(TypeError, match='not supported'): ops.matmul(D(torch.randn(3, 4)), D(torch.randn(4, 6)).double())


# ---------------------------------------------------------------- cross-entropy
CE_TOL = {torch.float32: 1.5e-6, torch.float16: 1.5e-3, torch.bfloat16: 3e-2}  # on dlogits, abs; measured 3.7e-7, 3.5e-4, 7.6e-3
CE_LOSS_TOL = 5e-6  # the loss is computed in float32 whatever the logits' dtype: measured <= 1.4e-6


@pytest.mark.parametrize('RV', [(37, 1000), (5, 37), (3, 1)])
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('looped', [False, True])
def test_cross_entropy_matches_float64(RV, dtype, looped):
    R, V = RV
    max_block = (128 if V > 500 else 16) if looped else 4096     # looped: several steps and a ragged last block
    logits = rand(R, V, scale=4, seed=1)
    t = torch.randint(0, V, (R,), generator=torch.Generator().manual_seed(0))
    t[::3] = -100
    lg = logits.to(dtype)
    ref_l = lg.double().requires_grad_()
    ref = F.cross_entropy(ref_l, t, reduction='none')
    g = rand(R, seed=5)
    ref.backward(g)
    x = lg.to(DEV).requires_grad_()
    loss = ops.cross_entropy(x, t.to(DEV), reduction='none', max_block=max_block)
    loss.backward(g.float().to(DEV))
    assert loss.dtype == torch.float32 and loss.shape == (R,)
    assert maxerr(loss, ref) < CE_LOSS_TOL and maxerr(x.grad, ref_l.grad) < CE_TOL[dtype]


@pytest.mark.parametrize('reduction', ['mean', 'sum'])
def test_cross_entropy_reductions_and_batch_dims(reduction):
    logits, t = rand(2, 7, 50, dtype=torch.float32, seed=2).to(DEV), torch.randint(0, 50, (2, 7)).to(DEV)
    t[0, :3] = -100
    assert maxerr(ops.cross_entropy(logits, t, reduction=reduction),
                  F.cross_entropy(logits.flatten(0, 1), t.flatten(), reduction=reduction)) < 1e-5
    assert torch.isnan(ops.cross_entropy(logits, torch.full((2, 7), -100, device=DEV))) == torch.isnan(F.cross_entropy(logits.flatten(0, 1), torch.full((14,), -100, device=DEV)))


def test_cross_entropy_errors():
    lg = D(torch.randn(4, 10))
    with pytest.raises(ValueError, match=r'lie in \[0, 10\)'): ops.cross_entropy(lg, D(torch.tensor([0, 1, 10, 2])))
    with pytest.raises(TypeError, match='int64 or int32'): ops.cross_entropy(lg, D(torch.zeros(4)))
    with pytest.raises(ValueError, match='targets'): ops.cross_entropy(lg, D(torch.zeros(5, dtype=torch.long)))
    with pytest.raises(ValueError, match='reduction'): ops.cross_entropy(lg, D(torch.zeros(4, dtype=torch.long)), reduction='avg')


# ---------------------------------------------------------------- analytical helpers, plots, checkers
def test_roofline_and_tile_stats():
    assert ops.roofline_time(1e12, 1e9, 1e12, 1e12) == 1.0 and ops.roofline_time(1, 3e12, 1e12, 1e12) == 3.0
    with pytest.raises(ValueError): ops.roofline_time(-1, 1)
    s = ops.matmul_tile_stats(4096, 4096, 4096, 128, 128)
    assert s['programs'] == 1024 and math.isclose(s['intensity'], 2 * 4096**3 / s['bytes'])
    with pytest.raises(ValueError, match='block_m'): ops.matmul_tile_stats(8, 8, 8, 0, 8)


@pytest.mark.parametrize('pm,pn,g', [(8, 8, 1), (8, 8, 4), (7, 5, 3), (33, 2, 8)])
def test_program_tile_is_a_permutation(pm, pn, g):
    tiles = [ops.program_tile(p, pm, pn, g) for p in range(pm * pn)]
    assert sorted(tiles) == [(m, n) for m in range(pm) for n in range(pn)]


def test_plots_and_benchmark_file(tmp_path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ops.plot_roofline({'x': (1e9, 1e9)}); ops.plot_matmul_tiles(64, 32, 1024, 't4')
    data = {'meta': {'device': 'fake GPU', 'date': '2026-01-01'}, 'ceilings': {'copy_gbps': 3000, 'matmul_bf16_tflops': 700},
            'results': [{'kernel': 'softmax fwd', 'impl': i, 'dtype': 'bf16', 'x': n, 'x_name': 'cols', 'ms': 1.0, 'gbps': g, 'tflops': None}
                        for i, g0 in (('triton', 2000), ('torch', 1200)) for n, g in ((1024, g0), (4096, g0 * 1.1))] +
                       [{'kernel': 'matmul', 'impl': 'triton', 'dtype': 'bf16', 'x': 4096, 'ms': 1.0, 'gbps': None, 'tflops': 600}]}
    p = tmp_path / 'kernels.json'; p.write_text(json.dumps(data))
    assert ops.load_benchmarks(p) == data and ops.load_benchmarks(tmp_path / 'missing.json') is None
    ops.plot_benchmarks(data)
    (tmp_path / 'bad.json').write_text('{"a": 1}')
    with pytest.raises(ValueError, match='bench/kernels.py'): ops.load_benchmarks(tmp_path / 'bad.json')
    plt.close('all')
