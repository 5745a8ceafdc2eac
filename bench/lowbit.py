#!/usr/bin/env python
"""Benchmark chapter 17's weight-only low-bit matmul (llm_lab.compress.lowbit_matmul) on a CUDA GPU.

    python bench/lowbit.py            # decoding and prefill shapes; prints a table, writes bench/results/lowbit.json
    python bench/lowbit.py --quick    # two shapes
    python bench/lowbit.py --smoke    # no GPU needed: a tiny correctness run through Triton's CPU interpreter

For each (M, N, K) it times, with triton.testing.do_bench: a plain fp16 matmul (the weights already in fp16),
dequantise-then-matmul (int8 / int4 codes -> fp16 W in memory -> cuBLAS), and the fused kernel for int8 and packed int4
with groups of 128 (codes dequantised in registers). Batch-1 decoding is memory-bound, so the fused int4 kernel should
approach 4x less weight traffic than fp16; each row also reports the max abs error against dequantise-then-matmul.
"""
import argparse, json, platform, sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llm_lab.compress import quantize, pack_int4, lowbit_matmul, lowbit_matmul_reference  # noqa: E402

SHAPES = [(1, 4096, 4096), (1, 11008, 4096), (16, 4096, 4096), (128, 4096, 4096)]
QUICK = [(1, 4096, 4096), (16, 4096, 4096)]
SMOKE = [(3, 64, 128)]


def run(shapes, group: int, device: str) -> list[dict]:
    rows = []
    dtype = torch.float16 if device == 'cuda' else torch.float32
    if device == 'cuda':
        from triton.testing import do_bench
    else:
        do_bench = lambda f: float('nan')  # the interpreter's times mean nothing
    for M, N, K in shapes:
        torch.manual_seed(0)
        w, x = torch.randn(N, K, device=device), torch.randn(M, K, device=device, dtype=dtype)
        w16 = w.to(dtype)
        row = {'M': M, 'N': N, 'K': K, 'group': group, 'fp16 matmul ms': do_bench(lambda: x @ w16.T)}
        for bits in (8, 4):
            qt = quantize(w.cpu(), bits, 'absmax', group)
            codes = (pack_int4(qt.q) if bits == 4 else qt.q).to(device)
            scale = qt.scale.to(device)
            ref = lowbit_matmul_reference(x, codes, scale, group, bits)
            y = lowbit_matmul(x, codes, scale, group, bits, block=(16, 64, 64) if device == 'cuda' else (16, 32, 32))
            row[f'int{bits} dequant+matmul ms'] = do_bench(lambda: lowbit_matmul_reference(x, codes, scale, group, bits))
            row[f'int{bits} fused ms'] = do_bench(lambda: lowbit_matmul(x, codes, scale, group, bits, block=(16, 64, 64)))
            row[f'int{bits} max err'] = (y.float() - ref.float()).abs().max().item()
        rows.append(row)
        print(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true'); p.add_argument('--smoke', action='store_true')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'lowbit.json'))
    a = p.parse_args(argv)
    if a.smoke:
        rows = run(SMOKE, 32, 'cpu')
        assert all(r['int8 max err'] < 1e-3 and r['int4 max err'] < 1e-3 for r in rows)
        print('smoke: ok'); return 0
    if not torch.cuda.is_available(): print('no CUDA device: use --smoke for a CPU correctness run'); return 1
    rows = run(QUICK if a.quick else SHAPES, 128, 'cuda')
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__,
                                       'python': platform.python_version(), 'rows': rows}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
