"""Systems: your file for the 'systems' assignment (see README.md).

Write every kernel and function below, then grade yourself with

    llm-lab check systems student.py

Without a GPU the kernels run through Triton's interpreter (slow but exact); Triton needs Linux.
"""
from __future__ import annotations
import math

import torch

from llm_lab.kernels.ops import triton, tl, kernel_device  # triton, in interpreter mode on a CPU
from llm_lab.cost import ModelSpec  # the architecture description of chapter 21

DEV = kernel_device()  # where the kernels take their inputs: cuda, or cpu through the interpreter


@triton.jit
def my_softmax_kernel(x_ptr, y_ptr, stride_x, stride_y, n_cols, BLOCK: tl.constexpr):
    pass  # your kernel here: one row per program

def my_softmax(x: torch.Tensor, # (M, N) float32 on DEV
              ) -> torch.Tensor:
    "Row softmax of x with my_softmax_kernel: launch a grid of M programs."
    raise NotImplementedError  # your launcher here


@triton.jit
def my_ln_bwd_kernel(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, n_cols, eps, BLOCK: tl.constexpr):
    pass  # your kernel here

def my_layer_norm_backward(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, # (M, N), (N,), (M, N) float32 on DEV
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    "(dx, dw, db) of LayerNorm (eps=1e-5) with my_ln_bwd_kernel."
    raise NotImplementedError  # your launcher here


def my_matmul_traffic(M: int, N: int, K: int, block_m: int, block_n: int, elem_bytes: int) -> int:
    "HBM bytes of C (M, N) = A (M, K) @ B (K, N) with block_m × block_n tiles, no L2 reuse."
    raise NotImplementedError  # your code here


def my_online_lse(x: torch.Tensor, # (R, N) float32
                  block: int, # columns per step
                 ) -> torch.Tensor:
    "(R,) log-sum-exp per row, in one streaming pass over blocks of columns."
    raise NotImplementedError  # your code here


@triton.jit
def my_flash_kernel(Q, K, V, O, sm_scale, T, D, CAUSAL: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pass  # your kernel here

def my_flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, # (B, H, T, D) float32 on DEV
                     causal: bool, # query i sees keys j <= i
                    ) -> torch.Tensor:
    "softmax(q kᵀ / √D) v with my_flash_kernel; (B, H, T, D)."
    raise NotImplementedError  # your launcher here


def my_param_count(spec: ModelSpec) -> int:
    "The exact number of parameters of `spec`."
    raise NotImplementedError  # your code here


def my_train_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
    "Training (forward + backward) matmul FLOPs per token of `spec` at context `seq_len`."
    raise NotImplementedError  # your code here


def my_training_memory(spec: ModelSpec, micro_batch: int) -> dict:
    "Bytes per GPU: {'weights', 'gradients', 'master', 'optimizer', 'activations'} (bf16 + AdamW, no sharding, no recomputation)."
    raise NotImplementedError  # your code here
