"""Solutions to the exercises of chapter 05 (attention).

Each function has the name of the notebook's stub; `CHECKS` maps it to the checker in `llm_lab.attention`
that must accept it (tests/test_solutions.py runs them all)."""
import math

import torch
from einops import rearrange

CHECKS = {
    'my_attention': 'llm_lab.attention:check_attention',
    'my_causal_self_attention': 'llm_lab.attention:check_causal_self_attention',
    'my_packed_causal_mask': 'llm_lab.attention:check_packed_causal_mask',
}


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
