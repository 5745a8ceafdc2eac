"""Serving throughput and latency: llm-lab serve (continuous batching) vs one request at a time vs transformers' generate.

C concurrent clients (threads) each send --requests completions (greedy, --new tokens, prompts of 8-24 tokens) with the
official openai client to a server on 127.0.0.1: ours with --max-batch sequences batched continuously, and the same server
limited to one sequence at a time. The transformers baseline runs the same model converted to GPT2LMHeadModel in process
(no HTTP): the C clients' prompts as one left-padded static batch per round of generate(). Prints a table and writes
bench/results/serve.json. Wall-clock on a possibly shared machine: compare rows of one run.

    python bench/serve.py                              # short: tiny-gpt2, 1-16 clients
    python bench/serve.py --model small-gpt2 --requests 8 --new 64 --device cuda
"""
import argparse, json, platform, statistics, sys, threading, time
from pathlib import Path

import torch

from llm_lab.serve import load_served_model, start_server


def pct(xs, q): xs = sorted(xs); return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def prompts_for(tok, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = 'the for while class import return value list function statement module object error name'.split()
    return [' '.join(words[int(i)] for i in torch.randint(len(words), (int(torch.randint(4, 12, (1,), generator=g)),), generator=g)) for _ in range(n)]


def run_clients(url, name, prompts, clients, per_client, new):
    "Each of `clients` threads sends `per_client` requests in turn; (tokens/s, latencies)."
    import openai
    lat, toks, errs = [], [], []
    def client(i):
        c = openai.OpenAI(base_url=url, api_key='none', max_retries=0, timeout=600)
        for j in range(per_client):
            t0 = time.perf_counter()
            try: r = c.completions.create(model=name, prompt=prompts[(i * per_client + j) % len(prompts)], max_tokens=new, temperature=0)
            except Exception as e: errs.append(e); continue
            lat.append(time.perf_counter() - t0); toks.append(r.usage.completion_tokens)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in ts: t.start()
    for t in ts: t.join()
    if errs: raise RuntimeError(f"{len(errs)} requests failed: {errs[0]}")
    return sum(toks) / (time.perf_counter() - t0), lat


def run_hf(hf, tok, prompts, clients, per_client, new, device):
    "Static batches of `clients` prompts through transformers' generate; (tokens/s, per-request latencies)."
    pad = tok.eot_id if tok.eot_id is not None else 0
    lat, n_tok, t_all = [], 0, time.perf_counter()
    for rnd in range(per_client):
        enc = [tok.encode(prompts[(i * per_client + rnd) % len(prompts)]) for i in range(clients)]
        T = max(map(len, enc))
        ids = torch.tensor([[pad] * (T - len(e)) + e for e in enc], device=device)       # left padding
        mask = torch.tensor([[0] * (T - len(e)) + [1] * len(e) for e in enc], device=device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad)
        dt = time.perf_counter() - t0
        lat += [dt] * clients; n_tok += (out.shape[1] - T) * clients
    return n_tok / (time.perf_counter() - t_all), lat


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='tiny-gpt2', help='zoo name or checkpoint folder (GPT-2-style for the transformers baseline)')
    p.add_argument('--clients', nargs='+', type=int, default=[1, 2, 4, 8, 16])
    p.add_argument('--requests', type=int, default=2, help='requests per client')
    p.add_argument('--new', type=int, default=32, help='tokens per completion')
    p.add_argument('--max-batch', type=int, default=16)
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-hf', action='store_true', help='skip the transformers baseline')
    p.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'serve.json'))
    args = p.parse_args(argv)
    model, tok = load_served_model(args.model, args.device)
    prompts = prompts_for(tok, 64)
    hf = None
    if not args.no_hf:
        from llm_lab.finetune import to_hf_gpt2            # the chapter 12 converter (same logits as our GPT)
        hf = to_hf_gpt2(model).to(args.device).eval()
    rows = []
    servers = {'ours': start_server(model, tok, args.model, max_batch=args.max_batch),
               'one-at-a-time': start_server(model, tok, args.model, max_batch=1)}
    try:
        for c in args.clients:
            for system, h in servers.items():
                tps, lat = run_clients(h.url, args.model, prompts, c, args.requests, args.new)
                rows.append(dict(system=system, clients=c, tokens_per_s=tps, p50_s=pct(lat, 0.5), p95_s=pct(lat, 0.95), mean_s=statistics.mean(lat)))
            if hf is not None:
                tps, lat = run_hf(hf, tok, prompts, c, args.requests, args.new, args.device)
                rows.append(dict(system='transformers generate (static batch, in process)', clients=c, tokens_per_s=tps,
                                 p50_s=pct(lat, 0.5), p95_s=pct(lat, 0.95), mean_s=statistics.mean(lat)))
            for r in rows[-3:]: print(f"{r['clients']:>3} clients  {r['system'][:32]:<32} {r['tokens_per_s']:>8.0f} tok/s   p50 {r['p50_s']:.3f} s   p95 {r['p95_s']:.3f} s", flush=True)
    finally:
        for h in servers.values(): h.close()
    meta = dict(model=args.model, device=args.device, new_tokens=args.new, requests_per_client=args.requests, max_batch=args.max_batch,
                torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
                time=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({'meta': meta, 'rows': rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
