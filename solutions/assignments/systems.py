"""Reference solution of the 'systems' pack (for instructors; `llm-lab check systems` gives it full marks)."""
import torch
from llm_lab.kernels.ops import triton, tl, kernel_device  # the same triton as the chapter (interpreter on a CPU)
import math
from llm_lab.kernels.ops import triton, tl  # the same triton as the chapter (interpreter on a CPU)


# ---- from solutions/18_kernels.py
# ---------------------------------------------------------------- 1. a row softmax
@triton.jit
def my_softmax_kernel(x_ptr, y_ptr, stride_x, stride_y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)                    # one program per row; 64-bit offsets
    cols = tl.arange(0, BLOCK)                             # BLOCK >= n_cols, a power of two
    mask = cols < n_cols                                   # the padding past the end of the row
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=-float('inf'))  # padding: exp(-inf) = 0
    num = tl.exp(x - tl.max(x, axis=0))                    # subtract the max: no overflow
    tl.store(y_ptr + row * stride_y + cols, num / tl.sum(num, axis=0), mask=mask)


def my_softmax(x: torch.Tensor) -> torch.Tensor:
    "Row softmax of x (M, N) float32 with one Triton program per row."
    M, N = x.shape
    y = torch.empty_like(x)
    my_softmax_kernel[(M,)](x, y, x.stride(0), y.stride(0), N, BLOCK=triton.next_power_of_2(N))
    return y


# ---------------------------------------------------------------- 2. LayerNorm backward
@triton.jit
def my_ln_bwd_kernel(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0)
    dy = tl.load(dy_ptr + row * n_cols + cols, mask=mask, other=0.0)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    mean = tl.sum(x, axis=0) / n_cols                      # recompute the forward's statistics
    xc = tl.where(mask, x - mean, 0.0)                     # padding must stay 0 (0 - mean is not)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / n_cols + eps)
    xhat = xc * rstd
    u = dy * w
    dx = (u - xhat * tl.sum(u * xhat, axis=0) / n_cols - tl.sum(u, axis=0) / n_cols) * rstd
    tl.store(dx_ptr + row * n_cols + cols, dx, mask=mask)
    tl.store(dw_ptr + row * n_cols + cols, dy * xhat, mask=mask)   # per-row terms; summed over rows below
    tl.store(db_ptr + row * n_cols + cols, dy, mask=mask)


def my_layer_norm_backward(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor):
    "(dx, dw, db) of F.layer_norm(x, (N,), w, b, eps=1e-5) for x (M, N) float32, with a Triton kernel per row."
    x, dy = x.contiguous(), dy.contiguous()
    M, N = x.shape
    dx, dw_rows, db_rows = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    my_ln_bwd_kernel[(M,)](x, w, dy, dx, dw_rows, db_rows, N, 1e-5, BLOCK=triton.next_power_of_2(N))
    return dx, dw_rows.sum(0), db_rows.sum(0)  # the chapter's kernel sums in registers per program instead: less traffic


# ---------------------------------------------------------------- 3. bytes of a tiled matmul
def my_matmul_traffic(M: int, N: int, K: int, block_m: int, block_n: int, elem_bytes: int) -> int:
    "HBM bytes of a tiled matmul with no L2 reuse: each column of tiles reads all of A, each row of tiles all of B, C once."
    col_programs, row_programs = -(-N // block_n), -(-M // block_m)   # ceil: a ragged edge still needs a whole tile
    return elem_bytes * (M * K * col_programs + K * N * row_programs + M * N)


# ---- from solutions/19_flash_attention.py
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


# ---- from solutions/21_cost.py
def my_param_count(spec):
    "The exact number of parameters of `spec` (a llm_lab.cost.ModelSpec)."
    d, ff, V = spec.d_model, spec.d_ff, spec.vocab_size
    q, kv = spec.n_head * spec.head_dim, spec.n_kv_head * spec.head_dim      # query width, key (= value) width
    attn = d * q + 2 * d * kv + q * d                                         # Wq, Wk, Wv, Wo
    if spec.bias: attn += q + 2 * kv + d
    n_mats = 3 if spec.glu else 2                                             # gate + up + down, or up + down
    mlp = n_mats * d * ff
    if spec.bias: mlp += (2 * ff if spec.glu else ff) + d
    norm = 2 * d if spec.norm_bias else d                                     # weight (+ bias)
    block = attn + mlp + 2 * norm
    emb = V * d + (spec.context_len * d if spec.pos == 'learned' else 0)
    head = 0 if spec.tie_embeddings else V * d
    return spec.n_layer * block + norm + emb + head


def my_train_flops_per_token(spec, seq_len):
    "Training (forward + backward) matmul FLOPs per token of `spec` at context `seq_len`."
    d, T = spec.d_model, seq_len
    q, kv = spec.n_head * spec.head_dim, spec.n_kv_head * spec.head_dim
    per_layer = (2 * d * (q + 2 * kv)       # x @ [Wq Wk Wv]
                 + 2 * T * q                # Q @ K^T against T keys
                 + 2 * T * q                # softmax @ V
                 + 2 * q * d                # @ Wo
                 + 2 * d * spec.d_ff * (3 if spec.glu else 2))
    forward = spec.n_layer * per_layer + 2 * d * spec.vocab_size   # + the output head
    return 3.0 * forward                                            # backward = 2 forwards


def my_training_memory(spec, micro_batch):
    "Bytes per GPU for a GPT-2-style spec: bf16 mixed precision, AdamW, no sharding, no recomputation, dropout."
    n = my_param_count(spec)
    s, b, h, a = spec.context_len, micro_batch, spec.d_model, spec.n_head
    per_layer = s * b * h * (34 + 5 * a * s / h)   # Korthikanti et al. 2022, eq. 2 (bf16 activations, dropout masks)
    logits = 4 * s * b * spec.vocab_size             # fp32 logits for the loss
    return {'weights': 2 * n, 'gradients': 2 * n, 'master': 4 * n, 'optimizer': 8 * n,
            'activations': spec.n_layer * per_layer + logits}
