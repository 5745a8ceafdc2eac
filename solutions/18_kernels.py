"""Solutions to chapter 18's exercises (GPU kernels in Triton). Try them yourself first!

Each function has the name of the notebook's stub; `CHECKS` maps it to the checker that grades it.
The kernels run through Triton's interpreter on a CPU (llm_lab.kernels.ops turns it on when there is no GPU),
so import llm_lab.kernels.ops before triton, as below.
"""
import torch
from llm_lab.kernels.ops import triton, tl, kernel_device  # the same triton as the chapter (interpreter on a CPU)

CHECKS = {
    'my_softmax': 'llm_lab.kernels.ops:check_softmax',
    'my_layer_norm_backward': 'llm_lab.kernels.ops:check_layer_norm_backward',
    'my_matmul_traffic': 'llm_lab.kernels.ops:check_matmul_traffic',
}


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
