"""Solutions to chapter 19's exercises (FlashAttention in Triton). Try them yourself first!

Each function has the name of the notebook's stub; `CHECKS` maps it to the checker that grades it.
"""
import math
import torch
from llm_lab.kernels.ops import triton, tl  # the same triton as the chapter (interpreter on a CPU)

CHECKS = {
    'my_online_lse': 'llm_lab.kernels.flash:check_online_logsumexp',
    'my_flash_forward': 'llm_lab.kernels.flash:check_flash_forward',
    'my_attn_backward': 'llm_lab.kernels.flash:check_attention_backward',
}


# ---------------------------------------------------------------- 1. online log-sum-exp
def my_online_lse(x: torch.Tensor, block: int) -> torch.Tensor:
    "log Σ_j exp(x_ij) per row of x (R, N), walking over the columns in blocks with a running max and sum."
    m = torch.full(x.shape[:1], -math.inf)                 # running max
    l = torch.zeros(x.shape[:1])                           # running sum of exp(x - m)
    for j in range(0, x.shape[1], block):
        b = x[:, j:j + block]
        m_new = torch.maximum(m, b.amax(1))
        l = l * torch.exp(m - m_new) + torch.exp(b - m_new[:, None]).sum(1)   # rescale the old sum, add the block
        m = m_new
    return m + torch.log(l)


# ---------------------------------------------------------------- 2. FlashAttention forward in Triton
@triton.jit
def my_flash_kernel(Q, K, V, O, sm_scale, T, D,            # q, k, v, o: contiguous (B·H, T, D)
                    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    base = bh * T * D
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)       # my queries
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d[None, :] < D
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=(offs_m[:, None] < T) & d_ok, other=0.0)
    m = tl.full([BLOCK_M], -float('inf'), tl.float32)      # running max per query
    l = tl.zeros([BLOCK_M], tl.float32)                    # running sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)         # unnormalised output
    hi = T
    if CAUSAL:
        hi = tl.minimum(T, (pid_m + 1) * BLOCK_M)          # up to and including the diagonal block
    for start in range(0, hi, BLOCK_N):
        cols = start + offs_n
        kv_mask = (cols[:, None] < T) & d_ok
        k = tl.load(K + base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)   # (BLOCK_N, BLOCK_D)
        v = tl.load(V + base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision='ieee') * sm_scale                          # (BLOCK_M, BLOCK_N)
        ok = cols[None, :] < T
        if CAUSAL:
            ok = ok & (cols[None, :] <= offs_m[:, None])
        s = tl.where(ok, s, -float('inf'))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)                          # rescales what came before
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision='ieee')
        m = m_new
    acc = acc / l[:, None]                                 # normalise once, at the end
    tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], acc, mask=(offs_m[:, None] < T) & d_ok)


def my_flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    "softmax(q kᵀ / √D [causal]) v for (B, H, T, D) float32 with a Triton kernel: one program per (query block, head)."
    B, H, T, D = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    o = torch.empty_like(q)
    BLOCK = 32
    grid = (triton.cdiv(T, BLOCK), B * H)
    my_flash_kernel[grid](q, k, v, o, D ** -0.5, T, D, CAUSAL=causal, BLOCK_M=BLOCK, BLOCK_N=BLOCK,
                          BLOCK_D=max(16, triton.next_power_of_2(D)))
    return o


# ---------------------------------------------------------------- 3. attention backward by hand
def my_attn_backward(q, k, v, do, causal):
    "(dq, dk, dv) of softmax(q kᵀ s) v from the chain rule, recomputing P; s = 1/√D."
    s = q.shape[-1] ** -0.5
    S = q @ k.transpose(-1, -2) * s                        # (B, H, T, T)
    if causal: S = S.masked_fill(torch.ones(S.shape[-2:], dtype=torch.bool, device=S.device).triu(1), -math.inf)
    P = torch.softmax(S, -1)
    dv = P.transpose(-1, -2) @ do                          # dV = Pᵀ dO
    dP = do @ v.transpose(-1, -2)                          # dP = dO Vᵀ
    delta = (dP * P).sum(-1, keepdim=True)                 # δ_i = Σ_j P_ij dP_ij (= rowsum(dO ∘ O))
    dS = P * (dP - delta)
    return dS @ k * s, dS.transpose(-1, -2) @ q * s, dv
