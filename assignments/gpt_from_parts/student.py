"""GPT from parts: your file for the 'gpt-from-parts' assignment (see README.md).

Write every function and class below, then grade yourself with

    llm-lab check gpt-from-parts student.py
"""
from __future__ import annotations
import math
from collections import defaultdict
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_lab.tokenizer import merge  # merge(ids, pair, new_id): replace every occurrence of pair (chapter 04)
from llm_lab.model import GPTConfig, KVCache, MultiHeadAttention, make_mlp, make_norm  # the parts of chapter 06


def my_train_bpe(counts: dict[bytes, int], # pre-token bytes -> how often it occurs (from `word_counts`)
                 num_merges: int, # how many merges to learn
                ) -> list[tuple[int, int]]:
    "The merged pairs, in order; merge k creates token id 256 + k."
    raise NotImplementedError  # your code here


def my_encode(ids: list[int], # byte ids of one pre-token
              merges: dict[tuple[int, int], int], # pair -> merged id, in rank order
             ) -> list[int]:
    "The token ids after applying the merges, lowest rank first."
    raise NotImplementedError  # your code here


def my_attention(q: torch.Tensor, # (B, H, Tq, D) queries
                 k: torch.Tensor, # (B, H, Tk, D) keys
                 v: torch.Tensor, # (B, H, Tk, D) values
                 mask: torch.Tensor, # bool, broadcastable to (B, H, Tq, Tk); True = may attend
                ) -> torch.Tensor:
    "softmax(q kᵀ / √D, masked) v: (B, H, Tq, D); fully masked query rows give zeros."
    raise NotImplementedError  # your code here


def my_causal_self_attention(x: torch.Tensor, # (B, T, d) the input
                              w_qkv: torch.Tensor, # (3d, d) fused q/k/v projection weight (nn.Linear layout)
                              w_o: torch.Tensor, # (d, d) output projection weight
                              n_head: int, # number of heads; d_head = d // n_head
                             ) -> torch.Tensor:
    "Causal multi-head self-attention without biases: (B, T, d)."
    raise NotImplementedError  # your code here


class MyBlock(nn.Module):
    "Pre-norm block: x + attn(norm_1(x)), then + mlp(norm_2(...))."
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        raise NotImplementedError  # your code here: self.norm_1, self.attn, self.norm_2, self.mlp

    def forward(self, x: torch.Tensor, # (B, T, d_model)
                kv_cache: KVCache | None = None, token_positions: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError  # your code here


def my_adamw_step(param: torch.Tensor, grad: torch.Tensor, state: dict,
                  hp: dict, # lr, beta1, beta2, eps, weight_decay (decoupled)
                 ) -> torch.Tensor:
    "The parameter after one AdamW step: decoupled weight decay, then Adam (as torch.optim.AdamW)."
    raise NotImplementedError  # your code here


def my_lr(step: int, # the optimizer step, counting from 0
          max_lr: float, warmup_steps: int, total_steps: int, min_lr: float,
         ) -> float:
    "Linear warmup to max_lr, cosine decay to min_lr at total_steps, min_lr afterwards."
    raise NotImplementedError  # your code here


def my_train_step(model: nn.Module, # model(x, y) -> (logits, loss)
                  opt: torch.optim.Optimizer, # its optimizer
                  batches: Iterator, # yields (x, y) LongTensors (B, T)
                  grad_accum: int, # micro-batches per optimizer step
                  grad_clip: float | None, # max global gradient norm (None: no clipping)
                 ) -> float:
    "One optimizer step over grad_accum micro-batches; returns the mean micro-batch loss."
    raise NotImplementedError  # your code here
