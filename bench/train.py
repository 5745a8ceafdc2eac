"""Training-step speed: llm_lab.train (GPT + train_step) vs an equivalent plain-torch nanoGPT-style loop, same config, same data.

    .venv/bin/python bench/train.py            # CPU, prints a table, writes bench/results/train.json
    .venv/bin/python bench/train.py --gpu      # also GPT-2 124M tokens/s and MFU in bf16, eager and compiled (needs CUDA)

The two implementations alternate in rounds (A, B, A, B, ...) so that load from other processes hits both alike; the
best round is reported (as timeit does: noise only ever adds time), with the median and the worst next to it.
"""
import argparse, json, math, platform, statistics, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_lab.model import GPT, GPTConfig
from llm_lab.train import TrainConfig, make_optimizer, train_step, lr_at, measure_throughput, peak_flops

# ---------------------------------------------------------------- nanoGPT (Karpathy), condensed, same architecture
class CausalSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(c.d_model, 3 * c.d_model), nn.Linear(c.d_model, c.d_model), c.n_head
    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

class MLPBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(c.d_model, c.d_ff), nn.Linear(c.d_ff, c.d_model)
    def forward(self, x): return self.c_proj(F.gelu(self.c_fc(x), approximate='tanh'))

class NanoBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = nn.LayerNorm(c.d_model), CausalSelfAttention(c), nn.LayerNorm(c.d_model), MLPBlock(c)
    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

class NanoGPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.d_model), nn.Embedding(c.context_len, c.d_model)
        self.h = nn.ModuleList(NanoBlock(c) for _ in range(c.n_layer))
        self.ln_f, self.lm_head = nn.LayerNorm(c.d_model), nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        self.apply(lambda m: (nn.init.normal_(m.weight, 0, 0.02), m.bias is not None and nn.init.zeros_(m.bias)) if isinstance(m, nn.Linear)
                   else nn.init.normal_(m.weight, 0, 0.02) if isinstance(m, nn.Embedding) else None)
    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h: x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

def nano_optimizer(model, cfg):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': cfg.weight_decay},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)

def nano_step(model, opt, get_batch, cfg):
    "nanoGPT's inner loop: micro-steps with loss/accum, clip, step, zero_grad(set_to_none)."
    for _ in range(cfg.grad_accum):
        X, Y = get_batch()
        _, loss = model(X, Y)
        (loss / cfg.grad_accum).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step(); opt.zero_grad(set_to_none=True)
    return loss.item()

# ---------------------------------------------------------------- the comparison
def bench_cpu(config, cfg, rounds, steps_per_round):
    data = np.random.default_rng(0).integers(0, config.vocab_size, 200_000)
    T, B = config.context_len, cfg.batch_size
    g = np.random.default_rng(1)
    def get_batch():
        ix = g.integers(0, len(data) - T - 1, B)
        w = torch.from_numpy(np.stack([data[i:i + T + 1] for i in ix]))
        return w[:, :-1], w[:, 1:]
    batches = iter(get_batch, None)
    torch.manual_seed(0); ours = GPT(config); ours_opt = make_optimizer(ours, cfg)
    torch.manual_seed(0); nano = NanoGPT(config); nano_opt = nano_optimizer(nano, cfg)
    assert sum(p.numel() for p in nano.parameters()) == ours.num_params(), 'the two models must have the same parameters'
    runs = {'llm_lab': lambda: train_step(ours, ours_opt, batches, cfg), 'nanoGPT-style': lambda: nano_step(nano, nano_opt, get_batch, cfg)}
    for f in runs.values(): f(); f()  # warm-up
    times = {k: [] for k in runs}
    for r in range(rounds):
        for k, f in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps_per_round): f()
            times[k].append((time.perf_counter() - t0) / steps_per_round)
    tokens = B * T * cfg.grad_accum
    return {k: {'ms_per_step': 1e3 * min(v), 'tokens_per_s': tokens / min(v), 'median_ms': 1e3 * statistics.median(v),
                'max_ms': 1e3 * max(v)} for k, v in times.items()}

def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--rounds', type=int, default=7); p.add_argument('--steps', type=int, default=5)
    p.add_argument('--gpu', action='store_true', help='also GPT-2 124M on CUDA, bf16, eager and compiled')
    args = p.parse_args(argv)
    out_dir = Path(__file__).parent / 'results'; out_dir.mkdir(exist_ok=True)
    results = {'machine': {'platform': platform.platform(), 'torch': torch.__version__, 'threads': torch.get_num_threads()}, 'cpu': []}
    for name, config, cfg in [
        ('gpt2 d128 L4 T128 V512, B16', GPTConfig.gpt2(vocab_size=512, context_len=128, n_layer=4, n_head=4, d_model=128), TrainConfig(batch_size=16, dtype='float32')),
        ('gpt2 d96 L3 T128 V512, B16 (tiny-gpt2)', GPTConfig.gpt2(vocab_size=512, context_len=128, n_layer=3, n_head=4, d_model=96), TrainConfig(batch_size=16, dtype='float32')),
    ]:
        r = bench_cpu(config, cfg, args.rounds, args.steps)
        results['cpu'].append({'config': name, **r})
    print(f"\nCPU training step, fp32, best of {args.rounds} alternating rounds of {args.steps} steps ({torch.get_num_threads()} threads; median and max show the noise)")
    print(f"{'config':<40}{'implementation':<16}{'ms/step':>10}{'tokens/s':>12}{'median..max ms':>18}")
    for row in results['cpu']:
        for k in ('llm_lab', 'nanoGPT-style'):
            v = row[k]
            print(f"{row['config']:<40}{k:<16}{v['ms_per_step']:>10.1f}{v['tokens_per_s']:>12,.0f}{v['median_ms']:>10.0f}..{v['max_ms']:.0f}")
        print(f"{'':<40}{'ratio':<16}{row['llm_lab']['tokens_per_s'] / row['nanoGPT-style']['tokens_per_s']:>10.2f}x (llm_lab / nanoGPT)")
    (out_dir / 'train.json').write_text(json.dumps(results, indent=1))
    if args.gpu:
        if not torch.cuda.is_available(): print('--gpu: no CUDA device here', file=sys.stderr); return 1
        gpu = {'device': torch.cuda.get_device_name(), 'peak_flops_bf16': peak_flops('cuda', 'bf16'), 'runs': []}
        model = GPT(GPTConfig.gpt2(vocab_size=50304, context_len=1024, n_layer=12, n_head=12, d_model=768)).cuda()
        for compile_ in (False, True):
            r = measure_throughput(model, TrainConfig(batch_size=16, dtype='bfloat16', compile=compile_), steps=20, warmup=5)
            gpu['runs'].append(r)
            print(f"GPT-2 124M bf16 compile={compile_}: {r['tokens_per_s']:,.0f} tokens/s, {r['ms_per_step']:.0f} ms/step, "
                  f"{r['tflops']:.0f} TFLOP/s, MFU {r['mfu']:.1%}" if r['mfu'] else f"MFU unknown (peak of {gpu['device']} not in the llm_lab.hardware catalog)")
        (out_dir / 'train_gpu.json').write_text(json.dumps(gpu, indent=1))
    return 0

if __name__ == '__main__': sys.exit(main())
