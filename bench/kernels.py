#!/usr/bin/env python
"""Benchmark llm_lab's Triton kernels (chapters 18-19) against torch on a CUDA GPU.

    python bench/kernels.py              # full sweep on a CUDA device; prints a table, writes bench/results/kernels.json
    python bench/kernels.py --quick      # fewer sizes (about a minute)
    python bench/kernels.py --smoke      # no GPU needed: a tiny correctness run through Triton's CPU interpreter
    python bench/kernels.py --dry-run    # no GPU needed: every code path of the benchmark on tiny CPU shapes (timings meaningless)
    python bench/kernels.py --compile-check  # no GPU needed: compile every kernel and autotuning candidate for sm_90 (H100)

Every kernel is timed with triton.testing.do_bench (median of many runs, after warm-up) next to torch eager and,
for the memory-bound kernels, torch.compile. The card's own ceilings are measured in the same run: the bandwidth
of a large device-to-device copy and the FLOP/s of a large cuBLAS bf16 matmul; each row reports its fraction of
the relevant ceiling. Each implementation is also checked against torch (max abs error) in the same run.
"""
import argparse, datetime, json, math, os, platform, sys, time, traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / 'bench' / 'results' / 'kernels.json'
DTYPE_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}


class Bench:
    "Collects timed rows; `timer` is do_bench on a GPU, a perf_counter loop in --dry-run."
    def __init__(self, device, dry=False, use_compile=True):
        self.device, self.dry, self.use_compile, self.rows, self.ceilings = device, dry, use_compile and not dry, [], {}
        if dry:
            self.timer = self._cpu_timer
        else:
            from triton.testing import do_bench
            self.timer = lambda fn: do_bench(fn, warmup=25, rep=100, return_mode='median')

    @staticmethod
    def _cpu_timer(fn, n=2):
        fn(); t = time.perf_counter()
        for _ in range(n): fn()
        return (time.perf_counter() - t) / n * 1e3

    def run(self, kernel, impl, dtype, x, x_name, fn, nbytes=None, flops=None, check=None, **extra):
        "Time `fn` (ms); `check()` returns the max abs error against torch. Failures are recorded, not raised."
        row = dict(kernel=kernel, impl=impl, dtype=DTYPE_NAMES.get(dtype, str(dtype)), x=x, x_name=x_name, **extra)
        try:
            row['max_abs_err'] = None if check is None else float(check())
            ms = self.timer(fn)
            row.update(ms=ms, gbps=None if nbytes is None else nbytes / ms / 1e6, tflops=None if flops is None else flops / ms / 1e9)
        except Exception as e:  # an unavailable backend, an OOM: keep going
            row.update(ms=None, gbps=None, tflops=None, error=f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}')
        self.rows.append(row)
        print(fmt_row(row, self.ceilings), flush=True)
        return row

    def compiled(self, fn):
        "torch.compile(fn) when enabled, else None."
        if not self.use_compile: return None
        return torch.compile(fn, dynamic=False)


def fmt_row(r, ceilings):
    if r.get('ms') is None: return f"{r['kernel']:<24} {r['impl']:<16} {r['dtype']:<5} {r['x_name']}={r['x']:<8} FAILED {r.get('error', '')}"
    perf = f"{r['tflops']:8.1f} TFLOP/s" if r.get('tflops') is not None else f"{r['gbps']:8.0f} GB/s   "
    ceil = ceilings.get('matmul_bf16_tflops') if r.get('tflops') is not None else ceilings.get('copy_gbps')
    val = r['tflops'] if r.get('tflops') is not None else r['gbps']
    frac = f"{100 * val / ceil:5.0f}% of ceiling" if ceil and val is not None else ''
    err = f"err {r['max_abs_err']:.1e}" if r.get('max_abs_err') is not None else ''
    return f"{r['kernel']:<24} {r['impl']:<16} {r['dtype']:<5} {r['x_name']}={r['x']:<8} {r['ms']:9.4f} ms {perf} {frac:>17} {err}"


def rnd(*shape, dtype, device, scale=1.0):
    return torch.randn(*shape, dtype=torch.float32, device=device).mul_(scale).to(dtype)


