"""Reference solution of the 'gpt-from-parts' pack (for instructors; `llm-lab check gpt-from-parts` gives it full marks)."""
from collections import defaultdict
from llm_lab.tokenizer import merge
import math
import torch
from einops import rearrange
import torch.nn as nn
from llm_lab.model import GPT, GPTConfig, KVCache, MultiHeadAttention, make_mlp, make_norm, rotate_half
from llm_lab.model import GPTConfig, forward_flops_per_token


# ---- from solutions/04_tokenizer.py
def my_merge_update(words, freqs, pair_counts, where, pair, new_id):
    "Merge `pair` into `new_id` in every word that contains it, updating `pair_counts` and `where` incrementally."
    for i in where.pop(pair, ()):            # only the words that contain the pair (maybe a stale few: harmless)
        w, f = words[i], freqs[i]
        for p in zip(w, w[1:]):              # take the word's old pairs out of the counts...
            pair_counts[p] -= f
        w = words[i] = merge(w, pair, new_id)
        for p in zip(w, w[1:]):              # ...and put its new pairs in
            pair_counts[p] += f
            where[p].add(i)
    pair_counts.pop(pair, None)              # its count is 0 now


def my_train_bpe(counts, num_merges):
    "The merged pairs, in order; merge k creates token id 256 + k."
    words, freqs = [list(w) for w in counts], list(counts.values())
    pair_counts, where = defaultdict(int), defaultdict(set)
    for i, w in enumerate(words):                      # count every pair once, at the start
        for p in zip(w, w[1:]):
            pair_counts[p] += freqs[i]
            where[p].add(i)
    merges = []
    while len(merges) < num_merges:
        live = {p: c for p, c in pair_counts.items() if c > 0}
        if not live: break                             # every word is a single token
        pair = max(live, key=lambda p: (live[p], -p[0], -p[1]))  # highest count; ties: smallest pair, as the chapter
        my_merge_update(words, freqs, pair_counts, where, pair, 256 + len(merges))  # incremental: no recount
        merges.append(pair)
    return merges


def my_encode(ids, merges):
    "The token ids after applying the merges, lowest rank first."
    ranks = {pair: r for r, pair in enumerate(merges)}
    ids = list(ids)
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float('inf')))  # the earliest learned pair present
        if pair not in ranks: break                                                # nothing left to merge
        ids = merge(ids, pair, merges[pair])
    return ids


# ---- from solutions/05_attention.py
def my_attention(q, k, v, mask):
    "softmax(q kᵀ / √D, masked) v: (B, H, Tq, D); fully masked query rows give zeros."
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])   # (B, H, Tq, Tk)
    scores = scores.masked_fill(~mask, float('-inf'))             # masked keys: weight exp(-inf) = 0
    weights = torch.softmax(scores, dim=-1)                       # over the keys; an all -inf row gives NaN (0/0)...
    weights = torch.where(mask.any(-1, keepdim=True), weights, 0.0)  # ...so a query with nothing to see gets zeros
    return weights @ v                                            # (B, H, Tq, D)


def my_causal_self_attention(x, w_qkv, w_o, n_head):
    "Causal multi-head self-attention without biases: (B, T, d)."
    B, T, d = x.shape
    q, k, v = (x @ w_qkv.T).split(d, dim=-1)                      # (B, T, d) each
    q, k, v = (rearrange(t, 'b t (h e) -> b h t e', h=n_head) for t in (q, k, v))  # (B, H, T, d_head)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # key j <= query i, the diagonal included
    y = my_attention(q, k, v, causal)                             # (B, H, T, d_head), scaled by 1/√d_head
    return rearrange(y, 'b h t e -> b t (h e)') @ w_o.T           # concatenate the heads, then project


def my_packed_causal_mask(token_positions):
    "Bool (B, T, T): True where query i may attend key j (j <= i, same document)."
    pos = token_positions
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1                 # a document starts where the count does not go on
    doc = starts.long().cumsum(-1)                                # (B, T) document number of each token
    same_doc = doc[:, :, None] == doc[:, None, :]                 # (B, T, T)
    T = pos.shape[-1]
    return same_doc & torch.ones(T, T, dtype=torch.bool, device=pos.device).tril()


# ---- from solutions/06_transformer.py
class MyBlock(nn.Module):
    "Pre-norm block: x + attn(norm_1(x)), then + mlp(norm_2(...))."
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        # the reference's names, so Block's weights load into this block (and GPT(config, block=MyBlock) trains it)
        self.norm_1 = make_norm(config)
        self.attn = MultiHeadAttention(config, layer_idx)
        self.norm_2 = make_norm(config)
        self.mlp = make_mlp(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, token_positions: torch.Tensor | None = None) -> torch.Tensor:
        # each sub-layer reads a normalised copy of the stream and adds its output to the stream itself
        h = x + self.attn(self.norm_1(x), kv_cache, token_positions)
        # the MLP reads the stream *after* attention has written to it
        return h + self.mlp(self.norm_2(h))


