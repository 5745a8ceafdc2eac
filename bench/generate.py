"""KV-cache vs no-cache greedy generation speed of llm_lab.model.GPT.

Prints a table and writes bench/results/generate.json. Timings are wall-clock, best of --repeats runs;
on a shared machine they are noisy, so compare rows of one run rather than runs of different days.

    python bench/generate.py                 # CPU-sized defaults
    python bench/generate.py --device cuda --sizes small medium large --new 256 1024
"""
import argparse, json, platform, sys, time
from pathlib import Path

import torch

from llm_lab.core import get_device, seed_everything
from llm_lab.model import GPT, GPTConfig

SIZES = {  # name: (d_model, n_layer, n_head, context_len)
    'small': (128, 4, 4, 512),
    'medium': (256, 6, 8, 1024),
    'large': (768, 12, 12, 2048),
}


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def time_generate(model, prompt, n_new, use_cache, repeats):
    "Best wall time of `repeats` greedy generations, and the tokens."
    dev = prompt.device
    best, out = float('inf'), None
    for _ in range(repeats):
        _sync(dev); t0 = time.perf_counter()
        out = model.generate(prompt, n_new, temperature=0, use_cache=use_cache)
        _sync(dev); best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default=None, help="cpu, cuda, mps (default: the best present)")
    p.add_argument('--sizes', nargs='+', default=['small', 'medium'], choices=list(SIZES))
    p.add_argument('--styles', nargs='+', default=['gpt2', 'llama'], choices=['gpt2', 'llama'])
    p.add_argument('--new', nargs='+', type=int, default=[64, 256], help='new tokens to generate')
    p.add_argument('--prompt', type=int, default=16, help='prompt length')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'generate.json'))
    args = p.parse_args(argv)

    dev = get_device(args.device)
    rows = []
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, prompt {args.prompt}")
    print(f"{'style':>6} {'size':>7} {'params':>10} {'new':>5} {'no cache (ms)':>14} {'cache (ms)':>11} {'speed-up':>9} {'tok/s cache':>12} {'same':>5}")
    for size in args.sizes:
        d, L, H, ctx = SIZES[size]
        for style in args.styles:
            seed_everything(0)
            cfg = getattr(GPTConfig, style)(vocab_size=512, context_len=ctx, n_layer=L, n_head=H, d_model=d,
                                            **({'n_kv_head': max(1, H // 4)} if style == 'llama' else {}))
            model = GPT(cfg).to(dev).eval()
            prompt = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt), device=dev)
            model.generate(prompt, 4, temperature=0)  # warm-up
            for n in args.new:
                if args.prompt + n > ctx: continue
                t_no, a = time_generate(model, prompt, n, False, args.repeats)
                t_yes, b = time_generate(model, prompt, n, True, args.repeats)
                same = bool(torch.equal(a, b))
                row = dict(style=style, size=size, params=model.num_params(), n_kv_head=cfg.n_kv_head, new_tokens=n,
                           no_cache_s=t_no, cache_s=t_yes, speedup=t_no / t_yes, cache_tokens_per_s=n * args.batch / t_yes,
                           identical_tokens=same)
                rows.append(row)
                print(f"{style:>6} {size:>7} {row['params']:>10,} {n:>5} {t_no * 1e3:>14.1f} {t_yes * 1e3:>11.1f} "
                      f"{row['speedup']:>8.1f}x {row['cache_tokens_per_s']:>12.0f} {str(same):>5}", flush=True)
    meta = dict(device=str(dev), device_name=torch.cuda.get_device_name(0) if dev.type == 'cuda' else platform.processor() or platform.machine(),
                torch=torch.__version__, threads=torch.get_num_threads(), batch=args.batch, prompt=args.prompt, repeats=args.repeats,
                python=platform.python_version(), argv=sys.argv[1:] if argv is None else argv)
    out = Path(args.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0 if all(r['identical_tokens'] for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