# ------------------------------------------------------------------ ceilings
def ceilings(b, quick):
    dev = b.device
    n = (2**28 if not quick else 2**27) if not b.dry else 2**16           # 1 GiB (512 MiB) of fp32
    x = torch.empty(n, dtype=torch.float32, device=dev).normal_(); y = torch.empty_like(x)
    r = b.run('ceiling: copy', 'torch copy_', torch.float32, n, 'elements', lambda: y.copy_(x), nbytes=2 * x.nbytes)
    b.ceilings['copy_gbps'] = r.get('gbps')
    del x, y
    best = None
    for s in ((4096, 8192) if not b.dry else (64,)):
        A, B = rnd(s, s, dtype=torch.bfloat16, device=dev), rnd(s, s, dtype=torch.bfloat16, device=dev)
        r = b.run('ceiling: matmul', 'cuBLAS', torch.bfloat16, s, 'n', lambda: A @ B, flops=2 * s**3)
        if r.get('tflops') and (best is None or r['tflops'] > best): best = r['tflops']
    b.ceilings['matmul_bf16_tflops'] = best


# ------------------------------------------------------------------ memory-bound kernels
def bench_add(b, quick):
    from llm_lab.kernels.ops import vector_add
    sizes = [2**20, 2**24, 2**27] if quick else [2**20, 2**22, 2**24, 2**26, 2**28]
    for n in (sizes if not b.dry else [4099]):
        x, y = rnd(n, dtype=torch.float32, device=b.device), rnd(n, dtype=torch.float32, device=b.device)
        nb = 3 * x.nbytes
        b.run('add', 'triton', torch.float32, n, 'n', lambda: vector_add(x, y), nbytes=nb, check=lambda: (vector_add(x, y) - (x + y)).abs().max())
        b.run('add', 'torch', torch.float32, n, 'n', lambda: x + y, nbytes=nb)