def my_decode_step(model: GPT, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    "One step of cached generation from the model's parts: token (B, 1) at position cache.pos -> next-token logits (B, V)."
    x = model.tok_emb(token)                                                     # (B, 1, d)
    if model.pos_emb is not None:                                                # learned positions: the token sits at cache.pos
        x = x + model.pos_emb(torch.tensor([cache.pos], device=token.device))
    for block in model.blocks:                                                   # each block stores its k, v at cache.pos
        x = block(x, cache)                                                      # (RoPE uses cache.pos as its offset)
    cache.advance(1)                                                             # only now, once every layer has stored its keys
    return model.lm_head(model.norm_f(x))[:, -1]                                 # (B, V)


def my_rope(x: torch.Tensor, offset: int) -> torch.Tensor:
    "Rotary position embedding of (B, H, T, D) queries or keys at positions offset..offset+T-1 (rotate-half, theta 10000)."
    D, T = x.shape[-1], x.shape[-2]
    inv_freq = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)    # θ_i = 10000^(-2i/D), (D/2,)
    pos = torch.arange(offset, offset + T, dtype=torch.float32)                  # (T,)
    angles = torch.outer(pos, inv_freq)                                          # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)                                 # channel i and i + D/2 share an angle
    return x * angles.cos() + rotate_half(x) * angles.sin()                      # rotate each pair (x_i, x_{i+D/2})


# ---- from solutions/03_training.py
def my_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    "Mean of log Σ e^z - z_y, with the row maximum factored out so that nothing overflows."
    m = logits.max(dim=-1, keepdim=True).values  # (N, 1)
    lse = m.squeeze(-1) + (logits - m).exp().sum(-1).log()  # (N,) log Σ_k e^{z_k}
    picked = logits[torch.arange(len(targets)), targets]  # (N,) z_y
    return (lse - picked).mean()


def my_sgd_step(param, grad, state, hp):
    "SGD as torch.optim.SGD does it: L2 decay into the gradient, velocity b = μb + g (b₁ = g₁), optional Nesterov."
    g = grad + hp['weight_decay'] * param
    if hp['momentum']:
        b = state.get('velocity')
        b = g.clone() if b is None else hp['momentum'] * b + g
        state['velocity'] = b
        g = g + hp['momentum'] * b if hp['nesterov'] else b
    return param - hp['lr'] * g


def _adam(param, grad, state, hp, decoupled: bool):
    "One Adam step; decoupled=True is AdamW."
    if not state: state.update(t=0, m=torch.zeros_like(param), v=torch.zeros_like(param))
    state['t'] += 1
    lr, wd = hp['lr'], hp['weight_decay']
    if decoupled: param = param * (1 - lr * wd)  # AdamW: shrink the weight itself
    else: grad = grad + wd * param  # Adam: L2, through the gradient (and so through m and v)
    state['m'] = hp['beta1'] * state['m'] + (1 - hp['beta1']) * grad
    state['v'] = hp['beta2'] * state['v'] + (1 - hp['beta2']) * grad * grad
    m_hat = state['m'] / (1 - hp['beta1'] ** state['t'])  # bias corrections: m and v started at 0
    v_hat = state['v'] / (1 - hp['beta2'] ** state['t'])
    return param - lr * m_hat / (v_hat.sqrt() + hp['eps'])  # eps outside the square root


def my_adam_step(param, grad, state, hp):
    "Adam with L2 weight decay (torch.optim.Adam)."
    return _adam(param, grad, state, hp, decoupled=False)


def my_adamw_step(param, grad, state, hp):
    "Adam with decoupled weight decay (torch.optim.AdamW)."
    return _adam(param, grad, state, hp, decoupled=True)


def my_lr(step, max_lr, warmup_steps, total_steps, min_lr):
    "Linear warmup (step s uses (s + 1)/warmup of max_lr), cosine decay to min_lr at total_steps, then min_lr."
    if step < warmup_steps: return max_lr * (step + 1) / warmup_steps
    if step >= total_steps: return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


# ---- from solutions/09_pretraining.py
def my_accumulated_grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, n_micro: int) -> torch.Tensor:
    "The gradient of ((x @ w - y)**2).mean() w.r.t. w, accumulated over n_micro micro-batches."
    for xm, ym in zip(x.chunk(n_micro), y.chunk(n_micro)):
        # each micro-batch's mean, divided by n_micro: the n_micro gradients then add up to the gradient of the full mean
        (((xm @ w - ym) ** 2).mean() / n_micro).backward()
    return w.grad


def my_train_step(model: nn.Module, opt: torch.optim.Optimizer, batches, grad_accum: int, grad_clip: float | None) -> float:
    "One optimizer step over grad_accum micro-batches; returns the mean micro-batch loss."
    losses = []
    for _ in range(grad_accum):
        x, y = next(batches)
        _, loss = model(x, y)
        (loss / grad_accum).backward()          # the gradients of the micro-batches add up in .grad
        losses.append(loss.detach())            # no .item() here: it would wait for the GPU after every micro-batch
    if grad_clip is not None:                   # clip once, on the whole accumulated gradient
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad()                             # ready for the next step
    return torch.stack(losses).mean().item()


def my_mfu(config: GPTConfig, tokens_per_s: float, peak: float) -> float:
    "Model-FLOPs utilisation as a fraction of the peak."
    train_flops_per_token = 3 * forward_flops_per_token(config)   # forward + backward (about twice the forward)
    return train_flops_per_token * tokens_per_s / peak
