"""Solutions to the exercises of chapter 14 (mixture of experts). Try them yourself first: nbs/4_adaptation/14_moe.ipynb."""
import torch
import torch.nn.functional as F


def my_moe_forward(x, router_w, gate_up, down, k):
    "Top-k mixture-of-experts output (N, d)."
    probs = F.softmax(x @ router_w.t(), dim=-1)              # (N, E)
    w, idx = probs.topk(k, dim=-1)                           # (N, k) weights and expert ids
    w = w / w.sum(-1, keepdim=True)                          # renormalise the k chosen (Mixtral)
    out = torch.zeros_like(x)
    for e in range(router_w.shape[0]):
        tok, slot = torch.where(idx == e)                    # tokens that chose e, and in which of their k slots
        if tok.numel() == 0: continue
        gate, up = (x[tok] @ gate_up[e].t()).chunk(2, dim=-1)
        y = (F.silu(gate) * up) @ down[e].t()                # the SwiGLU expert on its tokens only
        out.index_add_(0, tok, y * w[tok, slot, None])       # weighted, added back to each token's row
    return out


def my_load_balancing_loss(logits, k):
    "Switch Transformer's auxiliary loss E * sum_e f_e * P_e."
    E = logits.shape[-1]
    probs = F.softmax(logits, dim=-1)                        # (N, E)
    chosen = probs.topk(k, dim=-1).indices                   # (N, k)
    f = F.one_hot(chosen, E).sum(1).to(probs.dtype).mean(0) # (E,) share of tokens that picked e among their k
    P = probs.mean(0)                                        # (E,) mean router probability
    return E * (f * P).sum()


CHECKS = {'my_moe_forward': 'llm_lab.moe:check_moe_forward',
          'my_load_balancing_loss': 'llm_lab.moe:check_load_balancing_loss'}
