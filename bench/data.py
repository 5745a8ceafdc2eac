#!/usr/bin/env python
"""Throughput of the llm_lab.data pipeline on this machine, in MB/s of input text.

Each cleaning step, the tokenizers and the packer run on the same synthetic web crawl (sample_web_crawl with several
seeds, plus the embedded Python reference), with 1 process and with `--procs` processes (datasets.Dataset.map).
Prints a table and writes bench/results/data.json.

    python bench/data.py                 # ~3 MB, 1 and 2 processes
    python bench/data.py --mb 20 --procs 1 2 4 8
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('LLM_LAB_QUIET', '1')
import numpy as np
import torch

from llm_lab import data as D
from llm_lab.core import embedded_corpus


def corpus(mb: float) -> list[str]:
    "At least `mb` MB of raw pages: crawls with different seeds, plus the reference docs."
    docs, seed = list(embedded_corpus()), 0
    while sum(len(d.encode()) for d in docs) < mb * 1e6:
        docs += [p['text'] for p in D.sample_web_crawl(200, seed=seed)]; seed += 1
    return docs


def timed(fn, *args, repeat: int = 1, **kw):
    best, out = float('inf'), None
    for _ in range(repeat):
        t0 = time.perf_counter(); out = fn(*args, **kw); best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--mb', type=float, default=3.0, help='MB of raw text to process')
    ap.add_argument('--procs', type=int, nargs='+', default=[1, 2], help='process counts to compare')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'data.json'))
    args = ap.parse_args(argv)

    raw = corpus(args.mb)
    mb_raw = sum(len(d.encode()) for d in raw) / 1e6
    norm = D.normalize_step(raw).docs
    stripped = D.boilerplate_step(norm).docs
    tok = D.ByteTokenizer()
    bpe = None
    try:
        from llm_lab.tokenizer import BPETokenizer
        bpe = BPETokenizer.train(embedded_corpus(), vocab_size=1024, special_tokens=('<|endoftext|>',))
    except ImportError: pass

    steps = {  # name: (function of (docs, num_proc), input documents)
        'normalize (NFKC)': (lambda d, p: D.normalize_step(d, num_proc=p), raw),
        'boilerplate': (lambda d, p: D.boilerplate_step(d, num_proc=p), norm),
        'language': (lambda d, p: D.language_step(d, num_proc=p), stripped),
        'quality (Gopher)': (lambda d, p: D.quality_step(d, num_proc=p), stripped),
        'de-identify': (lambda d, p: D.deidentify_step(d, num_proc=p), stripped),
        'exact dedup': (lambda d, p: D.exact_dedup_step(d, num_proc=p), stripped),
        'near dedup (MinHash+LSH)': (lambda d, p: D.near_dedup_step(d, num_proc=p), stripped),
        'outliers': (lambda d, p: D.outlier_step(d, num_proc=p), stripped),
        'whole clean_corpus': (lambda d, p: D.clean_corpus(d, num_proc=p), raw),
        'tokenize (bytes)': (lambda d, p: D.encode_docs(d, tok, num_proc=p), stripped),
    }
    if bpe is not None: steps['tokenize (BPE 1024)'] = (lambda d, p: D.encode_docs(d, bpe, num_proc=p), stripped)

    rows = []
    print(f'{mb_raw:.2f} MB raw text, {len(raw)} documents; {platform.processor() or platform.machine()}, {os.cpu_count()} cores')
    print(f"{'step':<26}{'MB in':>8}" + ''.join(f'{f"{p} proc MB/s":>15}' for p in args.procs))
    for name, (fn, docs) in steps.items():
        mb = sum(len(d.encode()) for d in docs) / 1e6
        speeds = {}
        for p in args.procs:
            if p > 1: fn(docs[:64], p)  # warm the worker pool machinery
            secs, _ = timed(fn, docs, p)
            speeds[p] = mb / secs
        rows.append(dict(step=name, mb=round(mb, 3), mb_per_s={str(p): round(v, 3) for p, v in speeds.items()}))
        print(f'{name:<26}{mb:>8.2f}' + ''.join(f'{speeds[p]:>15.2f}' for p in args.procs))

    # packing: write a memmap and sample batches from it
    ids = D.encode_docs(stripped, tok)
    with tempfile.TemporaryDirectory() as tmp:
        secs, _ = timed(D.write_tokens, Path(tmp) / 't.bin', ids, repeat=3)
        write_mb_s = ids.nbytes / 1e6 / secs
        it = D.RandomWindows(Path(tmp) / 't.bin', batch_size=32, block_size=256, seed=0)
        secs, _ = timed(lambda: [it.sample() for _ in range(200)])
        batches_per_s = 200 / secs
        secs, prepared = timed(D.prepare_data, raw, tok, D.DataConfig(), 1, Path(tmp) / 'prep')
        prep_mb_s = mb_raw / secs
        secs_cached, _ = timed(D.prepare_data, raw, tok, D.DataConfig(), 1, Path(tmp) / 'prep')
    print(f'{"write token memmap":<26}{ids.nbytes / 1e6:>8.2f}{write_mb_s:>15.1f}  (MB of uint16 tokens/s)')
    print(f'{"RandomWindows 32x256":<26}{"":>8}{batches_per_s:>15.1f}  (batches/s)')
    print(f'{"prepare_data (1 proc)":<26}{mb_raw:>8.2f}{prep_mb_s:>15.2f}  (cached call: {1000 * secs_cached:.1f} ms)')

    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None  # other work on the machine skews the timings
    print(f'(1-minute load average during the run: {load})')
    result = dict(machine=dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version(),
                               torch=torch.__version__, numpy=np.__version__, load_average_1min=load),
                  mb_raw=round(mb_raw, 3), documents=len(raw), steps=rows,
                  write_tokens_mb_per_s=round(write_mb_s, 1), random_windows_batches_per_s=round(batches_per_s, 1),
                  prepare_data_mb_per_s=round(prep_mb_s, 3), prepare_data_cached_ms=round(1000 * secs_cached, 2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + '\n')
    print('wrote', args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