def bench_softmax(b, quick):
    from llm_lab.kernels.ops import softmax
    M = 4096 if not b.dry else 8
    widths = [1024, 4096, 16384] if quick else [1024, 2048, 4096, 8192, 16384, 32768]
    comp = b.compiled(lambda x: torch.softmax(x, -1))
    for dtype in (torch.float32, torch.bfloat16):
        for N in (widths if not b.dry else [37, 300]):
            x = rnd(M, N, dtype=dtype, device=b.device, scale=3)
            nb = 2 * x.numel() * x.element_size()
            ref = torch.softmax(x.float(), -1)
            b.run('softmax fwd', 'triton', dtype, N, 'cols', lambda: softmax(x), nbytes=nb, check=lambda: (softmax(x).float() - ref).abs().max())
            b.run('softmax fwd', 'torch', dtype, N, 'cols', lambda: torch.softmax(x, -1), nbytes=nb)
            if comp: b.run('softmax fwd', 'torch.compile', dtype, N, 'cols', lambda: comp(x), nbytes=nb)
            # backward alone: read dy and y, write dx
            dy = rnd(M, N, dtype=dtype, device=b.device)
            for impl, f in (('triton', softmax), ('torch', lambda t: torch.softmax(t, -1))):
                xr = x.clone().requires_grad_(); yy = f(xr)
                b.run('softmax bwd', impl, dtype, N, 'cols', lambda: torch.autograd.grad(yy, xr, dy, retain_graph=True), nbytes=3 * nb // 2)


def rms_norm_torch(x, w, eps=1e-6):
    if hasattr(F, 'rms_norm'): return F.rms_norm(x, x.shape[-1:], w, eps)
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def bench_norms(b, quick):
    from llm_lab.kernels.ops import layer_norm, rms_norm
    M = 4096 if not b.dry else 8
    widths = [1024, 4096, 16384] if quick else [1024, 2048, 4096, 8192, 16384]
    ln_t, rms_t = (lambda x, w, bb: F.layer_norm(x, x.shape[-1:], w, bb)), (lambda x, w, bb: rms_norm_torch(x, w))
    ln_k, rms_k = (lambda x, w, bb: layer_norm(x, w, bb)), (lambda x, w, bb: rms_norm(x, w))
    for name, mine, theirs in (('layer_norm', ln_k, ln_t), ('rms_norm', rms_k, rms_t)):
        comp = b.compiled(theirs)
        for dtype in (torch.float32, torch.bfloat16):
            for N in (widths if not b.dry else [37, 300]):
                x = rnd(M, N, dtype=dtype, device=b.device, scale=2)
                w, bb = 1 + 0.1 * rnd(N, dtype=dtype, device=b.device), 0.1 * rnd(N, dtype=dtype, device=b.device)
                nb = 2 * x.numel() * x.element_size()
                ref = theirs(x.float(), w.float(), bb.float())
                b.run(f'{name} fwd', 'triton', dtype, N, 'cols', lambda: mine(x, w, bb), nbytes=nb,
                      check=lambda: (mine(x, w, bb).float() - ref).abs().max())
                b.run(f'{name} fwd', 'torch', dtype, N, 'cols', lambda: theirs(x, w, bb), nbytes=nb)
                if comp: b.run(f'{name} fwd', 'torch.compile', dtype, N, 'cols', lambda: comp(x, w, bb), nbytes=nb)
                dy = rnd(M, N, dtype=dtype, device=b.device)
                for impl, f in (('triton', mine), ('torch', theirs)):
                    xr, wr, br = x.clone().requires_grad_(), w.clone().requires_grad_(), bb.clone().requires_grad_()
                    yy = f(xr, wr, br)
                    b.run(f'{name} bwd', impl, dtype, N, 'cols', lambda: torch.autograd.grad(yy, (xr, wr), dy, retain_graph=True, allow_unused=True),
                          nbytes=3 * nb // 2)  # read x, dy; write dx (weight grads are O(N))


# ------------------------------------------------------------------ matmul
def bench_matmul(b, quick):
    from llm_lab.kernels.ops import matmul
    sizes = [4096] if quick else [1024, 2048, 4096, 8192]
    gelu = lambda t: F.gelu(t, approximate='tanh')
    comp = b.compiled(lambda a, w: gelu(a @ w))
    for dtype in (torch.bfloat16, torch.float16):
        for n in (sizes if not b.dry else [70]):
            A, B = rnd(n, n, dtype=dtype, device=b.device), rnd(n, n, dtype=dtype, device=b.device)
            ref = A.float() @ B.float()
            fl = 2 * n**3
            b.run('matmul', 'triton', dtype, n, 'n', lambda: matmul(A, B), flops=fl, check=lambda: (matmul(A, B).float() - ref).abs().max())
            b.run('matmul', 'torch (cuBLAS)', dtype, n, 'n', lambda: A @ B, flops=fl)
            if dtype == torch.bfloat16:
                b.run('matmul+gelu', 'triton fused', dtype, n, 'n', lambda: matmul(A, B, 'gelu'), flops=fl,
                      check=lambda: (matmul(A, B, 'gelu').float() - gelu(ref)).abs().max())
                b.run('matmul+gelu', 'torch', dtype, n, 'n', lambda: gelu(A @ B), flops=fl)
                if comp: b.run('matmul+gelu', 'torch.compile', dtype, n, 'n', lambda: comp(A, B), flops=fl)


# ------------------------------------------------------------------ cross-entropy
def peak_extra_mb(fn, device):
    "Peak memory allocated while running fn, above what was allocated before, in MB (CUDA only)."
    if device.type != 'cuda': return None
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    fn(); torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e6


def bench_cross_entropy(b, quick):
    from llm_lab.kernels.ops import cross_entropy
    R = (4096 if quick else 8192) if not b.dry else 16
    vocabs = [50304] if quick else [32000, 50304, 128256]
    torch_up = lambda lg, t: F.cross_entropy(lg.float(), t)        # the usual upcast, as in llm_lab.model
    comp = b.compiled(torch_up)
    for V in (vocabs if not b.dry else [1000]):
        dtype = torch.bfloat16
        logits = rnd(R, V, dtype=dtype, device=b.device, scale=2)
        t = torch.randint(0, V, (R,), device=b.device)
        nb = 3 * logits.numel() * logits.element_size()               # fwd reads logits; bwd reads them and writes dlogits
        ref = F.cross_entropy(logits.float(), t)
        impls = [('triton fused', cross_entropy), ('torch (upcast)', torch_up)] + ([('torch.compile', comp)] if comp else [])
        for impl, f in impls:
            lg = logits.clone().requires_grad_()
            def step(f=f, lg=lg):
                loss = f(lg, t); loss.backward(); lg.grad = None
            try: step(); extra = peak_extra_mb(step, b.device)   # warm (and compile) first, then measure the peak
            except Exception: extra = None                       # Bench.run records the failure below
            b.run('cross_entropy f+b', impl, dtype, V, 'vocab', step, nbytes=nb, extra_mem_mb=extra,
                  check=lambda f=f: (f(logits, t).float() - ref).abs().max())


# ------------------------------------------------------------------ attention
def bench_flash(b, quick):
    from llm_lab.kernels.flash import flash_attention
    from torch.nn.attention import sdpa_kernel, SDPBackend
    seqs = [1024, 4096] if quick else [1024, 2048, 4096, 8192]
    backends = ([('torch flash2', SDPBackend.FLASH_ATTENTION), ('torch cudnn', SDPBackend.CUDNN_ATTENTION)]
                if not b.dry else [('torch math', SDPBackend.MATH)])
    dtype = torch.bfloat16
    for D in (64, 128):
        for causal in (True, False):
            for T in (seqs if not b.dry else [70]):
                B, H = (max(1, 16384 // T), 2048 // D) if not b.dry else (1, 2)  # 16k tokens, model width 2048
                q, k, v, do = (rnd(B, H, T, D, dtype=dtype, device=b.device) for _ in range(4))
                fl = 4 * B * H * T * T * D * (0.5 if causal else 1.0)
                ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
                tag = f"{'causal' if causal else 'full'} D={D}"
                b.run(f'flash fwd {tag}', 'triton', dtype, T, 'seq', lambda: flash_attention(q, k, v, causal), flops=fl,
                      check=lambda: (flash_attention(q, k, v, causal).float() - ref).abs().max())
                for name, be in backends:
                    def fwd(be=be):
                        with sdpa_kernel(be): return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    b.run(f'flash fwd {tag}', name, dtype, T, 'seq', fwd, flops=fl)
                # backward alone: 2.5x the forward FLOPs (two matmuls recomputed, three for the gradients)
                qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
                o = flash_attention(qr, kr, vr, causal)
                b.run(f'flash bwd {tag}', 'triton', dtype, T, 'seq', lambda: torch.autograd.grad(o, (qr, kr, vr), do, retain_graph=True),
                      flops=2.5 * fl)
                for name, be in backends:
                    try:
                        with sdpa_kernel(be): o2 = F.scaled_dot_product_attention(qr, kr, vr, is_causal=causal)
                    except Exception as e:
                        b.rows.append(dict(kernel=f'flash bwd {tag}', impl=name, dtype='bf16', x=T, x_name='seq', ms=None, gbps=None, tflops=None, error=str(e)[:200]))
                        continue
                    b.run(f'flash bwd {tag}', name, dtype, T, 'seq', lambda o2=o2: torch.autograd.grad(o2, (qr, kr, vr), do, retain_graph=True),
                          flops=2.5 * fl)
                del q, k, v, do, qr, kr, vr, o
    for D in (64, 128):   # KV-cache decoding: one new query per sequence against a cache of Tk keys (the short-tile kernel)
        for Tk in (seqs if not b.dry else [70]):
            B, H = (16, 2048 // D) if not b.dry else (1, 2)
            q, k, v = rnd(B, H, 1, D, dtype=dtype, device=b.device), rnd(B, H, Tk, D, dtype=dtype, device=b.device), rnd(B, H, Tk, D, dtype=dtype, device=b.device)
            nb = (k.numel() + v.numel()) * k.element_size()                   # reading the cache is the whole cost
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            b.run(f'flash decode D={D}', 'triton', dtype, Tk, 'cache', lambda: flash_attention(q, k, v, False), nbytes=nb,
                  check=lambda: (flash_attention(q, k, v, False).float() - ref).abs().max())
            for name, be in backends:
                def dec(be=be):
                    with sdpa_kernel(be): return F.scaled_dot_product_attention(q, k, v)
                b.run(f'flash decode D={D}', name, dtype, Tk, 'cache', dec, nbytes=nb)


# ------------------------------------------------------------------ summary against the targets
def speed(rows, kernel, impl, dtype, x):
    for r in rows:
        if r['kernel'] == kernel and r['impl'] == impl and r['dtype'] == dtype and r['x'] == x and r.get('ms'): return r
    return None


def targets(rows, ceil):
    "The issue's targets as ratios measured side by side: a list of (target, measured, verdict)."
    out = []
    copy = ceil.get('copy_gbps')
    for kern in ('softmax fwd', 'layer_norm fwd', 'rms_norm fwd'):
        sel = [r for r in rows if r['kernel'] == kern and r['impl'] == 'triton' and r['dtype'] == 'bf16' and r.get('gbps') and 1024 <= r['x'] <= 16384]
        if sel and copy:
            worst = min(r['gbps'] for r in sel) / copy
            out.append((f'{kern} bf16, rows 1k-16k: >= 80% of copy bandwidth', f'worst {100 * worst:.0f}%', 'ok' if worst >= 0.8 else 'short'))
    mm, cb = speed(rows, 'matmul', 'triton', 'bf16', 4096), speed(rows, 'matmul', 'torch (cuBLAS)', 'bf16', 4096)
    if mm and cb:
        f = mm['tflops'] / cb['tflops']
        out.append(('matmul 4096^3 bf16: >= 85% of cuBLAS', f'{100 * f:.0f}%', 'ok' if f >= 0.85 else 'short'))
    for direction, goal in (('fwd', 1.0), ('bwd', 0.8)):
        ratios = []
        for r in rows:
            if r['kernel'].startswith(f'flash {direction}') and r['impl'] == 'triton' and r.get('ms'):
                ref = speed(rows, r['kernel'], 'torch flash2', r['dtype'], r['x'])
                if ref: ratios.append(ref['ms'] / r['ms'])
        if ratios:
            out.append((f'flash {direction} vs torch FlashAttention-2, seq 1k-8k, D 64/128: >= {goal}x', f'worst {min(ratios):.2f}x, best {max(ratios):.2f}x',
                        'ok' if min(ratios) >= goal else 'short'))
    ce = [(r, speed(rows, r['kernel'], 'torch (upcast)', r['dtype'], r['x'])) for r in rows if r['kernel'] == 'cross_entropy f+b' and r['impl'] == 'triton fused' and r.get('ms')]
    ce = [(a, c) for a, c in ce if c]
    if ce:
        worst = min(c['ms'] / a['ms'] for a, c in ce)
        out.append(('fused cross-entropy: >= 3x F.cross_entropy', f'worst {worst:.1f}x', 'ok' if worst >= 3 else 'short'))
        mem = [(a.get('extra_mem_mb'), c.get('extra_mem_mb'), a['x']) for a, c in ce]
        out.append(('fused cross-entropy: no logits-sized softmax buffer', '; '.join(f'V={v}: {m1:.0f} MB vs torch {m2:.0f} MB' for m1, m2, v in mem if m1 is not None and m2 is not None) or 'n/a', ''))
    return out


# ------------------------------------------------------------------ smoke run (CPU interpreter)
def smoke() -> int:
    "Tiny correctness run of every kernel through Triton's interpreter (or compiled on a GPU): no timing."
    from llm_lab.kernels import ops, flash
    dev = 'cuda' if torch.cuda.is_available() and not ops.INTERPRETED else 'cpu'
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dev)
    x, w, bb = r(37, 129), r(129), r(129)
    t = torch.randint(0, 129, (37,), generator=g).to(dev)
    q, k, v = r(1, 2, 37, 32), r(1, 2, 37, 32), r(1, 2, 37, 32)
    checks = [
        ('vector_add', ops.vector_add(x, x), x + x),
        ('softmax', ops.softmax(x), torch.softmax(x, -1)),
        ('softmax (looped)', ops.softmax(x, max_block=32), torch.softmax(x, -1)),
        ('layer_norm', ops.layer_norm(x, w, bb), F.layer_norm(x, (129,), w, bb)),
        ('rms_norm', ops.rms_norm(x, w), rms_norm_torch(x, w)),
        ('matmul+gelu', ops.matmul(x, x.t(), 'gelu'), F.gelu(x @ x.t(), approximate='tanh')),
        ('cross_entropy', ops.cross_entropy(x, t), F.cross_entropy(x, t)),
        ('flash_attention', flash.flash_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    ]
    print(f"smoke run ({'compiled on ' + torch.cuda.get_device_name() if dev == 'cuda' else 'Triton interpreter on the CPU'}):")
    ok = True
    for name, got, want in checks:
        err = (got.float() - want.float()).abs().max().item()
        ok &= err < 1e-3
        print(f'  {name:<18} max |error| vs torch = {err:.1e}')
    print('all kernels correct' if ok else 'SOME KERNELS DISAGREE WITH TORCH')
    return 0 if ok else 1


# ------------------------------------------------------------------ cross-compilation check (no GPU needed)
FP32_ARGS = {'LSE', 'DELTA', 'mean_ptr', 'rstd_ptr', 'loss_ptr', 'lse_ptr', 'dw_part_ptr', 'db_part_ptr', 'dloss_ptr'}


def _signature(fn, dtype, constexprs):
    "A signature for triton.compile from the kernel's argument names: pointers in `dtype` (float32 side buffers, int64 targets)."
    sig = {}
    for p in fn.params:
        n = p.name
        if p.is_constexpr or n in constexprs: sig[n] = 'constexpr'
        elif n == 'targets_ptr': sig[n] = '*i64'
        elif n in FP32_ARGS: sig[n] = '*fp32'
        elif n.endswith('_ptr') or (fn.__name__.startswith('_flash') and n in ('Q', 'K', 'V', 'O', 'DO', 'DQ', 'DK', 'DV')): sig[n] = f'*{dtype}'
        elif n in ('eps', 'sm_scale'): sig[n] = 'fp32'
        else: sig[n] = 'i32'
    return sig


def compile_check(arch: int = 90) -> int:
    "Compile every kernel, every autotuning candidate and every branch for a CUDA GPU of compute capability `arch`, on this machine."
    os.environ.pop('TRITON_INTERPRET', None)
    import triton                                    # first: the kernels below are then built for a GPU
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner
    from llm_lab.kernels import ops, flash
    assert not ops.INTERPRETED
    target, fails, n = GPUTarget('cuda', arch, 32), 0, 0

    def comp(kernel, dtype, consts, num_warps=4, num_stages=3, label=''):
        nonlocal fails, n
        fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
        name = f"{fn.__name__} {dtype} {label or consts}"
        n += 1
        try:
            k = triton.compile(ASTSource(fn=fn, signature=_signature(fn, dtype, consts), constexprs=consts), target=target,
                               options=dict(num_warps=num_warps, num_stages=num_stages))
            print(f'  ok    {name:<100} shared memory {k.metadata.shared / 1024:6.1f} KB')
        except Exception as e:
            fails += 1
            print(f'  FAIL  {name}: {type(e).__name__}: {str(e)[:1500]}')

    def tuned(kernel, dtype, consts):
        for c in kernel.configs:
            comp(kernel, dtype, {**consts, **c.kwargs}, c.num_warps, c.num_stages, label=f'{consts} {c.kwargs} w{c.num_warps} s{c.num_stages}')

    for dt in ('fp32', 'fp16', 'bf16'):
        comp(ops._add_kernel, dt, dict(BLOCK=1024))
        for one in (True, False):
            comp(ops._softmax_fwd_kernel, dt, dict(BLOCK=4096, ONE_PASS=one), 8)
            comp(ops._softmax_bwd_kernel, dt, dict(BLOCK=4096, ONE_PASS=one), 8)
        for rms, bias in ((False, True), (False, False), (True, False)):
            comp(ops._norm_fwd_kernel, dt, dict(BLOCK=4096, IS_RMS=rms, HAS_BIAS=bias), 8)
            comp(ops._norm_bwd_kernel, dt, dict(BLOCK=4096, IS_RMS=rms, HAS_BIAS=bias), 8)
        comp(ops._ce_fwd_kernel, dt, dict(BLOCK=4096), 8)
        comp(ops._ce_bwd_kernel, dt, dict(BLOCK=4096), 8)
        prec = 'ieee' if dt == 'fp32' else 'tf32'
        if dt == 'bf16':
            for act in ('', 'relu', 'gelu', 'silu'):      # the epilogue is part of the autotuning key: every candidate with each
                tuned(ops._matmul_kernel, dt, dict(ACTIVATION=act, PRECISION=prec))
            for D in (64, 128):
                for causal in (True, False):
                    for kern in (flash._fwd, flash._fwd_decode, flash._bwd_dkdv, flash._bwd_dq):
                        tuned(kern, dt, dict(CAUSAL=causal, PRECISION=prec, BLOCK_D=D))
        else:
            comp(ops._matmul_kernel, dt, dict(ACTIVATION='', PRECISION=prec, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8), 4, 3)
            for kern in (flash._fwd, flash._bwd_dkdv, flash._bwd_dq):
                comp(kern, dt, dict(CAUSAL=True, PRECISION=prec, BLOCK_D=32, BLOCK_M=64, BLOCK_N=64), 4, 3)
    print(f'{n - fails}/{n} kernel variants compile for sm_{arch} with Triton {triton.__version__}')
    return 1 if fails else 0


# ------------------------------------------------------------------ main
SUITES = {'add': bench_add, 'softmax': bench_softmax, 'norms': bench_norms, 'matmul': bench_matmul,
          'cross_entropy': bench_cross_entropy, 'flash': bench_flash}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='fewer sizes')
    p.add_argument('--smoke', action='store_true', help='tiny correctness run, no timing (works on a CPU through the interpreter)')
    p.add_argument('--dry-run', action='store_true', help='exercise every code path on tiny CPU shapes (timings meaningless); writes nothing unless --out is given')
    p.add_argument('--compile-check', type=int, nargs='?', const=90, metavar='ARCH',
                   help='no GPU needed: compile every kernel and autotuning candidate for compute capability ARCH (default 90, H100)')
    p.add_argument('--only', nargs='+', choices=list(SUITES), help='run only these kernel groups')
    p.add_argument('--no-compile', action='store_true', help='skip the torch.compile baselines (they compile once per shape)')
    p.add_argument('--out', default=None, help=f'where to write the JSON (default {DEFAULT_OUT.relative_to(ROOT)})')
    args = p.parse_args(argv)
    if args.compile_check: return compile_check(args.compile_check)
    if args.smoke: return smoke()
    if not args.dry_run:
        if not torch.cuda.is_available():
            print('bench/kernels.py measures GPU speed and needs a CUDA device, and there is none here.\n'
                  'Run it on a GPU machine, or use --smoke for a tiny correctness run through the Triton interpreter.', file=sys.stderr)
            return 2
        if os.environ.get('TRITON_INTERPRET') == '1':
            print('TRITON_INTERPRET=1 is set: the kernels would be interpreted, not compiled. Unset it to benchmark.', file=sys.stderr)
            return 2
    from llm_lab.kernels import ops  # before triton: importing it first chooses interpreted vs compiled kernels
    import triton
    device = torch.device('cpu' if args.dry_run else 'cuda')
    if args.dry_run: torch.manual_seed(0)
    try: torch._dynamo.config.cache_size_limit = 64   # the compiled baselines see one shape per size
    except AttributeError: pass
    b = Bench(device, dry=args.dry_run, use_compile=not args.no_compile)
    name = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU (dry run: timings meaningless)'
    meta = dict(device=name, date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                quick=args.quick, command='python bench/kernels.py ' + ' '.join(argv if argv is not None else sys.argv[1:]))
    print(f"# {meta['device']} | torch {meta['torch']} | triton {meta['triton']} | {meta['date']}")
    t0 = time.time()
    ceilings(b, args.quick)
    print(f"# ceilings: copy {b.ceilings.get('copy_gbps') or 0:.0f} GB/s, cuBLAS bf16 {b.ceilings.get('matmul_bf16_tflops') or 0:.0f} TFLOP/s")
    for name_, suite in SUITES.items():
        if args.only and name_ not in args.only: continue
        try: suite(b, args.quick)
        except Exception:  # one broken suite must not lose the others' results
            traceback.print_exc()
            b.rows.append(dict(kernel=name_, impl='suite', dtype='-', x=0, x_name='-', ms=None, gbps=None, tflops=None, error=traceback.format_exc(limit=1)[-300:]))
        if device.type == 'cuda': torch.cuda.empty_cache()
    meta['seconds'] = round(time.time() - t0, 1)
    summary = targets(b.rows, b.ceilings)
    print('\n# targets (issue 7), measured side by side in this run')
    for tgt, got, verdict in summary: print(f'  [{verdict:^5}] {tgt}: {got}')
    out = Path(args.out) if args.out else (None if args.dry_run else DEFAULT_OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(meta=meta, ceilings=b.ceilings, results=b.rows,
                                       targets=[dict(target=a, measured=m, verdict=v) for a, m, v in summary]), indent=1))
        print(f'\nwrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
